//! The candles of one instrument in many intervals at once, finalized by a watermark.
//!
//! A trade updates exactly one candle: the one of the finest interval (the *base*, which divides
//! every configured interval). Larger intervals are built by rollup: when a candle becomes final it
//! is merged into the candles of the intervals directly above it (a tree: `1s -> 1m -> 3m, 5m`,
//! `5m -> 15m -> 30m -> 1h -> ...`). The cost of one trade is therefore one candle update whatever
//! the number of intervals, plus a few merges per *finished bucket*, and a rollup is exact because
//! [`Candle::merge`] is. The candle of an interval still in progress is the sum of its own partial
//! rollup, the partial rollups of the intervals below it, and the open base candles.
//!
//! Time: `advance(horizon)` finalizes every bucket whose end (the next bucket's open time) is at or
//! before `horizon`. The design says a candle is final when the watermark passes its close time;
//! Binance's close time is the next open minus 1 ms, but trades carry microseconds and one in that
//! last millisecond still belongs to the candle, so the exact rule is `watermark >= next open`:
//! pass the watermark itself as the horizon. The caller
//! owns the watermark logic (event time minus allowed lateness, advanced while idle by an injected
//! clock) and feeds its result here. A trade for a bucket that is already final is reported as
//! [`Applied::Late`] and not applied; the caller may then [`revise`](CandleSeries::revise).
//!
//! Revisions: within the revision window (event time at most that far behind the horizon, none by
//! default) a late trade is still counted. Every final candle holding it is updated and reported
//! again, still closed, so its version goes up by one. The levels whose bucket is not final yet form
//! an upward-closed set of the tree; the trade goes into the partial of the lowest of them, so that
//! candles in progress and later finals hold it exactly once, as if it had come in time. The series
//! keeps the finals of each configured interval that end within the window (this bounds its memory);
//! a final bucket it keeps nothing for had no trades (or ended before the series began), and the
//! trade starts its candle.
//!
//! Snapshots: [`CandleSeries::snapshot`] copies the state (horizon, open base candles, partials,
//! kept finals) for a checkpoint; [`CandleSeries::restore`] checks a snapshot against the intervals
//! and rebuilds a series that behaves exactly as the original would from then on.

use std::collections::VecDeque;
use std::fmt;

use crate::candle::{Candle, CandleError};
use crate::decimal::Decimal;
use crate::instrument::Instrument;
use crate::interval::Interval;
use crate::time::Timestamp;
use crate::trade::Trade;

/// The outcome of [`CandleSeries::apply`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// The trade is in an open candle.
    Open,
    /// The trade's bucket is already final; nothing changed.
    Late,
}

/// The outcome of [`CandleSeries::revise`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Revision {
    /// The trade is counted: every final candle holding it was reported again, and the candles in
    /// progress hold it.
    Revised,
    /// The trade is more than the revision window behind the horizon; nothing changed.
    TooLate,
}

/// The state of a series, for a checkpoint; [`CandleSeries::restore`] rebuilds the series from it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SeriesSnapshot {
    /// Every bucket ending at or before it is final.
    pub horizon: Timestamp,
    /// Base candles not yet final, oldest first.
    pub open_base: Vec<Candle>,
    /// Final content of current buckets not yet passed up, each in its level's interval.
    pub partials: Vec<Candle>,
    /// The finals kept for revisions, of every configured interval.
    pub recent_finals: Vec<Candle>,
}

/// Which list of a [`SeriesSnapshot`] a candle came from, for error messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SnapshotPart {
    OpenBase,
    Partial,
    RecentFinal,
}

impl SnapshotPart {
    fn allowed_intervals(self) -> &'static str {
        match self {
            SnapshotPart::OpenBase => "the base interval of this series",
            SnapshotPart::Partial => "an interval of this series' rollup tree above its base",
            SnapshotPart::RecentFinal => "one of this series' configured intervals",
        }
    }

    fn horizon_rule(self) -> &'static str {
        match self {
            SnapshotPart::OpenBase => "an open base candle must end after the horizon",
            SnapshotPart::Partial => "a partial must open before the horizon and end after it",
            SnapshotPart::RecentFinal => "a final must end at or before the horizon",
        }
    }

    fn closed_rule(self) -> &'static str {
        match self {
            SnapshotPart::OpenBase | SnapshotPart::Partial => "candles in progress are never closed",
            SnapshotPart::RecentFinal => "finals are always closed",
        }
    }
}

impl fmt::Display for SnapshotPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotPart::OpenBase => "open base candle",
            SnapshotPart::Partial => "partial",
            SnapshotPart::RecentFinal => "recent final",
        })
    }
}

/// Why a series could not be built or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("a candle series needs at least one interval")]
    NoIntervals,
    #[error("the snapshot's {part} is a candle of {found}, but the series is for {expected}")]
    ForeignInstrument { part: SnapshotPart, expected: Instrument, found: Instrument },
    #[error("the snapshot's {part} has interval {interval}, which is not {}", .part.allowed_intervals())]
    IntervalNotInTree { part: SnapshotPart, interval: Interval },
    #[error("the snapshot's {part} {interval} opening at {open_time} does not fit the horizon {horizon}: {}", .part.horizon_rule())]
    OutsideHorizon { part: SnapshotPart, interval: Interval, open_time: Timestamp, horizon: Timestamp },
    #[error("the snapshot holds two {part}s {interval} opening at {open_time}")]
    DuplicateBucket { part: SnapshotPart, interval: Interval, open_time: Timestamp },
    #[error("the snapshot's {part} {interval} opening at {open_time} holds no trades")]
    EmptyCandle { part: SnapshotPart, interval: Interval, open_time: Timestamp },
    #[error("the snapshot's {part} {interval} opening at {open_time} has the wrong closed flag: {}", .part.closed_rule())]
    ClosedFlag { part: SnapshotPart, interval: Interval, open_time: Timestamp },
}

