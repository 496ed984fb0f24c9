//! The simulator (`simulate`): N instruments, a total trade rate, random-walk prices on each
//! instrument's tick size, bursts and quiet spells; the same seed gives the same trades for the
//! same times. It replaces the seed system's MarketDataSimulator. A history (`--history`) is the
//! same walk over past event times, sparser, so that a day of it is quick to publish; the live
//! trades continue its ids and prices.

use wick_core::{Decimal, Instrument, TakerSide, Timestamp, Trade};

/// The instruments the simulator trades, with a starting price and its tick and lot decimals.
const CATALOG: [(&str, i64, u8, u8); 8] = [
    ("SIM:BTC-USD", 6_325_010, 2, 5), // 63250.10, tick 0.01, lot 0.00001
    ("SIM:ETH-USD", 312_455, 2, 4),   // 3124.55
    ("SIM:SOL-USD", 14_512, 2, 3),    // 145.12
    ("SIM:XRP-USD", 6_123, 4, 1),     // 0.6123
    ("SIM:DOGE-USD", 158_230, 6, 0),  // 0.158230
    ("SIM:ADA-USD", 45_120, 5, 1),    // 0.45120
    ("SIM:LTC-USD", 8_234, 2, 3),     // 82.34
    ("SIM:SHIB-USD", 2_345, 8, 0),    // 0.00002345
];

/// The most instruments the simulator offers.
pub const MAX_INSTRUMENTS: usize = CATALOG.len();

/// Trades per second of a history, across all instruments: 172,800 trades for a day, which the
/// pipeline takes in well under a minute, with some 15 to 30 trades per instrument in a minute.
pub const HISTORY_RATE: f64 = 2.0;

/// The most trades a history holds: longer histories are sparser.
pub const HISTORY_MAX_TRADES: f64 = 200_000.0;

/// The trade rate of a history spanning `span`: [`HISTORY_RATE`], or less so that it holds at
/// most [`HISTORY_MAX_TRADES`].
pub fn history_rate(span: std::time::Duration) -> f64 {
    (HISTORY_MAX_TRADES / span.as_secs_f64().max(1.0)).min(HISTORY_RATE)
}

/// The length of a history step, in microseconds.
const HISTORY_STEP_US: i64 = 1_000_000;

#[derive(Debug)]
struct Series {
    instrument: Instrument,
    /// Price in ticks.
    ticks: i64,
    price_scale: u8,
    qty_scale: u8,
    next_id: u64,
}

/// A deterministic trade generator.
#[derive(Debug)]
pub struct Simulator {
    series: Vec<Series>,
    rng: u64,
    /// Remaining steps of the current regime, and its rate multiplier (bursts > 1, quiet < 1).
    regime_left: u32,
    regime_factor: f64,
}

