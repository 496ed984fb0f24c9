//! Aggregation cost: the same 1M trades (one instrument, 12 hours, BTC-like prices and sizes) into
//! 1-minute candles with the `trade_aggregation` crate and with Wick; Wick with all 16 intervals at
//! once; the exact-decimal representation (scaled `i128` against `rust_decimal`); and heap
//! allocations per trade on the hot path, counted by a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use wick_core::{CandleSeries, Decimal, Instrument, Interval, TakerSide, Timestamp, Trade};

/// Counts every allocation, so the hot path's allocations per trade can be measured.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers to the system allocator; only adds a counter.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const TRADES: usize = 1_000_000;
/// 2026-09-22T00:00:00Z.
const START_MICROS: i64 = 1_790_035_200_000_000;
const SPAN_MICROS: i64 = 12 * 3_600_000_000;

/// Deterministic trades: a random walk on a 0.01 tick around 60 000, sizes of 0.00001 to 1 with 5
/// decimals (Binance BTCUSDT's steps), strictly increasing microsecond times.
fn trades() -> Vec<Trade> {
    let instrument = Instrument::new("BINANCE:BTC-USDT").unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cents: i64 = 6_000_000;
    let step = SPAN_MICROS / TRADES as i64;
    (0..TRADES)
        .map(|i| {
            cents = (cents + (next() % 21) as i64 - 10).max(1);
            let qty = 1 + (next() % 100_000) as i128;
            let side = if next() % 2 == 0 { TakerSide::Buy } else { TakerSide::Sell };
            let t = Timestamp::from_micros(START_MICROS + i as i64 * step + (next() % step as u64) as i64).unwrap();
            Trade::new(instrument.clone(), i as u64, Decimal::new(i128::from(cents), 2).unwrap(), Decimal::new(qty, 5).unwrap(), side, t, t)
                .unwrap()
        })
        .collect()
}

/// The `trade_aggregation` crate's view of the same trades (f64; sign of the size = taker side).
fn baseline_trades(trades: &[Trade]) -> Vec<trade_aggregation::Trade> {
    trades
        .iter()
        .map(|t| {
            let size = t.quantity().coefficient() as f64 / 1e5;
            trade_aggregation::Trade {
                timestamp: t.event_time().as_millis(),
                price: t.price().coefficient() as f64 / 100.0,
                size: if t.side() == TakerSide::Buy { size } else { -size },
            }
        })
        .collect()
}

mod baseline {
    use trade_aggregation::candle_components::{Close, High, Low, NumTrades, Open, Volume, VolumeBuys, WeightedPrice};
    use trade_aggregation::{CandleComponent, CandleComponentUpdate, ModularCandle, Trade};

    /// The fields of Wick's candle that `trade_aggregation` has: OHLC, volume, trade count,
    /// taker-buy volume and the volume-weighted price (which accumulates the quote volume).
    #[derive(Debug, Default, Clone, trade_aggregation::Candle)]
    pub struct FullCandle {
        pub open: Open,
        pub high: High,
        pub low: Low,
        pub close: Close,
        pub volume: Volume,
        pub num_trades: NumTrades<u32>,
        pub volume_buys: VolumeBuys,
        pub weighted_price: WeightedPrice,
    }
}

fn wick(trades: &[Trade], intervals: &[Interval]) -> usize {
    let mut series = CandleSeries::new(trades[0].instrument().clone(), intervals, Timestamp::MIN).unwrap();
    let mut finals = Vec::new();
    for t in trades {
        series.apply(t).unwrap();
        series.advance(t.event_time(), &mut |c| finals.push(c)).unwrap();
    }
    finals.len()
}