/// One level of the rollup tree.
#[derive(Debug)]
struct Level {
    interval: Interval,
    /// Published (configured) or only internal (the base, when it is not configured).
    published: bool,
    /// Levels that take this level's finals.
    parents: Vec<usize>,
    /// Final content of the current bucket not yet passed to the parents.
    partial: Option<Candle>,
    /// Published finals ending after `horizon - revision_window`, oldest first: what a revision
    /// updates.
    recent_finals: VecDeque<Candle>,
}

impl Level {
    fn recent_final(&self, open_time: Timestamp) -> Option<&Candle> {
        let i = self.recent_finals.binary_search_by_key(&open_time, Candle::open_time).ok()?;
        self.recent_finals.get(i)
    }

    fn keep_final(&mut self, candle: Candle) {
        // Finals come oldest first, except those a revision starts in an empty bucket.
        if self.recent_finals.back().is_none_or(|last| last.open_time() < candle.open_time()) {
            self.recent_finals.push_back(candle);
            return;
        }
        match self.recent_finals.binary_search_by_key(&candle.open_time(), Candle::open_time) {
            Ok(i) => self.recent_finals[i] = candle,
            Err(i) => self.recent_finals.insert(i, candle),
        }
    }
}

/// The candles of one instrument in every configured interval.
#[derive(Debug)]
pub struct CandleSeries {
    instrument: Instrument,
    /// Level 0 is the base; the rest are the other intervals, shortest first.
    levels: Vec<Level>,
    /// Base candles not yet final, oldest first.
    open_base: VecDeque<Candle>,
    /// Every bucket ending at or before this is final.
    horizon: Timestamp,
    /// Microseconds of event time behind the horizon within which a late trade is still counted.
    revision_window: i64,
    /// The earliest horizon at which `advance` has something to do: the end of an open bucket or
    /// the expiry of a kept final.
    deadline: Timestamp,
    /// An upper bound of the volume and quote volume of every candle that can still change. See
    /// [`CandleSeries::admit`]; `None` when it must be recomputed.
    guard: Option<(Decimal, Decimal)>,
}

impl CandleSeries {
    /// A series for `intervals` (any order, duplicates ignored). Finals are only reported for
    /// buckets ending after `horizon`.
    pub fn new(instrument: Instrument, intervals: &[Interval], horizon: Timestamp) -> Result<CandleSeries, SeriesError> {
        let mut configured: Vec<Interval> = intervals.to_vec();
        configured.sort();
        configured.dedup();
        if configured.is_empty() {
            return Err(SeriesError::NoIntervals);
        }
        // The base: the largest interval dividing every configured one (`1s` always does).
        let base = Interval::ALL.into_iter().rev().find(|b| configured.iter().all(|i| i.is_multiple_of(*b))).unwrap_or(Interval::S1);
        let mut all = configured.clone();
        if !all.contains(&base) {
            all.insert(0, base);
        }
        let mut levels: Vec<Level> = all
            .iter()
            .map(|&interval| Level {
                interval,
                published: configured.contains(&interval),
                parents: Vec::new(),
                partial: None,
                recent_finals: VecDeque::new(),
            })
            .collect();
        // Each level's child is the largest smaller level it is a multiple of.
        for upper in 1..levels.len() {
            let child = (0..upper).rev().find(|&c| levels[upper].interval.is_multiple_of(levels[c].interval)).unwrap_or(0);
            levels[child].parents.push(upper);
        }
        Ok(CandleSeries {
            instrument,
            levels,
            open_base: VecDeque::with_capacity(4),
            horizon,
            revision_window: 0,
            deadline: Timestamp::END,
            guard: Some((Decimal::ZERO, Decimal::ZERO)),
        })
    }

    /// Counts late trades whose event time is at most `micros` behind the horizon through
    /// [`revise`](CandleSeries::revise) (0, the default, refuses them all). Set it before use: a
    /// longer window cannot bring back finals already dropped.
    pub fn with_revision_window(mut self, micros: i64) -> Self {
        self.revision_window = micros.max(0);
        self.drop_expired_finals();
        self.deadline = self.next_deadline();
        self
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }

    /// Every bucket ending at or before the horizon is final.
    pub fn horizon(&self) -> Timestamp {
        self.horizon
    }

    /// How far behind the horizon, in microseconds of event time, a late trade is still counted.
    pub fn revision_window(&self) -> i64 {
        self.revision_window
    }

