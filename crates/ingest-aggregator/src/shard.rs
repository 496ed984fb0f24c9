//! One aggregator shard: the instruments whose hash falls on it, each with its candle series, its
//! watermark and its duplicate detection. A pure state machine (no IO, no clock reads): the
//! thread around it ([`crate::pipeline`]) feeds it the ring's events and ships its outputs, and
//! the unit tests drive it directly.
//!
//! Time (the model is stated in full in `ARCHITECTURE.md`, "Event time"): an instrument's watermark
//! (its series' horizon) never goes back; a trade moves it to the trade's event time minus the
//! allowed lateness. A *live* instrument (its newest trade was read within `live_lag` of its event
//! time, on the aggregator's clock) that is idle also gets *idle credit*: the monotonic time between
//! two consecutive proofs that its partition was caught up, with no fetch failure, backlog or
//! restart in between. History (replays, backfills, catch-up) is never live, so it closes candles
//! by event time alone, whatever pauses happen between its parts; a quiet live instrument closes
//! its candles about `allowed_lateness` after they end.

use std::collections::HashMap;

use wick_core::{Applied, Candle, CandleSeries, Instrument, Interval, Timestamp, Trade};
use wick_wire::{pb, CandleEventKind};

use crate::dedup::{Seen, SeenIds};

/// Candle events per `candles-completed` record at most.
pub const MAX_EVENTS_PER_RECORD: usize = 2000;

/// What the shard needs to know.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub intervals: Vec<Interval>,
    pub allowed_lateness_us: i64,
    pub revision_window_us: i64,
    pub update_throttle_us: i64,
    pub max_id_ranges: usize,
    /// An instrument whose newest trade was read at most this long after its event time (on the
    /// aggregator's clock) is live: its watermark moves on while it is idle.
    pub live_lag_us: i64,
}

/// What a shard hands to the output side, in order.
#[derive(Debug)]
pub enum Output {
    /// The candle events of one instrument: one `candles-completed` record.
    Candles { instrument: Instrument, events: Vec<(CandleEventKind, Candle)> },
    /// A trade that cannot be counted, for the dead-letter topic.
    DeadLetter { value: Vec<u8>, reason: &'static str, partition: i32, offset: i64 },
    /// Everything this shard derived from `partition` before `offset` is in the outputs before
    /// this one; `states` is the shard's part of the partition's checkpoint.
    Barrier { shard: usize, partition: i32, offset: i64, seq: u64, states: Vec<pb::InstrumentState> },
}

/// Counters, reported per batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub trades: u64,
    pub duplicates: u64,
    pub revised: u64,
    pub too_late: u64,
    pub updates: u64,
    pub finals: u64,
    pub revisions: u64,
    /// Trades refused by an overflow of the exact arithmetic.
    pub errors: u64,
    /// Trades refused because duplicate detection reached its bound.
    pub dedup_full: u64,
}

#[derive(Debug)]
struct InstrumentState {
    series: CandleSeries,
    partition: i32,
    max_event: Timestamp,
    /// See [`ShardSettings::live_lag_us`].
    live: bool,
    /// A trade came since the partition's previous tick: no idle credit at the next one.
    traded: bool,
    seen: SeenIds,
    /// In-progress candles changed since the last update was emitted.
    dirty: bool,
    /// Monotonic time of the last update emitted.
    last_update_mono: Option<i64>,
    pending: Vec<(CandleEventKind, Candle)>,
}

/// What a tick says about its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tick {
    /// The aggregator's wall clock, never going back (see `pipeline::Fetcher`).
    pub wall: Timestamp,
    /// The monotonic clock, for throttles.
    pub mono: i64,
    /// Counts the partition's fetch failures, backlogs and restarts: idle credit is only given
    /// between two proofs of the same epoch.
    pub epoch: u64,
    /// Counts the proofs of being caught up, so that a new one is told from a repeated one even
    /// when the monotonic clock did not move (a coarse clock, or a test's).
    pub proof: u64,
    /// The monotonic time as of which the partition was proven caught up (the start of a fetch
    /// that reached the high watermark), if it is.
    pub caught_up_as_of: Option<i64>,
}