impl Simulator {
    /// `instruments` (1 to [`MAX_INSTRUMENTS`]) from the catalog, seeded.
    pub fn new(instruments: usize, seed: u64) -> Result<Simulator, String> {
        if instruments == 0 || instruments > MAX_INSTRUMENTS {
            return Err(format!("the simulator offers 1 to {MAX_INSTRUMENTS} instruments (asked for {instruments})"));
        }
        let series = CATALOG[..instruments]
            .iter()
            .map(|(name, ticks, ps, qs)| {
                Ok(Series {
                    instrument: Instrument::new(name).map_err(|e| e.to_string())?,
                    ticks: *ticks,
                    price_scale: *ps,
                    qty_scale: *qs,
                    next_id: 1,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Simulator { series, rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, regime_left: 0, regime_factor: 1.0 })
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, deterministic, good enough for a market that is not real.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// How many trades to emit in a step that nominally carries `nominal` trades: bursts of up to
    /// 5x and quiet spells of 0.1x, each lasting a random number of steps.
    pub fn step_size(&mut self, nominal: f64) -> usize {
        if self.regime_left == 0 {
            self.regime_left = 5 + (self.next() % 50) as u32;
            // Bursts (1 step in 10 regimes) at 5x, quiet spells (2 in 10) at 0.1x, normal otherwise;
            // divided by their mean (1.22) so the long-run rate is the one asked for.
            self.regime_factor = match self.next() % 10 {
                0 => 5.0,
                1 | 2 => 0.1,
                _ => 1.0,
            } / 1.22;
        }
        self.regime_left -= 1;
        let want = nominal * self.regime_factor;
        // Randomized rounding keeps the long-run average exact for fractional rates.
        let frac = want.fract();
        let extra = u64::from((self.next() % 1_000_000) as f64 / 1e6 < frac);
        want as usize + extra as usize
    }

    /// The trades of one step that spans `(from, to]`: [`Simulator::step_size`] of `nominal`
    /// (at most one per microsecond of the span), at event times spread evenly over the span,
    /// strictly increasing, the last at `to`. None when the span is empty (a clock that did not
    /// move, or went back). Consecutive steps over adjoining spans keep every instrument's event
    /// times strictly increasing and never later than the last `to`.
    pub fn step(&mut self, from: Timestamp, to: Timestamp, nominal: f64) -> Vec<Trade> {
        let span = to.as_micros().saturating_sub(from.as_micros());
        if span <= 0 {
            return Vec::new();
        }
        let n = self.step_size(nominal).min(usize::try_from(span).unwrap_or(usize::MAX));
        (1..=n as i64)
            .map(|k| {
                // k * span / n: strictly increasing in k because span >= n; the last is `to`.
                let offset = i64::try_from(i128::from(span) * i128::from(k) / n as i128).unwrap_or(span);
                self.trade(from.saturating_add_micros(offset))
            })
            .collect()
    }

    /// The history from `start` to `end`: steps of one second of event time (the last one
    /// shorter) at `rate` trades per second, with the live bursts and quiet spells; every trade
    /// in `(start, end]`, strictly increasing in event time.
    pub fn history(&mut self, start: Timestamp, end: Timestamp, rate: f64) -> impl Iterator<Item = Vec<Trade>> + '_ {
        let mut from = start;
        std::iter::from_fn(move || {
            if from >= end {
                return None;
            }
            let to = from.saturating_add_micros(HISTORY_STEP_US).min(end);
            let seconds = (to.as_micros() - from.as_micros()) as f64 / 1e6;
            let trades = self.step(from, to, rate * seconds);
            from = to;
            Some(trades)
        })
    }

    /// The next trade, at `time`.
    pub fn trade(&mut self, time: Timestamp) -> Trade {
        let i = (self.next() % self.series.len() as u64) as usize;
        let step = (self.next() % 7) as i64 - 3;
        let lots = 1 + (self.next() % 10_000) as i128;
        let side = if self.next() % 2 == 0 { TakerSide::Buy } else { TakerSide::Sell };
        let s = &mut self.series[i];
        s.ticks = (s.ticks + step).max(1);
        let id = s.next_id;
        s.next_id += 1;
        let price = Decimal::new(i128::from(s.ticks), s.price_scale).unwrap_or(Decimal::ZERO);
        let qty = Decimal::new(lots, s.qty_scale).unwrap_or(Decimal::ZERO);
        // Price and quantity are positive and small, so the checked constructor cannot refuse them.
        match Trade::new(s.instrument.clone(), id, price, qty, side, time, time) {
            Ok(t) => t,
            Err(e) => unreachable!("simulated trade refused: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_trades() {
        let run = |seed| {
            let mut s = Simulator::new(4, seed).unwrap();
            (0..1000).map(|k| s.trade(Timestamp::from_micros(k).unwrap())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let trades = run(7);
        let instruments: std::collections::BTreeSet<_> = trades.iter().map(|t| t.instrument().to_string()).collect();
        assert_eq!(instruments.len(), 4);
        // Ids increase per instrument, prices stay on the tick grid.
        for name in &instruments {
            let ids: Vec<u64> = trades.iter().filter(|t| t.instrument().as_str() == name).map(Trade::trade_id).collect();
            assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        }
        assert!(trades.iter().filter(|t| t.instrument().as_str() == "SIM:BTC-USD").all(|t| t.price().scale() == 2));
    }

    /// Per instrument: ids 1, 2, 3... and event times strictly increasing.
    fn assert_ordered(trades: &[Trade]) {
        let mut last: std::collections::BTreeMap<String, (u64, Timestamp)> = Default::default();
        for t in trades {
            let key = t.instrument().to_string();
            match last.get(&key) {
                Some(&(id, time)) => {
                    assert_eq!(t.trade_id(), id + 1, "{key}: ids continue");
                    assert!(t.event_time() > time, "{key}: event time {} after {time}", t.event_time());
                }
                None => assert_eq!(t.trade_id(), 1, "{key}: ids start at 1"),
            }
            last.insert(key, (t.trade_id(), t.event_time()));
        }
    }

    #[test]
    fn a_day_of_history_then_live_steps_keep_ids_prices_and_event_times_in_order() {
        let day = 86_400_000_000;
        let end = Timestamp::parse_rfc3339("2026-09-21T12:00:00.123456Z").unwrap();
        let start = end.saturating_sub_micros(day);
        let rate = history_rate(std::time::Duration::from_secs(86_400));
        assert_eq!(rate, HISTORY_RATE);
        let mut sim = Simulator::new(4, 3).unwrap();
        let steps: Vec<Vec<Trade>> = sim.history(start, end, rate).collect();
        assert_eq!(steps.len(), 86_400, "one step per second of event time");
        let history: Vec<Trade> = steps.into_iter().flatten().collect();
        // 2 trades a second on average: 172,800 in all, give or take the random bursts.
        let n = history.len() as f64;
        assert!((n - 172_800.0).abs() < 0.1 * 172_800.0, "{n} trades");
        assert!(history.iter().all(|t| t.event_time() > start && t.event_time() <= end), "all within the day");
        assert!(history.first().unwrap().event_time() < start.saturating_add_micros(60_000_000), "starts a day back");
        assert!(history.last().unwrap().event_time() > end.saturating_sub_micros(60_000_000), "reaches the end");
        let mut hours = std::collections::BTreeSet::new();
        for t in &history {
            hours.insert((t.instrument().to_string(), t.event_time().as_micros().div_euclid(3_600_000_000)));
        }
        // 25 hour buckets are touched; the last holds only 0.12 s of the day.
        assert!(hours.len() >= 4 * 24, "every instrument trades in every hour of the day ({})", hours.len());
        // Live 10 ms steps continue from the end of the history: ids, prices and times go on.
        let mut all = history;
        let mut from = end;
        for k in 1..=500 {
            let to = end.saturating_add_micros(k * 10_000);
            all.extend(sim.step(from, to, 2.0));
            from = to;
        }
        // A clock that stands still or goes back makes no trades.
        assert!(sim.step(from, from, 50.0).is_empty());
        assert!(sim.step(from, from.saturating_sub_micros(5), 50.0).is_empty());
        assert_ordered(&all);
        assert!(all.iter().all(|t| t.event_time() <= from), "never later than the last step's end");
        let btc: Vec<&Trade> = all.iter().filter(|t| t.instrument().as_str() == "SIM:BTC-USD").collect();
        let ticks = |t: &Trade| t.price().rescaled(2).unwrap().coefficient();
        let moves = btc.windows(2).map(|w| (ticks(w[1]) - ticks(w[0])).abs()).max().unwrap();
        assert!(moves <= 3, "prices walk on from the history by at most 3 ticks a trade (max {moves})");
        // Longer histories are sparser: at most HISTORY_MAX_TRADES trades.
        assert!(history_rate(std::time::Duration::from_secs(30 * 86_400)) * 30.0 * 86_400.0 <= HISTORY_MAX_TRADES + 1.0);
    }

    #[test]
    fn a_crowded_step_makes_at_most_one_trade_per_microsecond() {
        let mut sim = Simulator::new(2, 9).unwrap();
        let from = Timestamp::from_micros(1_000_000).unwrap();
        let trades = sim.step(from, from.saturating_add_micros(10), 1_000.0);
        assert!(!trades.is_empty() && trades.len() <= 10, "{}", trades.len());
        assert_ordered(&trades);
    }

    #[test]
    fn rates_average_out_with_bursts_and_quiet_spells() {
        let mut s = Simulator::new(1, 1).unwrap();
        let sizes: Vec<usize> = (0..20_000).map(|_| s.step_size(10.0)).collect();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((mean - 10.0).abs() < 1.5, "mean {mean}");
        assert!(sizes.iter().any(|&n| n >= 40), "bursts happen");
        assert!(sizes.iter().any(|&n| n <= 1), "quiet spells happen");
        assert!(Simulator::new(0, 1).is_err());
        assert!(Simulator::new(MAX_INSTRUMENTS + 1, 1).is_err());
    }
}