    /// The configured intervals, shortest first.
    pub fn intervals(&self) -> impl Iterator<Item = Interval> + '_ {
        self.levels.iter().filter(|l| l.published).map(|l| l.interval)
    }

    /// Adds a trade to its open candle; reports [`Applied::Late`] when its bucket is already final.
    #[inline]
    pub fn apply(&mut self, trade: &Trade) -> Result<Applied, CandleError> {
        if !self.instrument.same_as(trade.instrument()) {
            return Err(CandleError::InstrumentMismatch { candle: self.instrument.clone(), trade: trade.instrument().clone() });
        }
        let time = trade.event_time();
        // Nearly always the newest open candle: a range check, no division.
        if let Some(newest) = self.open_base.back() {
            if newest.open_time() <= time && time < newest.next_open_time() {
                self.admit(trade)?;
                if let Some(newest) = self.open_base.back_mut() {
                    newest.accumulate(trade)?;
                }
                return Ok(Applied::Open);
            }
        }
        let base = self.levels[0].interval;
        let open = base.bucket_start(time);
        if base.next_open(open) <= self.horizon {
            return Ok(Applied::Late);
        }
        self.admit(trade)?;
        let position = self.open_base.iter().rposition(|c| c.open_time() <= open);
        if let Some(i) = position.filter(|&i| self.open_base[i].open_time() == open) {
            self.open_base[i].accumulate(trade)?;
            return Ok(Applied::Open);
        }
        let candle = Candle::from_trade(base, trade)?;
        self.deadline = self.deadline.min(candle.next_open_time());
        self.open_base.insert(position.map_or(0, |i| i + 1), candle);
        Ok(Applied::Open)
    }

    /// Counts a trade that [`apply`](CandleSeries::apply) reported late, unless it is more than the
    /// revision window behind the horizon. Each final candle of a configured interval that holds
    /// it is reported again through `revised` (shortest interval first), closed, one version up.
    /// A trade whose bucket is still open is simply applied. On error nothing changes.
    pub fn revise(&mut self, trade: &Trade, revised: &mut impl FnMut(Candle)) -> Result<Revision, CandleError> {
        if !self.instrument.same_as(trade.instrument()) {
            return Err(CandleError::InstrumentMismatch { candle: self.instrument.clone(), trade: trade.instrument().clone() });
        }
        let time = trade.event_time();
        let horizon = self.horizon;
        let is_final = |level: &Level| level.interval.next_open(level.interval.bucket_start(time)) <= horizon;
        if !is_final(&self.levels[0]) {
            self.apply(trade)?;
            return Ok(Revision::Revised);
        }
        if time < self.revision_floor() {
            return Ok(Revision::TooLate);
        }
        self.admit(trade)?;
        // Every change is computed before any is made, so that an overflow leaves the series as it
        // was. A level gets either a revised final (closed) or a new partial (open), never both.
        let mut updated: [Option<Candle>; Interval::ALL.len()] = std::array::from_fn(|_| None);
        for (index, (level, slot)) in self.levels.iter().zip(updated.iter_mut()).enumerate() {
            if is_final(level) {
                if !level.published {
                    continue;
                }
                *slot = Some(match level.recent_final(level.interval.bucket_start(time)) {
                    Some(kept) => {
                        let mut candle = kept.clone();
                        candle.apply(trade)?;
                        candle
                    }
                    // The window keeps every final it reaches, so this bucket had no trades.
                    None => {
                        let mut candle = Candle::from_trade(level.interval, trade)?;
                        candle.mark_closed();
                        candle
                    }
                });
            } else if self.child_of(index).is_some_and(|child| is_final(&self.levels[child])) {
                // The lowest level still open for this time: the levels below have passed their
                // content up already, the levels above will get it from here. An earlier bucket of
                // this level ended before the child's final bucket did, so it is final and passed
                // up: the partial is this bucket's or none (a checked `apply` refuses anything else).
                *slot = Some(match &level.partial {
                    Some(partial) => {
                        let mut candle = partial.clone();
                        candle.apply(trade)?;
                        candle
                    }
                    None => Candle::from_trade(level.interval, trade)?,
                });
            }
        }
        for (index, slot) in updated.into_iter().enumerate() {
            let Some(candle) = slot else { continue };
            if candle.is_closed() {
                self.deadline = self.deadline.min(candle.next_open_time().saturating_add_micros(self.revision_window));
                self.levels[index].keep_final(candle.clone());
                revised(candle);
            } else {
                self.deadline = self.deadline.min(candle.next_open_time());
                self.levels[index].partial = Some(candle);
            }
        }
        Ok(Revision::Revised)
    }

    /// Moves the horizon forward (never back) and reports every candle that became final, in
    /// order of close time within each interval.
    pub fn advance(&mut self, horizon: Timestamp, finals: &mut impl FnMut(Candle)) -> Result<(), CandleError> {
        if horizon <= self.horizon {
            return Ok(());
        }
        self.horizon = horizon;
        if horizon < self.deadline {
            return Ok(());
        }
        // Each candle leaves its place only once it is fully folded into its parents: on error the
        // series is unchanged and the caller sees the same error when it advances further.
        while let Some(candle) = self.open_base.front().filter(|c| c.next_open_time() <= horizon).cloned() {
            self.finish(0, candle, finals)?;
            self.open_base.pop_front();
        }
        for level in 1..self.levels.len() {
            if let Some(candle) = self.levels[level].partial.as_ref().filter(|c| c.next_open_time() <= horizon).cloned() {
                self.finish(level, candle, finals)?;
                self.levels[level].partial = None;
            }
        }
        self.drop_expired_finals();
        self.deadline = self.next_deadline();
        Ok(())
    }

    /// Reports a final candle of `level` and folds it into the levels above. The folds are computed
    /// first and committed together, so an overflow leaves the parents as they were.
    fn finish(&mut self, level: usize, mut candle: Candle, finals: &mut impl FnMut(Candle)) -> Result<(), CandleError> {
        let parents = self.levels[level].parents.len();
        // A parent still holding an earlier bucket has ended before this one began.
        for p in 0..parents {
            let parent = self.levels[level].parents[p];
            let open = self.levels[parent].interval.bucket_start(candle.open_time());
            if let Some(stale) = self.levels[parent].partial.as_ref().filter(|c| c.open_time() != open).cloned() {
                self.finish(parent, stale, finals)?;
                self.levels[parent].partial = None;
            }
        }
        let mut folded: [Option<Candle>; Interval::ALL.len()] = std::array::from_fn(|_| None);
        for (p, slot) in folded.iter_mut().enumerate().take(parents) {
            let parent = &self.levels[self.levels[level].parents[p]];
            *slot = Some(match &parent.partial {
                Some(partial) => {
                    let mut merged = partial.clone();
                    merged.merge(&candle)?;
                    merged
                }
                None => candle.rolled_into(parent.interval),
            });
        }
        for (p, slot) in folded.iter_mut().enumerate().take(parents) {
            let parent = self.levels[level].parents[p];
            self.levels[parent].partial = slot.take();
        }
        if self.levels[level].published {
            candle.mark_closed();
            if candle.next_open_time() > self.revision_floor() {
                self.levels[level].keep_final(candle.clone());
            }
            finals(candle);
        }
        Ok(())
    }

    /// Trades before this event time are too late to revise; finals ending at or before it are dropped.
    fn revision_floor(&self) -> Timestamp {
        self.horizon.saturating_sub_micros(self.revision_window)
    }

    /// The earliest event time a trade can still be counted at (in an open base candle or by a
    /// revision): anything older is late beyond the revision window, so its duplicates need not be
    /// remembered.
    pub fn accepts_from(&self) -> Timestamp {
        let base = self.levels[0].interval;
        self.revision_floor().min(base.bucket_start(self.horizon))
    }

    /// Lets a trade in only if no candle it can reach could overflow, so that an overflow is
    /// always the refusal of one trade and never an `advance` that fails forever (which would stop
    /// every later candle of the instrument).
    ///
    /// Every candle that can still change is made of the open base candles, the partials and the
    /// kept finals (all of them positive sums) plus trades admitted from now on; so is every candle
    /// it will be merged into. The guard is such a sum: while its checked addition succeeds, every
    /// such candle's sums are at most its value at at most its scale, and cannot overflow either.
    /// The guard only grows; when it would overflow it is recomputed from what the series still
    /// holds (what went final and expired no longer counts), and only if the trade still does not
    /// fit is it refused. Cost per trade: one multiplication and two additions.
    fn admit(&mut self, trade: &Trade) -> Result<(), CandleError> {
        let overflow = CandleError::Overflow("the candles of this instrument");
        let quote = trade.price().checked_mul(trade.quantity()).ok_or(overflow.clone())?;
        let add = |(volume, value): (Decimal, Decimal)| Some((volume.checked_add(trade.quantity())?, value.checked_add(quote)?));
        if let Some(guard) = self.guard.and_then(add) {
            self.guard = Some(guard);
            return Ok(());
        }
        self.guard = self.held_total();
        let guard = self.guard.and_then(add).ok_or(overflow)?;
        self.guard = Some(guard);
        Ok(())
    }

    /// The volume and quote volume of every candle the series holds, summed; `None` on overflow.
    fn held_total(&self) -> Option<(Decimal, Decimal)> {
        let held = self.open_base.iter().chain(self.levels.iter().filter_map(|l| l.partial.as_ref()));
        let held = held.chain(self.levels.iter().flat_map(|l| l.recent_finals.iter()));
        held.into_iter().try_fold((Decimal::ZERO, Decimal::ZERO), |(volume, value), c| {
            Some((volume.checked_add(c.volume())?, value.checked_add(c.quote_volume())?))
        })
    }

    fn drop_expired_finals(&mut self) {
        let floor = self.revision_floor();
        for level in &mut self.levels {
            while level.recent_finals.front().is_some_and(|c| c.next_open_time() <= floor) {
                level.recent_finals.pop_front();
            }
        }
    }

    /// The earliest horizon at which `advance` finalizes a bucket or drops a kept final.
    fn next_deadline(&self) -> Timestamp {
        let partials = self.levels.iter().filter_map(|l| l.partial.as_ref());
        let open = partials.chain(self.open_base.front()).map(Candle::next_open_time);
        let expiries = self.levels.iter().filter_map(|l| l.recent_finals.front());
        let expiries = expiries.map(|c| c.next_open_time().saturating_add_micros(self.revision_window));
        open.chain(expiries).min().unwrap_or(Timestamp::END)
    }

    /// The candles in progress: for each configured interval, one per bucket holding trades that
    /// are not yet final (usually one; two around a boundary while the lateness window is open).
    pub fn in_progress(&self, out: &mut Vec<Candle>) -> Result<(), CandleError> {
        for (level, l) in self.levels.iter().enumerate() {
            if !l.published {
                continue;
            }
            let first_out = out.len();
            // Content not yet in this level's final candles: its partial, the partials of the
            // levels it is built from, and the open base candles.
            let chain = self.chain_below(level);
            let sources = chain.filter_map(|c| self.levels[c].partial.as_ref()).chain(self.open_base.iter());
            for source in sources {
                let open = l.interval.bucket_start(source.open_time());
                match out[first_out..].iter_mut().find(|c| c.open_time() == open) {
                    Some(candle) => candle.merge(source)?,
                    None => out.push(source.rolled_into(l.interval)),
                }
            }
            out[first_out..].sort_by_key(Candle::open_time);
        }
        Ok(())
    }

    /// A copy of the state for a checkpoint. Together with the instrument, the intervals and the
    /// revision window it determines every later output.
    pub fn snapshot(&self) -> SeriesSnapshot {
        SeriesSnapshot {
            horizon: self.horizon,
            open_base: self.open_base.iter().cloned().collect(),
            partials: self.levels.iter().filter_map(|l| l.partial.clone()).collect(),
            recent_finals: self.levels.iter().flat_map(|l| l.recent_finals.iter().cloned()).collect(),
        }
    }

    /// Rebuilds the series a snapshot was taken from, configured as it was. Every candle is checked
    /// to fit where it is, so that a corrupt or foreign snapshot is refused rather than giving wrong
    /// candles later. Finals older than a (shorter) `revision_window` are dropped.
    pub fn restore(
        instrument: Instrument,
        intervals: &[Interval],
        revision_window: i64,
        snapshot: SeriesSnapshot,
    ) -> Result<CandleSeries, SeriesError> {
        let SeriesSnapshot { horizon, open_base, partials, recent_finals } = snapshot;
        let mut series = CandleSeries::new(instrument, intervals, horizon)?.with_revision_window(revision_window);
        for candle in open_base {
            let part = SnapshotPart::OpenBase;
            series.check_place(part, &candle)?;
            if candle.next_open_time() <= horizon {
                return Err(outside_horizon(part, &candle, horizon));
            }
            match series.open_base.binary_search_by_key(&candle.open_time(), Candle::open_time) {
                Ok(_) => return Err(duplicate_bucket(part, &candle)),
                Err(i) => series.open_base.insert(i, candle),
            }
        }
        for candle in partials {
            let part = SnapshotPart::Partial;
            let level = series.check_place(part, &candle)?;
            // A partial is made of child finals, which end at or before the horizon.
            if candle.open_time() >= horizon || candle.next_open_time() <= horizon {
                return Err(outside_horizon(part, &candle, horizon));
            }
            if series.levels[level].partial.is_some() {
                return Err(duplicate_bucket(part, &candle));
            }
            series.levels[level].partial = Some(candle);
        }
        let floor = series.revision_floor();
        for candle in recent_finals {
            let part = SnapshotPart::RecentFinal;
            let level = series.check_place(part, &candle)?;
            if candle.next_open_time() > horizon {
                return Err(outside_horizon(part, &candle, horizon));
            }
            if series.levels[level].recent_final(candle.open_time()).is_some() {
                return Err(duplicate_bucket(part, &candle));
            }
            if candle.next_open_time() > floor {
                series.levels[level].keep_final(candle);
            }
        }
        series.deadline = series.next_deadline();
        // Restored candles that together overflow leave no guard: every trade recomputes it and is
        // refused while they still do.
        series.guard = series.held_total();
        Ok(series)
    }

    /// The level a snapshot candle belongs to, after the checks common to every part.
    fn check_place(&self, part: SnapshotPart, candle: &Candle) -> Result<usize, SeriesError> {
        if !self.instrument.same_as(candle.instrument()) {
            return Err(SeriesError::ForeignInstrument { part, expected: self.instrument.clone(), found: candle.instrument().clone() });
        }
        let level = self.levels.iter().position(|l| l.interval == candle.interval());
        let level = match (part, level) {
            (SnapshotPart::OpenBase, Some(0)) => 0,
            (SnapshotPart::Partial, Some(level)) if level > 0 => level,
            (SnapshotPart::RecentFinal, Some(level)) if self.levels[level].published => level,
            _ => return Err(SeriesError::IntervalNotInTree { part, interval: candle.interval() }),
        };
        let (interval, open_time) = (candle.interval(), candle.open_time());
        if candle.trade_count() == 0 {
            return Err(SeriesError::EmptyCandle { part, interval, open_time });
        }
        if candle.is_closed() != (part == SnapshotPart::RecentFinal) {
            return Err(SeriesError::ClosedFlag { part, interval, open_time });
        }
        Ok(level)
    }

    /// `level` and the levels it is rolled up from, down to the base (exclusive of open base candles).
    fn chain_below(&self, level: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(level), move |&l| if l == 0 { None } else { self.child_of(l) })
    }

    fn child_of(&self, level: usize) -> Option<usize> {
        self.levels.iter().position(|l| l.parents.contains(&level))
    }
}