/// Heap allocations per trade once warm: the first 10% of the trades warm the series up.
fn count_allocations(trades: &[Trade]) -> (u64, usize) {
    let mut series = CandleSeries::new(trades[0].instrument().clone(), &Interval::ALL, Timestamp::MIN).unwrap();
    let mut finals = 0usize;
    let warm = trades.len() / 10;
    for t in &trades[..warm] {
        series.apply(t).unwrap();
        series.advance(t.event_time(), &mut |c| finals += black_box(c).trade_count() as usize).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for t in &trades[warm..] {
        series.apply(t).unwrap();
        series.advance(t.event_time(), &mut |c| finals += black_box(c).trade_count() as usize).unwrap();
    }
    black_box(finals);
    (ALLOCATIONS.load(Ordering::Relaxed) - before, trades.len() - warm)
}

/// The inner fold of a candle (high, low, volume, quote volume) over exact decimals.
fn fold_scaled(prices: &[Decimal], quantities: &[Decimal]) -> (Decimal, Decimal, Decimal, Decimal) {
    let (mut high, mut low, mut volume, mut quote) = (prices[0], prices[0], Decimal::ZERO, Decimal::ZERO);
    for (p, q) in prices.iter().zip(quantities) {
        high = high.max(*p);
        low = low.min(*p);
        volume = volume.checked_add(*q).unwrap();
        quote = quote.checked_add(p.checked_mul(*q).unwrap()).unwrap();
    }
    (high, low, volume, quote)
}

fn fold_rust_decimal(prices: &[rust_decimal::Decimal], quantities: &[rust_decimal::Decimal]) -> [rust_decimal::Decimal; 4] {
    let (mut high, mut low, mut volume, mut quote) = (prices[0], prices[0], rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ZERO);
    for (p, q) in prices.iter().zip(quantities) {
        high = high.max(*p);
        low = low.min(*p);
        volume = volume.checked_add(*q).unwrap();
        quote = quote.checked_add(p.checked_mul(*q).unwrap()).unwrap();
    }
    [high, low, volume, quote]
}

fn main() {
    let trades = trades();
    let baseline = baseline_trades(&trades);

    let (allocations, counted) = count_allocations(&trades);
    let out_dir =
        std::env::var("WICK_BENCH_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/wick-bench").to_owned());
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        format!("{out_dir}/allocations.json"),
        format!("{{\"trades\": {counted}, \"allocations\": {allocations}, \"intervals\": 16}}\n"),
    )
    .unwrap();
    println!("hot path, all 16 intervals: {allocations} heap allocations over {counted} trades");

    // Both representations compute the same exact figures.
    let prices: Vec<Decimal> = trades.iter().map(Trade::price).collect();
    let quantities: Vec<Decimal> = trades.iter().map(Trade::quantity).collect();
    let rd = |d: &Decimal| rust_decimal::Decimal::from_i128_with_scale(d.coefficient(), u32::from(d.scale()));
    let rd_prices: Vec<_> = prices.iter().map(rd).collect();
    let rd_quantities: Vec<_> = quantities.iter().map(rd).collect();
    let (_, _, volume, quote) = fold_scaled(&prices, &quantities);
    let [_, _, rd_volume, rd_quote] = fold_rust_decimal(&rd_prices, &rd_quantities);
    assert_eq!((volume.to_string(), quote.to_string()), (rd_volume.to_string(), rd_quote.to_string()));

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("aggregate");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(10);
    group.throughput(Throughput::Elements(TRADES as u64));
    group.bench_function("trade_aggregation_1m", |b| {
        b.iter(|| {
            use trade_aggregation::{aggregate_all_trades, AlignedTimeRule, GenericAggregator, TimestampResolution, M1};
            let rule = AlignedTimeRule::new(M1, TimestampResolution::Millisecond);
            let mut aggregator = GenericAggregator::<baseline::FullCandle, AlignedTimeRule, trade_aggregation::Trade>::new(rule, false);
            aggregate_all_trades(black_box(&baseline), &mut aggregator).len()
        })
    });
    // The floor: only reading every trade's fields once, no aggregation. Shows how much of the
    // cost is streaming 1M trades of Wick's model through memory.
    group.bench_function("scan_trades", |b| {
        b.iter(|| {
            black_box(&trades).iter().fold(0i128, |acc, t| {
                acc.wrapping_add(t.price().coefficient() ^ t.quantity().coefficient()).wrapping_add(i128::from(t.event_time().as_micros()))
            })
        })
    });
    group.bench_function("scan_baseline_trades", |b| {
        b.iter(|| black_box(&baseline).iter().fold(0f64, |acc, t| acc + t.price * t.size + t.timestamp as f64))
    });
    group.bench_function("wick_1m", |b| b.iter(|| wick(black_box(&trades), &[Interval::M1])));
    group.bench_function("wick_all_16", |b| b.iter(|| wick(black_box(&trades), &Interval::ALL)));
    group.bench_function("fold_scaled_i128", |b| b.iter(|| fold_scaled(black_box(&prices), black_box(&quantities))));
    group.bench_function("fold_rust_decimal", |b| b.iter(|| fold_rust_decimal(black_box(&rd_prices), black_box(&rd_quantities))));
    group.finish();
    c.final_summary();
}
