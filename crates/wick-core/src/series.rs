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
//! [`Applied::Late`] and not applied: revising a published final is the caller's decision.

use std::collections::VecDeque;

use crate::candle::{Candle, CandleError};
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

/// Why a series could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("a candle series needs at least one interval")]
    NoIntervals,
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
    /// The earliest end of an open bucket: `advance` has nothing to do before it.
    deadline: Timestamp,
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
            .map(|&interval| Level { interval, published: configured.contains(&interval), parents: Vec::new(), partial: None })
            .collect();
        // Each level's child is the largest smaller level it is a multiple of.
        for upper in 1..levels.len() {
            let child = (0..upper).rev().find(|&c| levels[upper].interval.is_multiple_of(levels[c].interval)).unwrap_or(0);
            levels[child].parents.push(upper);
        }
        Ok(CandleSeries { instrument, levels, open_base: VecDeque::with_capacity(4), horizon, deadline: Timestamp::END })
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }

    /// Every bucket ending at or before the horizon is final.
    pub fn horizon(&self) -> Timestamp {
        self.horizon
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
        if let Some(newest) = self.open_base.back_mut() {
            if newest.open_time() <= time && time < newest.next_open_time() {
                newest.accumulate(trade)?;
                return Ok(Applied::Open);
            }
        }
        let base = self.levels[0].interval;
        let open = base.bucket_start(time);
        if base.next_open(open) <= self.horizon {
            return Ok(Applied::Late);
        }
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
        let partials = self.levels.iter().filter_map(|l| l.partial.as_ref());
        self.deadline = partials.chain(self.open_base.front()).map(Candle::next_open_time).min().unwrap_or(Timestamp::END);
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
            finals(candle);
        }
        Ok(())
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

    /// `level` and the levels it is rolled up from, down to the base (exclusive of open base candles).
    fn chain_below(&self, level: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(level), move |&l| if l == 0 { None } else { self.child_of(l) })
    }

    fn child_of(&self, level: usize) -> Option<usize> {
        self.levels.iter().position(|l| l.parents.contains(&level))
    }
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
    fn an_overflowing_rollup_reports_the_error_and_loses_nothing() {
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let make = |id, secs, value: &str| {
            let t = at(secs);
            Trade::new(instrument.clone(), id, value.parse().unwrap(), value.parse().unwrap(), TakerSide::Buy, t, t).unwrap()
        };
        let mut s = series(&[Interval::S1, Interval::M1]);
        s.apply(&make(1, 0, "999999999999999999")).unwrap();
        // Its quote volume has scale 36: adding 10^36 at that scale cannot fit in 38 digits.
        s.apply(&make(2, 1, "0.000000000000000001")).unwrap();
        let mut finals = Vec::new();
        for secs in [60, 61] {
            assert_eq!(s.advance(at(secs), &mut |c| finals.push(c)), Err(CandleError::Overflow("quote volume")));
        }
        // The first second was folded and reported once; the second is still held, not dropped.
        assert_eq!(finals.iter().map(|c| (c.interval(), c.trade_count())).collect::<Vec<_>>(), vec![(Interval::S1, 1)]);
        assert_eq!(s.open_base.len(), 1);
        assert_eq!(s.levels[1].partial.as_ref().map(Candle::trade_count), Some(1));
    }

    #[test]
    fn horizon_never_moves_back() {
        let mut s = series(&[Interval::M1]);
        s.advance(at(600), &mut |_| {}).unwrap();
        s.advance(at(60), &mut |_| {}).unwrap();
        assert_eq!(s.horizon(), at(600));
        assert_eq!(s.apply(&trade(1, 599, "1")).unwrap(), Applied::Late);
    }
}