fn outside_horizon(part: SnapshotPart, candle: &Candle, horizon: Timestamp) -> SeriesError {
    SeriesError::OutsideHorizon { part, interval: candle.interval(), open_time: candle.open_time(), horizon }
}

fn duplicate_bucket(part: SnapshotPart, candle: &Candle) -> SeriesError {
    SeriesError::DuplicateBucket { part, interval: candle.interval(), open_time: candle.open_time() }
}

impl Candle {
    /// The same content as a candle of the larger `interval` (the start of a rollup).
    pub(crate) fn rolled_into(&self, interval: Interval) -> Candle {
        let mut rolled = self.clone();
        rolled.rebucket(interval);
        rolled
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::trade::TakerSide;

    fn trade(id: u64, secs: i64, price: &str) -> Trade {
        let t = Timestamp::from_micros(secs * 1_000_000).unwrap();
        Trade::new(Instrument::new("BINANCE:BTC-USDT").unwrap(), id, price.parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, t, t)
            .unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000).unwrap()
    }

    fn series(intervals: &[Interval]) -> CandleSeries {
        CandleSeries::new(Instrument::new("BINANCE:BTC-USDT").unwrap(), intervals, Timestamp::MIN).unwrap()
    }

    #[test]
    fn a_trade_that_would_overflow_a_rollup_is_refused_and_the_instrument_goes_on() {
        let intervals = [Interval::S1, Interval::M1, Interval::Mo1];
        let mut s = series(&intervals).with_revision_window(600_000_000);
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let make = |id: u64, secs: i64, price: &str, qty: &str| {
            let t = at(secs);
            Trade::new(instrument.clone(), id, price.parse().unwrap(), qty.parse().unwrap(), TakerSide::Buy, t, t).unwrap()
        };
        // 20 decimals together: every sum of its candles carries 20 from now on.
        assert_eq!(s.apply(&make(1, 1, "1.0000000001", "1.0000000001")).unwrap(), Applied::Open);
        // Alone in its own 1s candle this one fits, but rolled up with the first at scale 20 it
        // would not: the 1m and 1M candles would overflow when it went final.
        let huge = make(2, 2, "900000000000000000", "900000000000000000");
        assert_eq!(s.apply(&huge), Err(CandleError::Overflow("the candles of this instrument")));
        // Nothing of it was kept, and everything else goes on.
        assert_eq!(s.apply(&make(3, 3, "2", "1")).unwrap(), Applied::Open);
        let finals = collect(&mut s, 120);
        let minute = finals.iter().find(|c| c.interval() == Interval::M1).unwrap();
        assert_eq!((minute.trade_count(), minute.high().to_string()), (2, "2".into()));
        assert_eq!(s.apply(&make(4, 130, "3", "1")).unwrap(), Applied::Open);
        assert_eq!(collect(&mut s, 200).iter().filter(|c| c.interval() == Interval::M1).count(), 1);
        // A revision is checked the same way.
        let mut revised = Vec::new();
        assert!(s.revise(&make(5, 4, "900000000000000000", "900000000000000000"), &mut |c| revised.push(c)).is_err());
        assert!(revised.is_empty());
    }

