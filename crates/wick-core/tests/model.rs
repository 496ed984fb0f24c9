//! Property tests of the candle model against a deliberately naive reference implementation:
//! arbitrary-precision decimals (`bigdecimal`), trades sorted before folding, buckets found by
//! walking the calendar. Whatever the arrival order, Wick must give exactly the reference candles,
//! also when late trades are revised into published finals, and across a snapshot and restore.

use std::collections::BTreeMap;

use bigdecimal::{BigDecimal, RoundingMode};
use proptest::prelude::*;
use wick_core::series::Revision;
use wick_core::{Applied, Candle, CandleSeries, Decimal, Instrument, Interval, TakerSide, Timestamp, Trade, VWAP_SCALE};

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 86_400_000_000;
/// 2024-01-20T00:00:00Z: the generated trades straddle a month end, a leap day and several weeks.
const START: i64 = 1_705_708_800_000_000;
/// 2024-02-01T00:00:00Z: a month boundary that feeds with revisions cluster around.
const FEBRUARY: i64 = START + 12 * DAY;

fn big(d: Decimal) -> BigDecimal {
    BigDecimal::new(d.coefficient().into(), i64::from(d.scale()))
}

/// The open time of the bucket holding `t`, found the slow way.
fn naive_bucket(interval: Interval, t: i64) -> i64 {
    match interval {
        Interval::Mo1 => {
            // Walk month starts from 1970 until the next one is past `t`.
            let (mut year, mut month, mut start) = (1970i64, 1i64, 0i64);
            loop {
                let days = match month {
                    2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                let next = start + days * DAY;
                if next > t {
                    return start;
                }
                start = next;
                (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            }
        }
        Interval::W1 => {
            // 1970-01-05 was a Monday.
            let mut start = 4 * DAY;
            while start + 7 * DAY <= t {
                start += 7 * DAY;
            }
            start
        }
        other => {
            let len = other.fixed_micros().unwrap();
            t - t % len
        }
    }
}

/// The reference candle, as printed strings, so scales are compared too.
#[derive(Debug, PartialEq)]
struct Expected {
    open_time: i64,
    ohlc: [String; 4],
    volume: String,
    quote_volume: String,
    taker_buy: [String; 2],
    vwap: String,
    trade_count: u64,
    first_last: (u64, u64),
}

fn exact(value: &BigDecimal, scale: u8) -> String {
    let s = value.with_scale(i64::from(scale));
    let (digits, exp) = s.as_bigint_and_exponent();
    Decimal::new(digits.try_into().unwrap(), u8::try_from(exp).unwrap()).unwrap().to_string()
}

fn reference(interval: Interval, trades: &[Trade]) -> BTreeMap<i64, Expected> {
    let mut sorted: Vec<&Trade> = trades.iter().collect();
    sorted.sort_by_key(|t| (t.event_time(), t.trade_id()));
    let mut buckets: BTreeMap<i64, Vec<&Trade>> = BTreeMap::new();
    for t in sorted {
        buckets.entry(naive_bucket(interval, t.event_time().as_micros())).or_default().push(t);
    }
    buckets
        .into_iter()
        .map(|(open_time, ts)| {
            // Highest value wins; among equal values the larger scale (Decimal's total order).
            let key = |t: &&Trade| (big(t.price()), t.price().scale());
            let high = ts.iter().max_by(|a, b| key(a).cmp(&key(b))).unwrap().price();
            let low = ts.iter().min_by(|a, b| key(a).cmp(&key(b))).unwrap().price();
            let qty_scale = ts.iter().map(|t| t.quantity().scale()).max().unwrap();
            let quote_scale = ts.iter().map(|t| t.quantity().scale() + t.price().scale()).max().unwrap();
            let volume: BigDecimal = ts.iter().map(|t| big(t.quantity())).sum();
            let quote: BigDecimal = ts.iter().map(|t| big(t.quantity()) * big(t.price())).sum();
            let buys: Vec<_> = ts.iter().filter(|t| t.side() == TakerSide::Buy).collect();
            let buy_volume: BigDecimal = buys.iter().map(|t| big(t.quantity())).sum();
            let buy_quote: BigDecimal = buys.iter().map(|t| big(t.quantity()) * big(t.price())).sum();
            let vwap = (&quote / &volume).with_scale_round(i64::from(VWAP_SCALE), RoundingMode::HalfEven);
            // Sums carry the largest scale of their terms; a sum over no buys is a plain zero
            // unless some trade added a zero of that scale, which Wick never does.
            let buy_scale = |s: u8| if buys.is_empty() { 0 } else { s };
            let buy_qty_scale = buys.iter().map(|t| t.quantity().scale()).max().unwrap_or(0);
            let buy_quote_scale = buys.iter().map(|t| t.quantity().scale() + t.price().scale()).max().unwrap_or(0);
            let expected = Expected {
                open_time,
                ohlc: [ts[0].price(), high, low, ts[ts.len() - 1].price()].map(|d| d.to_string()),
                volume: exact(&volume, qty_scale),
                quote_volume: exact(&quote, quote_scale),
                taker_buy: [exact(&buy_volume, buy_scale(buy_qty_scale)), exact(&buy_quote, buy_scale(buy_quote_scale))],
                vwap: exact(&vwap, VWAP_SCALE),
                trade_count: ts.len() as u64,
                first_last: (ts[0].trade_id(), ts[ts.len() - 1].trade_id()),
            };
            (open_time, expected)
        })
        .collect()
}

fn observed(c: &Candle) -> Expected {
    Expected {
        open_time: c.open_time().as_micros(),
        ohlc: [c.open(), c.high(), c.low(), c.close()].map(|d| d.to_string()),
        volume: c.volume().to_string(),
        quote_volume: c.quote_volume().to_string(),
        taker_buy: [c.taker_buy_volume().to_string(), c.taker_buy_quote_volume().to_string()],
        vwap: c.vwap().unwrap().to_string(),
        trade_count: c.trade_count(),
        first_last: (c.first_trade().unwrap().trade_id, c.last_trade().unwrap().trade_id),
    }
}

/// Candles by applying trades one at a time in the given order.
fn aggregate(interval: Interval, trades: &[Trade]) -> BTreeMap<i64, Candle> {
    let mut out: BTreeMap<i64, Candle> = BTreeMap::new();
    for t in trades {
        let open = interval.bucket_start(t.event_time()).as_micros();
        match out.get_mut(&open) {
            Some(c) => c.apply(t).unwrap(),
            None => {
                out.insert(open, Candle::from_trade(interval, t).unwrap());
            }
        }
    }
    out
}

fn decimal(max_coefficient: i64, max_scale: u8) -> impl Strategy<Value = Decimal> {
    (1..=max_coefficient, 0..=max_scale).prop_map(|(c, s)| Decimal::new(i128::from(c), s).unwrap())
}

/// Trades of one instrument over `span` microseconds from [`START`], with unique ids, in random order.
fn trades(max: usize, span: i64) -> impl Strategy<Value = Vec<Trade>> {
    let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
    // Few distinct prices, so ties in high, low and time are common.
    let price = prop_oneof![decimal(1_000_000, 4), Just(Decimal::new(15, 1).unwrap()), Just(Decimal::new(150, 2).unwrap())];
    let side = prop_oneof![Just(TakerSide::Buy), Just(TakerSide::Sell), Just(TakerSide::Unknown)];
    let time = prop_oneof![0..span, (0..span).prop_map(|t| t - t % 1_000_000)];
    prop::collection::vec((time, price, decimal(100_000_000, 8), side), 1..max)
        .prop_map(move |raw| {
            raw.into_iter()
                .enumerate()
                .map(|(id, (offset, price, qty, side))| {
                    let t = Timestamp::from_micros(START + offset).unwrap();
                    Trade::new(instrument.clone(), id as u64, price, qty, side, t, t).unwrap()
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn interval() -> impl Strategy<Value = Interval> {
    prop::sample::select(Interval::ALL.to_vec())
}

/// One step of a feed: a trade arrives (and is revised when late), or the watermark moves.
#[derive(Clone, Debug)]
enum Step {
    Trade(Trade),
    /// The watermark becomes the latest event time seen minus `lag`.
    Advance {
        lag: i64,
    },
}

/// Trades in arrival order, late by anything from nothing to weeks, with watermark moves between them.
fn feed(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
    let price = prop_oneof![decimal(1_000_000, 4), Just(Decimal::new(15, 1).unwrap()), Just(Decimal::new(150, 2).unwrap())];
    let side = prop_oneof![Just(TakerSide::Buy), Just(TakerSide::Sell), Just(TakerSide::Unknown)];
    // Event times bunch around a few instants at several scales, so that buckets of every interval
    // get several trades, and a month ends in the middle.
    let anchor = prop::sample::select(vec![START, FEBRUARY - HOUR, FEBRUARY - 2 * SECOND]);
    let spread = prop::sample::select(vec![3 * SECOND, 5 * MINUTE, 2 * HOUR, 2 * DAY, 16 * DAY]);
    let delay = prop::sample::select(vec![0, 0, SECOND, MINUTE, HOUR, DAY, 20 * DAY]);
    let lag = prop::option::weighted(0.3, prop::sample::select(vec![0, SECOND, MINUTE, HOUR, DAY]));
    let raw = (anchor, spread, 0..i64::MAX, any::<bool>(), delay, 0..i64::MAX, price, decimal(100_000_000, 8), side, lag);
    prop::collection::vec(raw, 1..max).prop_map(move |raw| {
        let mut arrivals: Vec<(i64, Trade, Option<i64>)> = raw
            .into_iter()
            .enumerate()
            .map(|(id, (anchor, spread, offset, whole_second, delay, wait, price, qty, side, lag))| {
                let mut t = anchor + offset % spread;
                if whole_second {
                    t -= t % SECOND;
                }
                let time = Timestamp::from_micros(t).unwrap();
                let trade = Trade::new(instrument.clone(), id as u64, price, qty, side, time, time).unwrap();
                (t + wait % (delay + 1), trade, lag)
            })
            .collect();
        arrivals.sort_by_key(|(arrival, trade, _)| (*arrival, trade.trade_id()));
        arrivals
            .into_iter()
            .flat_map(|(_, trade, lag)| std::iter::once(Step::Trade(trade)).chain(lag.map(|lag| Step::Advance { lag })))
            .collect()
    })
}

fn interval_set() -> impl Strategy<Value = Vec<Interval>> {
    use Interval::*;
    prop_oneof![Just(vec![S1, M1, M5, H1, D1, Mo1]), prop::sample::subsequence(Interval::ALL.to_vec(), 1..=6)]
}

fn revision_window() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![0, SECOND, MINUTE, HOUR, DAY, 40 * DAY])
}

/// Everything a series reports, in order.
#[derive(Debug, PartialEq)]
enum Output {
    Applied(Applied),
    Revision(Revision),
    Final(Candle),
    Revised(Candle),
}

/// Runs one step the way a consumer would: a late trade is offered to `revise`.
fn run(series: &mut CandleSeries, step: &Step, max_seen: &mut i64) -> Vec<Output> {
    let mut out = Vec::new();
    match step {
        Step::Trade(trade) => {
            *max_seen = (*max_seen).max(trade.event_time().as_micros());
            let applied = series.apply(trade).unwrap();
            out.push(Output::Applied(applied));
            if applied == Applied::Late {
                let mut revised = Vec::new();
                out.push(Output::Revision(series.revise(trade, &mut |c| revised.push(c)).unwrap()));
                out.extend(revised.into_iter().map(Output::Revised));
            }
        }
        Step::Advance { lag } => {
            let horizon = Timestamp::from_micros((*max_seen - lag).max(0)).unwrap();
            series.advance(horizon, &mut |c| out.push(Output::Final(c))).unwrap();
        }
    }
    out
}

/// What a consumer knows: the latest report of every final candle, and the trades counted so far.
#[derive(Default)]
struct Consumer {
    latest: BTreeMap<(Interval, i64), Candle>,
    counted: Vec<Trade>,
}

impl Consumer {
    fn take(&mut self, series: &CandleSeries, trade: Option<&Trade>, outputs: Vec<Output>) -> Result<(), TestCaseError> {
        for output in outputs {
            match output {
                Output::Applied(Applied::Open) => self.counted.extend(trade.cloned()),
                Output::Applied(Applied::Late) => {}
                Output::Revision(revision) => {
                    // Only late trades are offered, so the window alone decides.
                    let time = trade.map(|t| t.event_time().as_micros()).unwrap();
                    let too_late = time < series.horizon().as_micros() - series.revision_window();
                    prop_assert_eq!(revision == Revision::TooLate, too_late);
                    if revision == Revision::Revised {
                        self.counted.extend(trade.cloned());
                    }
                }
                Output::Final(candle) => {
                    prop_assert!(candle.is_closed());
                    let key = (candle.interval(), candle.open_time().as_micros());
                    prop_assert!(self.latest.insert(key, candle).is_none(), "{:?} finalized twice", key);
                }
                Output::Revised(candle) => {
                    prop_assert!(candle.is_closed());
                    let key = (candle.interval(), candle.open_time().as_micros());
                    // One trade more than the last report (two versions up); a bucket without
                    // trades starts at one trade, closed.
                    let version = self.latest.get(&key).map_or(3, |last| last.version() + 2);
                    prop_assert_eq!(candle.version(), version, "revision of {:?}", key);
                    self.latest.insert(key, candle);
                }
            }
        }
        Ok(())
    }

    /// Latest finals and candles in progress, together, are the reference candles of the trades
    /// counted, each bucket exactly once.
    fn check(&self, series: &CandleSeries) -> Result<(), TestCaseError> {
        let intervals: Vec<Interval> = series.intervals().collect();
        prop_assert!(self.latest.keys().all(|(interval, _)| intervals.contains(interval)));
        let mut open = Vec::new();
        series.in_progress(&mut open).unwrap();
        for interval in intervals {
            let mut got: BTreeMap<i64, Expected> =
                self.latest.range((interval, i64::MIN)..=(interval, i64::MAX)).map(|((_, open), c)| (*open, observed(c))).collect();
            for candle in open.iter().filter(|c| c.interval() == interval) {
                prop_assert!(!candle.is_closed());
                let open_time = candle.open_time().as_micros();
                prop_assert!(got.insert(open_time, observed(candle)).is_none(), "{} {} final and in progress", interval, open_time);
            }
            prop_assert_eq!(&got, &reference(interval, &self.counted), "interval {}", interval);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any trade sequence in any arrival order gives the reference candles.
    #[test]
    fn candles_equal_the_reference(trades in trades(200, 40 * DAY), interval in interval()) {
        let got: BTreeMap<i64, Expected> = aggregate(interval, &trades).into_iter().map(|(k, c)| (k, observed(&c))).collect();
        prop_assert_eq!(got, reference(interval, &trades));
    }

    /// Merging the candles of a smaller interval gives exactly the candles of the larger one.
    #[test]
    fn rollup_equals_direct_aggregation(trades in trades(200, 40 * DAY), small in interval(), large in interval()) {
        prop_assume!(large.is_multiple_of(small));
        let mut rolled: BTreeMap<i64, Candle> = BTreeMap::new();
        // Merge in a scrambled order: rollup must not depend on it either.
        let mut parts: Vec<Candle> = aggregate(small, &trades).into_values().collect();
        parts.reverse();
        parts.sort_by_key(|c| c.trade_count());
        for part in parts {
            let open = large.bucket_start(part.open_time()).as_micros();
            match rolled.get_mut(&open) {
                Some(c) => c.merge(&part).unwrap(),
                None => {
                    let mut c = Candle::flat(part.instrument().clone(), large, Timestamp::from_micros(open).unwrap(), part.open()).unwrap();
                    c.merge(&part).unwrap();
                    rolled.insert(open, c);
                }
            }
        }
        let direct = aggregate(large, &trades);
        prop_assert_eq!(rolled, direct);
    }

    /// A series over every interval, fed trades at most `lateness` out of order and advanced by a
    /// watermark, finalizes exactly the reference candles of every interval.
    #[test]
    fn series_finals_equal_the_reference(mut trades in trades(300, 3 * DAY), lateness in 0i64..5_000_000) {
        // Arrival order: by event time plus a jitter below the allowed lateness.
        let jitter = |t: &Trade| t.event_time().as_micros() + (t.trade_id() as i64 * 7_919 % (lateness + 1));
        trades.sort_by_key(jitter);
        let instrument = trades[0].instrument().clone();
        let mut series = CandleSeries::new(instrument, &Interval::ALL, Timestamp::MIN).unwrap();
        let mut finals: Vec<Candle> = Vec::new();
        let mut max_seen = 0i64;
        for t in &trades {
            prop_assert_eq!(series.apply(t).unwrap(), Applied::Open);
            max_seen = max_seen.max(t.event_time().as_micros());
            let watermark = Timestamp::from_micros((max_seen - lateness).max(0)).unwrap();
            series.advance(watermark, &mut |c| finals.push(c)).unwrap();
        }
        // Idle long enough that every bucket, up to the month, closes.
        series.advance(Timestamp::from_micros(START + 80 * DAY).unwrap(), &mut |c| finals.push(c)).unwrap();
        let mut open = Vec::new();
        series.in_progress(&mut open).unwrap();
        prop_assert!(open.is_empty());
        for interval in Interval::ALL {
            let got: BTreeMap<i64, Expected> = finals.iter().filter(|c| c.interval() == interval).map(|c| {
                assert!(c.is_closed());
                (c.open_time().as_micros(), observed(c))
            }).collect();
            prop_assert_eq!(&got, &reference(interval, &trades), "interval {}", interval);
        }
    }

    /// In-progress candles plus finals so far always cover exactly the trades applied so far.
    #[test]
    fn in_progress_matches_the_reference(trades in trades(100, DAY / 2), cut in 0usize..100) {
        let mut sorted = trades.clone();
        sorted.sort_by_key(|t| t.event_time());
        let cut = cut.min(sorted.len());
        let mut series = CandleSeries::new(sorted[0].instrument().clone(), &[Interval::M1, Interval::H1, Interval::D1], Timestamp::MIN).unwrap();
        let mut finals = Vec::new();
        for t in &sorted[..cut] {
            series.apply(t).unwrap();
            series.advance(t.event_time(), &mut |c| finals.push(c)).unwrap();
        }
        let mut open = Vec::new();
        series.in_progress(&mut open).unwrap();
        for interval in [Interval::M1, Interval::H1, Interval::D1] {
            let got: BTreeMap<i64, Expected> = finals.iter().chain(open.iter()).filter(|c| c.interval() == interval)
                .map(|c| (c.open_time().as_micros(), observed(c))).collect();
            prop_assert_eq!(got, reference(interval, &sorted[..cut]));
        }
    }

    /// Late trades revised within the window, in any order and with any watermark moves: every
    /// candle's latest report, with the candles in progress, equals the reference of all trades
    /// except those too late, before and after everything is final.
    #[test]
    fn revised_candles_equal_the_reference(
        steps in feed(300), intervals in interval_set(), window in revision_window(), cut in 0usize..400,
    ) {
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let mut series = CandleSeries::new(instrument, &intervals, Timestamp::MIN).unwrap().with_revision_window(window);
        let mut consumer = Consumer::default();
        let mut max_seen = 0;
        let cut = cut.min(steps.len());
        for (i, step) in steps.iter().enumerate() {
            if i == cut {
                consumer.check(&series)?;
            }
            let trade = match step { Step::Trade(t) => Some(t), Step::Advance { .. } => None };
            let outputs = run(&mut series, step, &mut max_seen);
            consumer.take(&series, trade, outputs)?;
        }
        consumer.check(&series)?;
        // Idle until every bucket, up to the month, is final.
        let step = Step::Advance { lag: max_seen - (START + 80 * DAY) };
        let outputs = run(&mut series, &step, &mut max_seen);
        consumer.take(&series, None, outputs)?;
        let mut open = Vec::new();
        series.in_progress(&mut open).unwrap();
        prop_assert!(open.is_empty());
        consumer.check(&series)?;
    }

    /// A series restored from a snapshot taken at any point gives the same outputs as the
    /// original for the rest of the feed, and holds the same state after every step.
    #[test]
    fn a_restored_series_behaves_like_the_original(
        steps in feed(200), intervals in interval_set(), window in revision_window(), cut in 0usize..300,
    ) {
        let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
        let mut original = CandleSeries::new(instrument.clone(), &intervals, Timestamp::MIN).unwrap().with_revision_window(window);
        let mut max_seen = 0;
        let cut = cut.min(steps.len());
        for step in &steps[..cut] {
            run(&mut original, step, &mut max_seen);
        }
        let snapshot = original.snapshot();
        let mut restored = CandleSeries::restore(instrument, &intervals, window, snapshot.clone()).unwrap();
        prop_assert_eq!(restored.snapshot(), snapshot);
        let finish = Step::Advance { lag: -80 * DAY };
        for step in steps[cut..].iter().chain([&finish]) {
            let mut seen_by_restored = max_seen;
            let expected = run(&mut original, step, &mut max_seen);
            prop_assert_eq!(run(&mut restored, step, &mut seen_by_restored), expected);
            prop_assert_eq!(restored.snapshot(), original.snapshot());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            original.in_progress(&mut a).unwrap();
            restored.in_progress(&mut b).unwrap();
            prop_assert_eq!(b, a);
        }
    }
}
