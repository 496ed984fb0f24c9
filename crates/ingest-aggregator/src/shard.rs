//! One aggregator shard: the instruments whose hash falls on it, each with its candle series, its
//! watermark and its duplicate detection. A pure state machine (no IO, no clock reads): the
//! thread around it ([`crate::pipeline`]) feeds it the ring's events and ships its outputs, and
//! the unit tests drive it directly.
//!
//! Time: an instrument's watermark is its latest event time minus the allowed lateness. While the
//! instrument is idle and its partition is caught up (nothing more to read), the watermark moves
//! on by the clock time elapsed since its last trade, never to the clock's current time: an
//! illiquid instrument's candles close on time, and a replay of history (which is never idle)
//! gives exactly what the live run gave.

use std::collections::HashMap;

use wick_core::{Applied, Candle, CandleSeries, Instrument, Interval, Timestamp, Trade};
use wick_wire::{pb, CandleEventKind};

use crate::dedup::SeenIds;

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
    pub errors: u64,
}

#[derive(Debug)]
struct InstrumentState {
    series: CandleSeries,
    partition: i32,
    max_event: Timestamp,
    /// Clock time of the last trade (or of the restore), for the idle advance.
    last_trade_clock: Timestamp,
    seen: SeenIds,
    /// In-progress candles changed since the last update was emitted.
    dirty: bool,
    last_update_clock: Timestamp,
    pending: Vec<(CandleEventKind, Candle)>,
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
    /// The clock as of the latest tick.
    now: Timestamp,
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
            stats: ShardStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Restores an instrument from a checkpoint.
    pub fn restore(&mut self, partition: i32, state: &pb::InstrumentState, now: Timestamp) -> Result<(), String> {
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
                last_trade_clock: now,
                seen,
                // The last in-progress state may not have been published before the checkpoint.
                dirty: true,
                last_update_clock: Timestamp::MIN,
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
                    last_trade_clock: self.now,
                    seen: SeenIds::new(self.settings.max_id_ranges),
                    dirty: false,
                    last_update_clock: Timestamp::MIN,
                    pending: Vec::new(),
                };
                self.insert(trade.instrument().clone(), state)
            }
        };
        let state = &mut self.states[i];
        if !state.seen.insert(trade.trade_id(), trade.event_time()) {
            self.stats.duplicates += 1;
            return;
        }
        let had_pending = !state.pending.is_empty();
        state.last_trade_clock = self.now;
        if trade.event_time() > state.max_event {
            state.max_event = trade.event_time();
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

    /// The clock ticked for `partition`: idle watermarks advance (only while the partition is
    /// caught up: records waiting to be read are not idleness), throttled updates go out.
    pub fn on_tick(&mut self, partition: i32, caught_up: bool, now: Timestamp) {
        self.now = self.now.max(now);
        let Some(list) = self.by_partition.get(&partition) else { return };
        for &i in list {
            let state = &mut self.states[i];
            let had_pending = !state.pending.is_empty();
            if state.last_trade_clock == Timestamp::MIN {
                // The instrument's first trades came before any tick: its idle time starts now,
                // not at the epoch.
                state.last_trade_clock = now;
            }
            if caught_up && state.max_event > Timestamp::MIN {
                let idle = (now.as_micros() - state.last_trade_clock.as_micros()).max(0);
                let horizon = state.max_event.saturating_sub_micros(self.settings.allowed_lateness_us).saturating_add_micros(idle);
                Self::advance(state, horizon, &mut self.stats);
            }
            if state.dirty && now.as_micros() - state.last_update_clock.as_micros() >= self.settings.update_throttle_us {
                self.scratch.clear();
                if state.series.in_progress(&mut self.scratch).is_ok() {
                    self.stats.updates += self.scratch.len() as u64;
                    state.pending.extend(self.scratch.drain(..).map(|c| (CandleEventKind::Update, c)));
                }
                state.dirty = false;
                state.last_update_clock = now;
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
            // Ids older than the revision window are refused as too late before they are looked up;
            // the extra margin covers open buckets of long base intervals (a series of only `1M`).
            let forget = state.series.horizon().saturating_sub_micros(self.settings.revision_window_us.saturating_add(32 * 86_400_000_000));
            state.seen.forget_before(forget);
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
        }
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
        assert_eq!((minute0.0, minute0.1.trade_count(), minute0.1.version()), (CandleEventKind::Final, 1, 2));
        out.clear();
        // Late for minute 0 (final) but within the 10-minute window: a revision, version 3.
        run(&mut shard, &[trade("SIM:BTC-USD", 3, 30.0, "90")], &mut out);
        assert_eq!(shard.stats.revised, 1);
        let revised = latest(&out)
            .into_iter()
            .find(|((_, i, t), _)| *i == Interval::M1 && t.as_micros() % (60 * SEC) == 0 && t.as_micros() < 1_700_000_060 * SEC);
        let (_, (kind, c)) = revised.unwrap();
        assert_eq!(
            (kind, c.trade_count(), c.version(), c.low().to_string(), c.is_closed()),
            (CandleEventKind::Revision, 2, 3, "90".into(), true)
        );
        out.clear();
        // An hour later, a trade from minute 0 is too late.
        run(&mut shard, &[trade("SIM:BTC-USD", 4, 3700.0, "101"), trade("SIM:BTC-USD", 5, 2.0, "1")], &mut out);
        assert_eq!(shard.stats.too_late, 1);
        assert!(out.iter().any(|o| matches!(o, Output::DeadLetter { reason: "too_late", offset: 1, .. })));
    }

    #[test]
    fn idle_instruments_close_by_elapsed_clock_time_only_when_caught_up() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        let start = Timestamp::from_micros(5 * SEC).unwrap();
        shard.on_tick(0, true, start);
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        out.clear();
        // 80 s of clock time, but records are still waiting: no idle advance.
        shard.on_tick(0, false, start.saturating_add_micros(80 * SEC));
        shard.flush(&mut out);
        assert!(!out
            .iter()
            .any(|o| matches!(o, Output::Candles { events, .. } if events.iter().any(|(k, _)| *k == CandleEventKind::Final))));
        // Caught up: the watermark moves by the elapsed time (80 s), closing the 1s and 1m candles
        // but not the 5m one (the trade was at 10 s; 10 - 1 + 80 = 89 s).
        shard.on_tick(0, true, start.saturating_add_micros(80 * SEC));
        shard.flush(&mut out);
        let finals: Vec<Interval> =
            latest(&out).into_iter().filter(|(_, (k, _))| *k == CandleEventKind::Final).map(|((_, i, _), _)| i).collect();
        assert_eq!(finals, vec![Interval::S1, Interval::M1]);
    }

    #[test]
    fn updates_are_throttled_per_instrument() {
        let mut shard = Shard::new(0, settings());
        let mut out = Vec::new();
        let t0 = Timestamp::from_micros(SEC).unwrap();
        shard.on_tick(0, true, t0);
        run(&mut shard, &[trade("SIM:BTC-USD", 1, 10.0, "100")], &mut out);
        shard.on_tick(0, false, t0);
        run(&mut shard, &[trade("SIM:BTC-USD", 2, 10.1, "101")], &mut out);
        shard.on_tick(0, false, t0.saturating_add_micros(100_000));
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
        shard.on_tick(0, false, t0.saturating_add_micros(300_000));
        shard.flush(&mut out);
        assert_eq!(updates(&out), 8, "the trailing update carries the latest state");
        let last = latest(&out);
        assert!(last.values().all(|(_, c)| c.trade_count() == 2));
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
            restored.restore(0, s, Timestamp::MIN).unwrap();
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

    #[test]
    fn shards_are_stable_and_spread() {
        let names = ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "COINBASE:BTC-USD", "KRAKEN:BTC-USD", "SIM:SOL-USD", "SIM:XRP-USD"];
        let shards: Vec<usize> = names.iter().map(|n| shard_of(&Instrument::new(n).unwrap(), 4)).collect();
        assert_eq!(shards, names.iter().map(|n| shard_of(&Instrument::new(n).unwrap(), 4)).collect::<Vec<_>>());
        assert!(shards.iter().collect::<std::collections::BTreeSet<_>>().len() >= 2, "{shards:?}");
    }
}