/// The shard.
#[derive(Debug)]
pub struct Shard {
    index: usize,
    settings: ShardSettings,
    states: Vec<InstrumentState>,
    by_name: HashMap<Instrument, usize>,
    /// The state of the previous trade's instrument: trades come in runs of one instrument, and
    /// a pointer comparison is cheaper than hashing the name.
    last: usize,
    by_partition: HashMap<i32, Vec<usize>>,
    /// Instruments with pending events, in the order they got them.
    with_pending: Vec<usize>,
    /// The wall clock as of the latest tick (never going back).
    now: Timestamp,
    /// Per partition, the previous proof of being caught up: (epoch, proof number, monotonic time).
    proofs: HashMap<i32, (u64, u64, i64)>,
    pub stats: ShardStats,
    scratch: Vec<Candle>,
}

impl Shard {
    pub fn new(index: usize, settings: ShardSettings) -> Shard {
        Shard {
            index,
            settings,
            states: Vec::new(),
            by_name: HashMap::new(),
            last: usize::MAX,
            by_partition: HashMap::new(),
            with_pending: Vec::new(),
            now: Timestamp::MIN,
            proofs: HashMap::new(),
            stats: ShardStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Restores an instrument from a checkpoint. Its watermark (the series' horizon) and liveness
    /// come back as they were, so idle closing resumes where it stopped; the time the process was
    /// down is not counted as idle (the partition's first tick after the restart starts afresh).
    pub fn restore(&mut self, partition: i32, state: &pb::InstrumentState) -> Result<(), String> {
        let instrument = Instrument::new(&state.instrument).map_err(|e| e.to_string())?;
        let candles = |list: &[pb::Candle]| -> Result<Vec<Candle>, String> {
            list.iter().map(|c| wick_wire::candle_from_wire(c).map_err(|e| format!("{instrument}: {e}"))).collect()
        };
        let snapshot = wick_core::series::SeriesSnapshot {
            horizon: Timestamp::from_micros(state.horizon_us).map_err(|e| e.to_string())?,
            open_base: candles(&state.open_base)?,
            partials: candles(&state.partials)?,
            recent_finals: candles(&state.recent_finals)?,
        };
        let series = CandleSeries::restore(instrument.clone(), &self.settings.intervals, self.settings.revision_window_us, snapshot)
            .map_err(|e| format!("{instrument}: {e}"))?;
        let seen = SeenIds::from_ranges(
            self.settings.max_id_ranges,
            state.seen_ids.iter().filter_map(|r| Some((r.first, r.last, Timestamp::from_micros(r.max_event_time_us).ok()?))),
        );
        let max_event = Timestamp::from_micros(state.max_event_time_us).map_err(|e| e.to_string())?;
        self.insert(
            instrument,
            InstrumentState {
                series,
                partition,
                max_event,
                live: state.live,
                traded: false,
                seen,
                // The last in-progress state may not have been published before the checkpoint.
                dirty: true,
                last_update_mono: None,
                pending: Vec::new(),
            },
        );
        Ok(())
    }

    fn insert(&mut self, instrument: Instrument, state: InstrumentState) -> usize {
        let i = self.states.len();
        self.by_partition.entry(state.partition).or_default().push(i);
        self.by_name.insert(instrument, i);
        self.states.push(state);
        i
    }

    fn find(&mut self, instrument: &Instrument) -> Option<usize> {
        if self.states.get(self.last).is_some_and(|s| s.series.instrument().same_as(instrument)) {
            return Some(self.last);
        }
        let i = *self.by_name.get(instrument)?;
        self.last = i;
        Some(i)
    }

    /// Counts one trade of `partition` read at `offset`.
    pub fn on_trade(&mut self, trade: &Trade, partition: i32, offset: i64, out: &mut Vec<Output>) {
        self.stats.trades += 1;
        let i = match self.find(trade.instrument()) {
            Some(i) => i,
            None => {
                let Ok(series) = CandleSeries::new(trade.instrument().clone(), &self.settings.intervals, Timestamp::MIN) else { return };
                let state = InstrumentState {
                    series: series.with_revision_window(self.settings.revision_window_us),
                    partition,
                    max_event: Timestamp::MIN,
                    live: false,
                    traded: false,
                    seen: SeenIds::new(self.settings.max_id_ranges),
                    dirty: false,
                    last_update_mono: None,
                    pending: Vec::new(),
                };
                self.insert(trade.instrument().clone(), state)
            }
        };
        let state = &mut self.states[i];
        match state.seen.insert(trade.trade_id(), trade.event_time()) {
            Seen::New => {}
            Seen::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Seen::Full => {
                self.stats.dedup_full += 1;
                out.push(Output::DeadLetter { value: wick_wire::encode_json_trade(trade), reason: "dedup_full", partition, offset });
                return;
            }
        }
        let had_pending = !state.pending.is_empty();
        if trade.event_time() > state.max_event {
            // Only a trade that moves the watermark interrupts the idle time: a straggler does not.
            state.traded = true;
            state.max_event = trade.event_time();
            state.live = self.now.as_micros().saturating_sub(trade.event_time().as_micros()) <= self.settings.live_lag_us;
        }
        let result = match state.series.apply(trade) {
            Ok(Applied::Open) => {
                state.dirty = true;
                Ok(())
            }
            Ok(Applied::Late) => {
                let pending = &mut state.pending;
                let mut revised = 0;
                match state.series.revise(trade, &mut |c| {
                    revised += 1;
                    pending.push((CandleEventKind::Revision, c));
                }) {
                    Ok(wick_core::series::Revision::Revised) => {
                        self.stats.revised += 1;
                        self.stats.revisions += revised;
                        state.dirty = true;
                        Ok(())
                    }
                    Ok(wick_core::series::Revision::TooLate) => {
                        self.stats.too_late += 1;
                        out.push(Output::DeadLetter { value: wick_wire::encode_json_trade(trade), reason: "too_late", partition, offset });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Only an arithmetic overflow gets here (the trade was validated): keep it, loudly.
            self.stats.errors += 1;
            tracing::error!(instrument = %trade.instrument(), trade_id = trade.trade_id(), error = %e, "trade cannot be aggregated: dead-lettered");
            out.push(Output::DeadLetter { value: wick_wire::encode_json_trade(trade), reason: "overflow", partition, offset });
        }
        let horizon = state.max_event.saturating_sub_micros(self.settings.allowed_lateness_us);
        Self::advance(state, horizon, &mut self.stats);
        if !had_pending && !state.pending.is_empty() {
            self.with_pending.push(i);
        }
    }

    fn advance(state: &mut InstrumentState, horizon: Timestamp, stats: &mut ShardStats) {
        let pending = &mut state.pending;
        let mut finals = 0;
        if let Err(e) = state.series.advance(horizon, &mut |c| {
            finals += 1;
            pending.push((CandleEventKind::Final, c));
        }) {
            stats.errors += 1;
            tracing::error!(instrument = %state.series.instrument(), error = %e, "candles cannot be finalized");
        }
        stats.finals += finals;
    }

    /// The clock ticked for `partition`: live idle instruments get their idle credit, throttled
    /// updates go out.
    pub fn on_tick(&mut self, partition: i32, tick: Tick) {
        self.now = self.now.max(tick.wall);
        // Idle credit: the monotonic time between this proof of being caught up and the previous
        // one, if nothing broke the chain (same epoch) in between.
        let proof = tick.caught_up_as_of.map(|at| (tick.epoch, tick.proof, at));
        let previous = self.proofs.get(&partition).copied();
        let credit = match (previous, proof) {
            (Some((epoch, _, before)), Some((now_epoch, _, at))) if epoch == now_epoch => (at - before).max(0),
            _ => 0,
        };
        // A tick repeating the previous proof says nothing new: whether an instrument traded is
        // judged from one proof to the next.
        let fresh = proof.is_none() || proof.map(|(e, n, _)| (e, n)) != previous.map(|(e, n, _)| (e, n));
        match proof {
            Some(p) => {
                self.proofs.insert(partition, p);
            }
            None => {
                self.proofs.remove(&partition);
            }
        }
        let Some(list) = self.by_partition.get(&partition) else { return };
        for &i in list {
            let state = &mut self.states[i];
            let had_pending = !state.pending.is_empty();
            if credit > 0 && state.live && !state.traded && state.max_event > Timestamp::MIN {
                let horizon = state.series.horizon().saturating_add_micros(credit);
                Self::advance(state, horizon, &mut self.stats);
            }
            if fresh {
                state.traded = false;
            }
            let due = state.last_update_mono.is_none_or(|last| tick.mono - last >= self.settings.update_throttle_us);
            if state.dirty && due {
                self.scratch.clear();
                if state.series.in_progress(&mut self.scratch).is_ok() {
                    self.stats.updates += self.scratch.len() as u64;
                    state.pending.extend(self.scratch.drain(..).map(|c| (CandleEventKind::Update, c)));
                }
                state.dirty = false;
                state.last_update_mono = Some(tick.mono);
            }
            if !had_pending && !state.pending.is_empty() {
                self.with_pending.push(i);
            }
        }
    }

    /// Moves every instrument's pending events to `out`, one record per instrument.
    pub fn flush(&mut self, out: &mut Vec<Output>) {
        for i in self.with_pending.drain(..) {
            let state = &mut self.states[i];
            // One record per instrument, cut so that a record stays far below the broker's 1 MB
            // message limit (a candle event is about 200 bytes) even after a long replay burst.
            let mut events = std::mem::take(&mut state.pending);
            while !events.is_empty() {
                let rest = events.split_off(events.len().min(MAX_EVENTS_PER_RECORD));
                out.push(Output::Candles { instrument: state.series.instrument().clone(), events });
                events = rest;
            }
        }
    }

    /// The checkpoint barrier of `partition` at `offset`: flushes, then reports this shard's
    /// state of the partition's instruments. State beyond the revision window was already
    /// released by the series; duplicate ranges that old are released here.
    pub fn on_barrier(&mut self, partition: i32, offset: i64, seq: u64, out: &mut Vec<Output>) {
        self.flush(out);
        let mut states = Vec::new();
        for &i in self.by_partition.get(&partition).into_iter().flatten() {
            let state = &mut self.states[i];
            let instrument = state.series.instrument().clone();
            // A trade older than this is too late whether or not it was seen.
            state.seen.forget_before(state.series.accepts_from());
            let snapshot = state.series.snapshot();
            let wire = |list: &[Candle]| list.iter().map(wick_wire::candle_to_wire).collect::<Vec<_>>();
            states.push(pb::InstrumentState {
                instrument: instrument.to_string(),
                max_event_time_us: state.max_event.as_micros(),
                horizon_us: snapshot.horizon.as_micros(),
                open_base: wire(&snapshot.open_base),
                partials: wire(&snapshot.partials),
                recent_finals: wire(&snapshot.recent_finals),
                seen_ids: state
                    .seen
                    .ranges()
                    .map(|(first, last, t)| pb::IdRange { first, last, max_event_time_us: t.as_micros() })
                    .collect(),
                live: state.live,
            });
        }
        out.push(Output::Barrier { shard: self.index, partition, offset, seq, states });
    }

    /// Instruments held.
    pub fn instruments(&self) -> usize {
        self.states.len()
    }
}

/// The shard of an instrument: FNV-1a of its name, so every instance and restart agrees.
pub fn shard_of(instrument: &Instrument, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instrument.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wick_core::TakerSide;

    use super::*;

    const SEC: i64 = 1_000_000;

    fn settings() -> ShardSettings {
        ShardSettings {
            intervals: vec![Interval::S1, Interval::M1, Interval::M5, Interval::H1],
            allowed_lateness_us: SEC,
            revision_window_us: 600 * SEC,
            update_throttle_us: 250_000,
            max_id_ranges: 64,
            live_lag_us: 30 * SEC,
        }
    }

    /// The wall clock `secs` after the trades' epoch.
    fn wall(secs: f64) -> Timestamp {
        Timestamp::from_micros(1_700_000_000 * SEC + (secs * 1e6) as i64).unwrap()
    }

    /// A tick at wall time `secs`, monotonic `mono` seconds, proving the partition caught up as of
    /// `mono` when `caught_up`.
    fn tick(secs: f64, mono: f64, epoch: u64, caught_up: bool) -> Tick {
        let mono = (mono * 1e6) as i64;
        Tick { wall: wall(secs), mono, epoch, proof: mono as u64, caught_up_as_of: caught_up.then_some(mono) }
    }

    fn final_intervals(out: &[Output]) -> Vec<Interval> {
        latest(out).into_iter().filter(|(_, (k, _))| *k == CandleEventKind::Final).map(|((_, i, _), _)| i).collect()
    }

    fn trade(instrument: &str, id: u64, secs: f64, price: &str) -> Trade {
        let t = Timestamp::from_micros(1_700_000_000 * SEC + (secs * 1e6) as i64).unwrap();
        Trade::new(Instrument::new(instrument).unwrap(), id, price.parse().unwrap(), "0.5".parse().unwrap(), TakerSide::Buy, t, t).unwrap()
    }

    type Key = (String, Interval, Timestamp);

    /// The latest version of every candle in `outputs`.
    fn latest(outputs: &[Output]) -> BTreeMap<Key, (CandleEventKind, Candle)> {
        let mut out: BTreeMap<Key, (CandleEventKind, Candle)> = BTreeMap::new();
        for o in outputs {
            if let Output::Candles { events, .. } = o {
                for (kind, c) in events {
                    let key = (c.instrument().to_string(), c.interval(), c.open_time());
                    if out.get(&key).is_none_or(|(_, held)| held.version() <= c.version()) {
                        out.insert(key, (*kind, c.clone()));
                    }
                }
            }
        }
        out
    }

    /// The reference: every bucket folded from its trades with the model's own `Candle`.
    fn reference(trades: &[Trade], intervals: &[Interval]) -> BTreeMap<Key, Candle> {
        let mut out: BTreeMap<Key, Candle> = BTreeMap::new();
        for t in trades {
            for &i in intervals {
                let key = (t.instrument().to_string(), i, i.bucket_start(t.event_time()));
                match out.get_mut(&key) {
                    Some(c) => c.apply(t).unwrap(),
                    None => {
                        out.insert(key, Candle::from_trade(i, t).unwrap());
                    }
                }
            }
        }
        out
    }

    fn run(shard: &mut Shard, trades: &[Trade], out: &mut Vec<Output>) {
        for (n, t) in trades.iter().enumerate() {
            shard.on_trade(t, 0, n as i64, out);
        }
        shard.flush(out);
    }

    #[test]
    fn duplicates_count_once_and_out_of_order_trades_within_lateness_are_not_late() {
        let mut shard = Shard::new(0, settings());
        let trades = vec![
            trade("SIM:BTC-USD", 1, 0.1, "100"),
            trade("SIM:BTC-USD", 3, 0.9, "102"),
            trade("SIM:BTC-USD", 2, 0.5, "101"), // out of order, within lateness
            trade("SIM:BTC-USD", 3, 0.9, "102"), // duplicate
            trade("SIM:BTC-USD", 4, 65.0, "99"),
            trade("SIM:ETH-USD", 1, 1.0, "10"),
            trade("SIM:BTC-USD", 5, 400.0, "98"), // closes minute 0 and minute 1
        ];
        let mut out = Vec::new();
        run(&mut shard, &trades, &mut out);
        assert_eq!((shard.stats.duplicates, shard.stats.revised, shard.stats.too_late), (1, 0, 0));
        let got = latest(&out);
        let mut unique = trades.clone();
        unique.remove(3);
        let want = reference(&unique, &settings().intervals);
        // Every final candle equals the reference, closed.
        let finals: Vec<_> = got.iter().filter(|(_, (k, _))| *k == CandleEventKind::Final).collect();
        assert!(finals.len() >= 4, "{finals:?}");
        for (key, (_, c)) in finals {
            let mut expected = want[key].clone();
            expected.mark_closed();
            assert_eq!(c, &expected, "{key:?}");
        }
    }

    #[test]
    fn late_trades_revise_and_too_late_ones_are_dead_lettered() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 1.0, "100"), trade("SIM:BTC-USD", 2, 120.0, "101")], &mut out);
        let minute0 = latest(&out).into_iter().find(|((_, i, _), _)| *i == Interval::M1).map(|(_, (k, c))| (k, c)).unwrap();
        assert_eq!((minute0.0, minute0.1.trade_count(), minute0.1.version()), (CandleEventKind::Final, 1, 3));
        out.clear();
        // Late for minute 0 (final) but within the 10-minute window: a revision, version 5.
        run(&mut shard, &[trade("SIM:BTC-USD", 3, 30.0, "90")], &mut out);
        assert_eq!(shard.stats.revised, 1);
        let revised = latest(&out)
            .into_iter()
            .find(|((_, i, t), _)| *i == Interval::M1 && t.as_micros() % (60 * SEC) == 0 && t.as_micros() < 1_700_000_060 * SEC);
        let (_, (kind, c)) = revised.unwrap();
        assert_eq!(
            (kind, c.trade_count(), c.version(), c.low().to_string(), c.is_closed()),
            (CandleEventKind::Revision, 2, 5, "90".into(), true)
        );
        out.clear();
        // An hour later, a trade from minute 0 is too late.
        run(&mut shard, &[trade("SIM:BTC-USD", 4, 3700.0, "101"), trade("SIM:BTC-USD", 5, 2.0, "1")], &mut out);
        assert_eq!(shard.stats.too_late, 1);
        assert!(out.iter().any(|o| matches!(o, Output::DeadLetter { reason: "too_late", offset: 1, .. })));
    }

    #[test]
    fn live_idle_instruments_close_by_proven_idle_time_only() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        shard.on_tick(0, tick(5.0, 0.0, 0, true));
        // Read 5 s before its event time on the aggregator's clock: live.
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        out.clear();
        // 80 s pass, but records are waiting (no proof): no idle credit.
        shard.on_tick(0, tick(85.0, 80.0, 1, false));
        shard.flush(&mut out);
        assert!(final_intervals(&out).is_empty());
        // The first proof after the break only starts a new chain.
        shard.on_tick(0, tick(85.0, 80.0, 1, true));
        shard.flush(&mut out);
        assert!(final_intervals(&out).is_empty());
        // 80 s between two proofs of the same epoch: the watermark moves 80 s on, closing the 1s and
        // 1m candles but not the 5m one (the trade was at 10 s; 10 - 1 + 80 = 89 s).
        shard.on_tick(0, tick(165.0, 160.0, 1, true));
        shard.flush(&mut out);
        assert_eq!(final_intervals(&out), vec![Interval::S1, Interval::M1]);
    }

    #[test]
    fn history_never_closes_by_idle_time_and_a_pause_loses_nothing() {
        // Yesterday's trades, read today: never live.
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        shard.on_tick(0, tick(86_400.0, 0.0, 0, true));
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        // A long pause, caught up all along (an hour of proofs).
        for n in 1..=60 {
            shard.on_tick(0, tick(86_400.0 + 60.0 * f64::from(n), 60.0 * f64::from(n), 0, true));
        }
        shard.flush(&mut out);
        assert!(final_intervals(&out).is_empty(), "nothing closes on the clock");
        // The second half of the history follows on in event time: nothing is late.
        run(&mut shard, &[trade("SIM:BTC-USD", 2, 30.0, "101"), trade("SIM:BTC-USD", 3, 400.0, "102")], &mut out);
        assert_eq!((shard.stats.too_late, shard.stats.revised), (0, 0));
        let minute = latest(&out)
            .into_iter()
            .find(|((_, i, t), _)| *i == Interval::M1 && *t == Interval::M1.bucket_start(wall(10.0)))
            .map(|(_, (k, c))| (k, c));
        let (kind, c) = minute.expect("the first minute");
        assert_eq!((kind, c.trade_count(), c.version()), (CandleEventKind::Final, 2, 5));
    }

    #[test]
    fn idle_closing_resumes_after_a_restore_and_a_straggler() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        shard.on_tick(0, tick(10.0, 0.0, 0, true));
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        // The proof interval holding the trade gives no credit; the next 30 s do.
        shard.on_tick(0, tick(11.0, 1.0, 0, true));
        shard.on_tick(0, tick(41.0, 31.0, 0, true));
        // A straggler (older than the newest trade) does not restart the idle time.
        run(&mut shard, &[trade("SIM:BTC-USD", 2, 9.5, "100")], &mut out);
        shard.on_tick(0, tick(46.0, 36.0, 0, true));
        shard.on_barrier(0, 2, 1, &mut out);
        let Some(Output::Barrier { states, .. }) = out.pop() else { panic!("no barrier") };
        // The horizon went 9 s -> 39 s (credit), untouched by the straggler's tick, then +5 s.
        assert_eq!(states[0].horizon_us, wall(44.0).as_micros());
        assert!(states[0].live);
        let mut restored = Shard::new(0, settings());
        restored.restore(0, &states[0]).unwrap();
        let mut out = Vec::new();
        // A new process: a new monotonic origin and a new chain; the downtime is not credited.
        restored.on_tick(0, tick(300.0, 0.0, 0, true));
        // The trade's 5m bucket ends at 100 s (the trades' epoch is 200 s into a 5m bucket): 55 s of
        // proven idle time after the restart are not enough (44 + 55 = 99), 56 are.
        restored.on_tick(0, tick(355.0, 55.0, 0, true));
        restored.flush(&mut out);
        assert!(!final_intervals(&out).contains(&Interval::M5));
        restored.on_tick(0, tick(356.0, 56.0, 0, true));
        restored.flush(&mut out);
        assert!(final_intervals(&out).contains(&Interval::M5));
    }