    #[test]
    fn picks_a_base_that_divides_everything() {
        let s = series(&[Interval::M5, Interval::M3]);
        assert_eq!(s.levels[0].interval, Interval::M1);
        assert!(!s.levels[0].published);
        assert_eq!(s.intervals().collect::<Vec<_>>(), vec![Interval::M3, Interval::M5]);
        let s = series(&Interval::ALL);
        assert_eq!(s.levels[0].interval, Interval::S1);
        let parents_of = |i: Interval| -> Vec<Interval> {
            let l = s.levels.iter().find(|l| l.interval == i).unwrap();
            l.parents.iter().map(|p| s.levels[*p].interval).collect()
        };
        assert_eq!(parents_of(Interval::M1), vec![Interval::M3, Interval::M5]);
        assert_eq!(parents_of(Interval::D1), vec![Interval::D3, Interval::W1, Interval::Mo1]);
        assert_eq!(parents_of(Interval::H2), vec![Interval::H4, Interval::H6]);
        assert!(CandleSeries::new(Instrument::new("A:B-C").unwrap(), &[], Timestamp::MIN).is_err());
    }

    #[test]
    fn finalizes_by_horizon_and_rolls_up() {
        let mut s = series(&[Interval::M1, Interval::M5]);
        for (id, secs, price) in [(1, 10, "5"), (2, 70, "7"), (3, 65, "6"), (4, 299, "4"), (5, 300, "9")] {
            assert_eq!(s.apply(&trade(id, secs, price)).unwrap(), Applied::Open);
        }
        let mut finals = Vec::new();
        s.advance(at(120), &mut |c| finals.push(c)).unwrap();
        assert_eq!(
            finals.iter().map(|c| (c.interval(), c.open_time(), c.trade_count())).collect::<Vec<_>>(),
            vec![(Interval::M1, at(0), 1), (Interval::M1, at(60), 2),]
        );
        assert!(finals.iter().all(Candle::is_closed));
        assert_eq!(s.apply(&trade(6, 119, "1")).unwrap(), Applied::Late);

        let mut open = Vec::new();
        s.in_progress(&mut open).unwrap();
        let five = open.iter().find(|c| c.interval() == Interval::M5 && c.open_time() == at(0)).unwrap();
        assert_eq!(
            (five.trade_count(), five.open().to_string(), five.close().to_string(), five.high().to_string()),
            (4, "5".into(), "4".into(), "7".into())
        );
        assert!(open.iter().all(|c| !c.is_closed()));

        finals.clear();
        s.advance(at(300), &mut |c| finals.push(c)).unwrap();
        let five = finals.iter().find(|c| c.interval() == Interval::M5).unwrap();
        assert_eq!((five.open_time(), five.trade_count(), five.low().to_string()), (at(0), 4, "4".into()));
        assert_eq!(finals.len(), 2, "{finals:?}");
    }

    #[test]
    fn horizon_never_moves_back() {
        let mut s = series(&[Interval::M1]);
        s.advance(at(600), &mut |_| {}).unwrap();
        s.advance(at(60), &mut |_| {}).unwrap();
        assert_eq!(s.horizon(), at(600));
        assert_eq!(s.apply(&trade(1, 599, "1")).unwrap(), Applied::Late);
    }

    fn summary(candles: &[Candle]) -> Vec<(Interval, i64, u64, u64, bool)> {
        candles.iter().map(|c| (c.interval(), c.open_time().as_micros() / 1_000_000, c.trade_count(), c.version(), c.is_closed())).collect()
    }

    fn collect(s: &mut CandleSeries, horizon: i64) -> Vec<Candle> {
        let mut finals = Vec::new();
        s.advance(at(horizon), &mut |c| finals.push(c)).unwrap();
        finals
    }

    fn revise(s: &mut CandleSeries, t: &Trade) -> (Revision, Vec<Candle>) {
        let mut revised = Vec::new();
        let outcome = s.revise(t, &mut |c| revised.push(c)).unwrap();
        (outcome, revised)
    }

    fn open(s: &CandleSeries) -> Vec<Candle> {
        let mut out = Vec::new();
        s.in_progress(&mut out).unwrap();
        out
    }

    #[test]
    fn a_revision_updates_finals_and_reaches_open_rollups_once() {
        let mut s = series(&[Interval::M1, Interval::M5]).with_revision_window(600_000_000);
        s.apply(&trade(1, 10, "5")).unwrap();
        s.apply(&trade(2, 70, "7")).unwrap();
        collect(&mut s, 120);
        let late = trade(3, 65, "9");
        assert_eq!(s.apply(&late).unwrap(), Applied::Late);
        let (outcome, revised) = revise(&mut s, &late);
        assert_eq!(outcome, Revision::Revised);
        // The 1m final goes from version 2 (one trade, closed) to 3; the 5m bucket is still open.
        assert_eq!(summary(&revised), vec![(Interval::M1, 60, 2, 5, true)]);
        assert_eq!(revised[0].high().to_string(), "9");
        assert_eq!(summary(&open(&s)), vec![(Interval::M5, 0, 3, 6, false)]);
        assert_eq!(summary(&collect(&mut s, 300)), vec![(Interval::M5, 0, 3, 7, true)]);
        // The 5m final is kept too: a second late trade revises both.
        let (_, revised) = revise(&mut s, &trade(4, 20, "1"));
        assert_eq!(summary(&revised), vec![(Interval::M1, 0, 2, 5, true), (Interval::M5, 0, 4, 9, true)]);
        assert!(open(&s).is_empty());
    }

    #[test]
    fn a_revision_of_an_empty_bucket_starts_its_candles() {
        // 3m and 5m are both built from an unpublished 1m base.
        let mut s = series(&[Interval::M3, Interval::M5, Interval::H1]).with_revision_window(3_600_000_000);
        assert!(collect(&mut s, 360).is_empty());
        let (outcome, revised) = revise(&mut s, &trade(1, 100, "2"));
        assert_eq!(outcome, Revision::Revised);
        assert_eq!(summary(&revised), vec![(Interval::M3, 0, 1, 3, true), (Interval::M5, 0, 1, 3, true)]);
        // 1h gets it from the partial the revision started (3m and 5m are both final here).
        assert_eq!(summary(&open(&s)), vec![(Interval::H1, 0, 1, 2, false)]);
        // Nothing else is open: the new partial alone must wake `advance` at the end of the hour.
        assert_eq!(summary(&collect(&mut s, 3_600)), vec![(Interval::H1, 0, 1, 3, true)]);
    }