    #[test]
    fn updates_are_throttled_on_the_monotonic_clock_whatever_the_wall_clock_does() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        shard.on_tick(0, tick(1.0, 0.0, 0, true));
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        shard.on_tick(0, tick(1.0, 0.0, 0, false));
        run(&mut shard, &[trade("SIM:BTC-USD", 2, 10.1, "101")], &mut out);
        // The wall clock steps back an hour: the throttle does not care.
        shard.on_tick(0, tick(-3600.0, 0.1, 0, false));
        shard.flush(&mut out);
        let updates = |out: &[Output]| {
            out.iter()
                .filter_map(|o| {
                    if let Output::Candles { events, .. } = o {
                        Some(events.iter().filter(|(k, _)| *k == CandleEventKind::Update).count())
                    } else {
                        None
                    }
                })
                .sum::<usize>()
        };
        assert_eq!(updates(&out), 4, "one update per interval, then quiet for 250 ms");
        shard.on_tick(0, tick(-3600.0, 0.3, 0, false));
        shard.flush(&mut out);
        assert_eq!(updates(&out), 8, "the trailing update carries the latest state");
        let last = latest(&out);
        assert!(last.values().all(|(_, c)| c.trade_count() == 2));
    }

    #[test]
    fn ten_thousand_ids_with_gaps_a_duplicate_and_a_backfilled_trade() {
        let mut settings = settings();
        settings.max_id_ranges = 1 << 20;
        let mut shard = Shard::new(0, settings);
        let mut out = Vec::new();
        // Ids 0, 3, 6, ...: every trade its own range; the ids in between were never seen.
        let trades: Vec<Trade> = (0..10_000u64).map(|n| trade("KRAKEN:BTC-USD", n * 3, n as f64 * 0.05, "100")).collect();
        run(&mut shard, &trades, &mut out);
        let duplicate = trades[9_000].clone();
        let backfilled = trade("KRAKEN:BTC-USD", 9_000 * 3 + 1, 9_000.0 * 0.05 + 0.01, "90");
        run(&mut shard, &[duplicate, backfilled], &mut out);
        assert_eq!((shard.stats.duplicates, shard.stats.revised, shard.stats.too_late), (1, 1, 0));
        let got = latest(&out);
        let mut all = trades.clone();
        all.push(trade("KRAKEN:BTC-USD", 9_000 * 3 + 1, 9_000.0 * 0.05 + 0.01, "90"));
        let want = reference(&all, &[Interval::S1, Interval::M1, Interval::M5, Interval::H1]);
        let key = (String::from("KRAKEN:BTC-USD"), Interval::M1, Interval::M1.bucket_start(wall(450.01)));
        let (kind, c) = &got[&key];
        assert_eq!((*kind, c.trade_count(), c.low().to_string()), (CandleEventKind::Revision, want[&key].trade_count(), "90".into()));
    }

    #[test]
    fn a_restored_shard_continues_exactly_like_the_original() {
        let trades: Vec<Trade> = (0..400u64)
            .map(|n| {
                let secs = (n as f64) * 1.7 - if n % 9 == 0 { 0.8 } else { 0.0 };
                trade(if n % 3 == 0 { "SIM:ETH-USD" } else { "SIM:BTC-USD" }, n + 1, secs, &format!("{}.{}", 100 + n % 7, n % 10))
            })
            .collect();
        let (first, second) = trades.split_at(170);
        let mut original = Shard::new(0, settings());
        let mut out = Vec::new();
        run(&mut original, first, &mut out);
        original.on_barrier(0, 170, 1, &mut out);
        let Some(Output::Barrier { states, .. }) = out.pop() else { panic!("no barrier") };
        let mut restored = Shard::new(0, settings());
        for s in &states {
            restored.restore(0, s).unwrap();
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Duplicates from before the checkpoint are still recognized.
        let with_repeats: Vec<Trade> = first[150..].iter().chain(second).cloned().collect();
        run(&mut original, &with_repeats, &mut a);
        run(&mut restored, &with_repeats, &mut b);
        let finals = |o: &[Output]| latest(o).into_iter().filter(|(_, (k, _))| *k != CandleEventKind::Update).collect::<Vec<_>>();
        assert_eq!(finals(&a), finals(&b));
        assert!(!finals(&a).is_empty());
        assert_eq!(original.stats.duplicates, 20);
        assert_eq!(restored.stats.duplicates, 20);
    }

    /// What can happen between two trades of a history stream.
    #[derive(Clone, Debug)]
    enum Step {
        /// A tick, after `mono` seconds of monotonic time; the wall clock stepped by `step`
        /// seconds (either way) and the partition caught up or not.
        Tick { mono: u16, step: i32, caught_up: bool },
        /// A fetch failure (the chain of proofs breaks).
        Failure,
        /// The process restarts from a checkpoint taken here.
        Restart,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u16..3600, -7200i32..7200, any::<bool>()).prop_map(|(mono, step, caught_up)| Step::Tick { mono, step, caught_up }),
            1 => Just(Step::Failure),
            1 => Just(Step::Restart),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 64, ..Default::default() })]

        /// History read with any pauses, restarts and clock steps gives exactly the candles of a
        /// clean pass: finals, revisions and too-late trades alike.
        #[test]
        fn history_with_pauses_restarts_and_clock_steps_equals_a_clean_pass(
            trades in proptest::collection::vec((0u8..3, 0u32..5_000, -3_000i32..500, 1u32..500), 1..120),
            steps in proptest::collection::vec(proptest::option::of(step()), 120),
        ) {
            // Each trade's time: a drifting base with jitter (some late, some beyond the window).
            let mut base = 0.0f64;
            let trades: Vec<Trade> = trades
                .iter()
                .enumerate()
                .map(|(n, (instrument, advance, jitter, price))| {
                    base += f64::from(*advance) / 100.0;
                    let secs = (base + f64::from(*jitter) / 10.0).max(0.0);
                    trade(["SIM:BTC-USD", "SIM:ETH-USD", "SIM:SOL-USD"][usize::from(*instrument)], n as u64 + 1, secs, &price.to_string())
                })
                .collect();
            // The clean pass: no ticks at all.
            let mut clean = Shard::new(0, settings());
            let mut clean_out = Vec::new();
            run(&mut clean, &trades, &mut clean_out);

            // The disturbed pass: read a day later, so history.
            let mut shard = Shard::new(0, settings());
            let mut out = Vec::new();
            let (mut wall_secs, mut mono, mut epoch, mut seq) = (86_400.0 * 2.0 + base, 0.0, 0u64, 0u64);
            shard.on_tick(0, tick(wall_secs, mono, epoch, true));
            for (n, t) in trades.iter().enumerate() {
                shard.on_trade(t, 0, n as i64, &mut out);
                match &steps[n] {
                    Some(Step::Tick { mono: m, step, caught_up }) => {
                        mono += f64::from(*m);
                        wall_secs += f64::from(*m) + f64::from(*step);
                        if !caught_up {
                            epoch += 1;
                        }
                        shard.on_tick(0, tick(wall_secs, mono, epoch, *caught_up));
                    }
                    Some(Step::Failure) => {
                        epoch += 1;
                        shard.on_tick(0, tick(wall_secs, mono, epoch, false));
                    }
                    Some(Step::Restart) => {
                        seq += 1;
                        shard.on_barrier(0, n as i64 + 1, seq, &mut out);
                        let Some(Output::Barrier { states, .. }) = out.pop() else { panic!("no barrier") };
                        shard = Shard::new(0, settings());
                        for s in &states {
                            shard.restore(0, s).unwrap();
                        }
                        // A new process: its monotonic clock starts again.
                        mono = 0.0;
                        epoch = 0;
                        shard.on_tick(0, tick(wall_secs, mono, epoch, true));
                    }
                    None => {}
                }
            }
            shard.flush(&mut out);
            let closed = |o: &[Output]| latest(o).into_iter().filter(|(_, (k, _))| *k != CandleEventKind::Update).collect::<Vec<_>>();
            proptest::prop_assert_eq!(closed(&out), closed(&clean_out));
            let late = |o: &[Output]| o.iter().filter_map(|o| match o { Output::DeadLetter { reason, offset, .. } => Some((*reason, *offset)), _ => None }).collect::<Vec<_>>();
            proptest::prop_assert_eq!(late(&out), late(&clean_out));
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let names = ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "COINBASE:BTC-USD", "KRAKEN:BTC-USD", "SIM:SOL-USD", "SIM:XRP-USD"];
        let shards: Vec<usize> = names.iter().map(|n| shard_of(&Instrument::new(n).unwrap(), 4)).collect();
        assert_eq!(shards, names.iter().map(|n| shard_of(&Instrument::new(n).unwrap(), 4)).collect::<Vec<_>>());
        assert!(shards.iter().collect::<std::collections::BTreeSet<_>>().len() >= 2, "{shards:?}");
    }
}