    #[test]
    fn a_trade_beyond_the_window_is_too_late_and_changes_nothing() {
        let mut s = series(&[Interval::M1]).with_revision_window(60_000_000);
        s.apply(&trade(1, 130, "1")).unwrap();
        collect(&mut s, 200);
        let before = s.snapshot();
        let (outcome, revised) = revise(&mut s, &trade(2, 139, "1"));
        assert_eq!((outcome, revised.len()), (Revision::TooLate, 0));
        assert_eq!(s.snapshot(), before);
        let (outcome, revised) = revise(&mut s, &trade(3, 140, "1"));
        assert_eq!((outcome, summary(&revised)), (Revision::Revised, vec![(Interval::M1, 120, 2, 5, true)]));

        let mut s = series(&[Interval::S1]);
        s.apply(&trade(1, 5, "1")).unwrap();
        collect(&mut s, 6);
        assert_eq!(revise(&mut s, &trade(2, 5, "1")).0, Revision::TooLate, "no window by default");
        assert!(s.snapshot().recent_finals.is_empty());
    }

    #[test]
    fn a_trade_for_an_open_bucket_is_applied() {
        let mut s = series(&[Interval::M1]).with_revision_window(60_000_000);
        collect(&mut s, 30);
        let (outcome, revised) = revise(&mut s, &trade(1, 20, "1"));
        assert_eq!((outcome, revised.len()), (Revision::Revised, 0));
        assert_eq!(summary(&open(&s)), vec![(Interval::M1, 0, 1, 2, false)]);
    }

    #[test]
    fn keeps_only_the_finals_within_the_window() {
        let mut s = series(&[Interval::S1]).with_revision_window(10_000_000);
        for secs in 0..100 {
            s.apply(&trade(secs as u64, secs, "1")).unwrap();
            collect(&mut s, secs + 1);
        }
        // Horizon 100 s: the finals ending after 90 s.
        let kept = s.snapshot().recent_finals;
        assert_eq!(kept.iter().map(|c| c.open_time()).collect::<Vec<_>>(), (90..100).map(at).collect::<Vec<_>>());
        // Nothing finishes on the way to 200 s, yet the kept finals expire.
        collect(&mut s, 200);
        assert!(s.snapshot().recent_finals.is_empty());
        let mut s = series(&[Interval::S1]).with_revision_window(10_000_000);
        s.apply(&trade(1, 0, "1")).unwrap();
        collect(&mut s, 5);
        assert_eq!(s.snapshot().recent_finals.len(), 1);
        assert!(s.with_revision_window(1_000_000).snapshot().recent_finals.is_empty(), "a shorter window drops at once");
        // A final a revision starts expires too, though nothing else is left to wake `advance`.
        let mut s = series(&[Interval::S1]).with_revision_window(10_000_000);
        collect(&mut s, 100);
        assert_eq!(revise(&mut s, &trade(1, 95, "1")).0, Revision::Revised);
        collect(&mut s, 105);
        assert_eq!(s.snapshot().recent_finals.len(), 1);
        collect(&mut s, 106);
        assert!(s.snapshot().recent_finals.is_empty());
    }

    #[test]
    fn an_overflowing_revision_changes_nothing() {
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let huge = |id, secs| {
            let (t, v) = (at(secs), "999999999999999999".parse().unwrap());
            Trade::new(instrument.clone(), id, v, v, TakerSide::Buy, t, t).unwrap()
        };
        let mut s = series(&[Interval::S1, Interval::M1]).with_revision_window(60_000_000);
        s.apply(&huge(0, 0)).unwrap();
        s.apply(&huge(1, 1)).unwrap();
        collect(&mut s, 2);
        // The 1m partial holds one trade more than the 1s final, so it overflows first: the 1s
        // final, computed before it, must be neither kept nor reported.
        for id in 2.. {
            let before = s.snapshot();
            let mut reported = 0;
            match s.revise(&huge(id, 1), &mut |_| reported += 1) {
                Ok(outcome) => assert_eq!((outcome, reported), (Revision::Revised, 1)),
                Err(err) => {
                    assert_eq!((err, reported), (CandleError::Overflow("the candles of this instrument"), 0));
                    assert_eq!(s.snapshot(), before);
                    assert!(id > 100, "{id}");
                    return;
                }
            }
        }
    }

    fn fixture() -> CandleSeries {
        // 3m and 5m are both built from the unpublished 1m base.
        let mut s = series(&[Interval::M3, Interval::M5]).with_revision_window(600_000_000);
        for (id, secs) in [(1, 10), (2, 70), (3, 200), (4, 250)] {
            s.apply(&trade(id, secs, "1")).unwrap();
        }
        collect(&mut s, 240);
        s
    }

    #[test]
    fn a_restored_series_continues_like_the_original() {
        let mut original = fixture();
        let snapshot = original.snapshot();
        assert_eq!(
            [&snapshot.open_base, &snapshot.partials, &snapshot.recent_finals].map(|part| summary(part)),
            [
                vec![(Interval::M1, 240, 1, 2, false)],
                vec![(Interval::M3, 180, 1, 2, false), (Interval::M5, 0, 3, 6, false)],
                vec![(Interval::M3, 0, 2, 5, true)],
            ]
        );
        let mut restored =
            CandleSeries::restore(original.instrument().clone(), &[Interval::M5, Interval::M3], 600_000_000, snapshot.clone()).unwrap();
        assert_eq!(restored.snapshot(), snapshot);
        for s in [&mut original, &mut restored] {
            assert_eq!(revise(s, &trade(5, 30, "2")).0, Revision::Revised);
            s.apply(&trade(6, 290, "3")).unwrap();
        }
        assert_eq!(open(&original), open(&restored));
        assert_eq!(collect(&mut original, 900), collect(&mut restored, 900));
        assert_eq!(original.snapshot(), restored.snapshot());
    }

    #[rstest]
    #[case::foreign_instrument(|s: &mut SeriesSnapshot| {
        let (instrument, one) = (Instrument::new("KRAKEN:BTC-USD").unwrap(), "1".parse().unwrap());
        let t = Trade::new(instrument, 9, one, one, TakerSide::Buy, at(250), at(250)).unwrap();
        s.open_base[0] = Candle::from_trade(Interval::M1, &t).unwrap();
    }, "the snapshot's open base candle is a candle of KRAKEN:BTC-USD, but the series is for BINANCE:BTC-USDT")]
    #[case::open_base_not_of_the_base_interval(
        |s: &mut SeriesSnapshot| s.open_base[0] = s.open_base[0].rolled_into(Interval::M3),
        "the snapshot's open base candle has interval 3m, which is not the base interval of this series")]
    #[case::partial_of_the_base(|s: &mut SeriesSnapshot| s.partials.push(s.open_base[0].clone()),
        "the snapshot's partial has interval 1m, which is not an interval of this series' rollup tree above its base")]
    #[case::final_of_the_unpublished_base(|s: &mut SeriesSnapshot| {
        let mut c = s.open_base[0].clone();
        c.mark_closed();
        s.recent_finals.push(c);
    }, "the snapshot's recent final has interval 1m, which is not one of this series' configured intervals")]
    #[case::final_not_in_the_tree(
        |s: &mut SeriesSnapshot| s.recent_finals[0] = s.recent_finals[0].rolled_into(Interval::H1),
        "the snapshot's recent final has interval 1h, which is not one of this series' configured intervals")]
    #[case::open_base_already_ended(|s: &mut SeriesSnapshot| s.horizon = at(300),
        "the snapshot's open base candle 1m opening at 1970-01-01T00:04:00.000000Z does not fit the horizon \
         1970-01-01T00:05:00.000000Z: an open base candle must end after the horizon")]
    #[case::partial_after_the_horizon(
        |s: &mut SeriesSnapshot| s.partials[0] = Candle::from_trade(Interval::M3, &trade(9, 400, "1")).unwrap(),
        "the snapshot's partial 3m opening at 1970-01-01T00:06:00.000000Z does not fit the horizon \
         1970-01-01T00:04:00.000000Z: a partial must open before the horizon and end after it")]
    #[case::final_not_ended(|s: &mut SeriesSnapshot| {
        let mut c = s.partials[1].clone();
        c.mark_closed();
        s.recent_finals.push(c);
    }, "the snapshot's recent final 5m opening at 1970-01-01T00:00:00.000000Z does not fit the horizon \
        1970-01-01T00:04:00.000000Z: a final must end at or before the horizon")]
    #[case::two_open_base_candles_of_one_bucket(|s: &mut SeriesSnapshot| s.open_base.push(s.open_base[0].clone()),
        "the snapshot holds two open base candles 1m opening at 1970-01-01T00:04:00.000000Z")]
    #[case::two_partials_of_one_level(|s: &mut SeriesSnapshot| s.partials.push(s.partials[0].clone()),
        "the snapshot holds two partials 3m opening at 1970-01-01T00:03:00.000000Z")]
    #[case::two_finals_of_one_bucket(|s: &mut SeriesSnapshot| s.recent_finals.push(s.recent_finals[0].clone()),
        "the snapshot holds two recent finals 3m opening at 1970-01-01T00:00:00.000000Z")]
    #[case::empty_candle(|s: &mut SeriesSnapshot| {
        let flat = Candle::flat(s.open_base[0].instrument().clone(), Interval::M1, at(240), "1".parse().unwrap());
        s.open_base[0] = flat.unwrap();
    },
        "the snapshot's open base candle 1m opening at 1970-01-01T00:04:00.000000Z holds no trades")]
    #[case::closed_partial(|s: &mut SeriesSnapshot| s.partials[1].mark_closed(),
        "the snapshot's partial 5m opening at 1970-01-01T00:00:00.000000Z has the wrong closed flag: \
         candles in progress are never closed")]
    #[case::open_final(|s: &mut SeriesSnapshot| {
        let mut parts = s.recent_finals[0].to_parts();
        parts.closed = false;
        s.recent_finals[0] = Candle::from_parts(parts).unwrap();
    }, "the snapshot's recent final 3m opening at 1970-01-01T00:00:00.000000Z has the wrong closed flag: \
        finals are always closed")]
    fn restore_refuses_a_candle_out_of_place(#[case] corrupt: fn(&mut SeriesSnapshot), #[case] message: &str) {
        let mut snapshot = fixture().snapshot();
        corrupt(&mut snapshot);
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let err = CandleSeries::restore(instrument, &[Interval::M3, Interval::M5], 600_000_000, snapshot).unwrap_err();
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn restore_drops_finals_outside_a_shorter_window_and_needs_intervals() {
        let snapshot = fixture().snapshot();
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        // The 3m final ended at 180 s, 60 s behind the horizon.
        let restored = CandleSeries::restore(instrument.clone(), &[Interval::M3, Interval::M5], 60_000_000, snapshot.clone()).unwrap();
        assert!(restored.snapshot().recent_finals.is_empty());
        let restored = CandleSeries::restore(instrument.clone(), &[Interval::M3, Interval::M5], 60_000_001, snapshot.clone()).unwrap();
        assert_eq!(restored.snapshot().recent_finals.len(), 1);
        assert_eq!(CandleSeries::restore(instrument, &[], 0, snapshot).unwrap_err(), SeriesError::NoIntervals);
    }
}
