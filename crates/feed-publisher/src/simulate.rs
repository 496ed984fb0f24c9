//! The simulator (`simulate`): N instruments, a total trade rate, random-walk prices on each
//! instrument's tick size, bursts and quiet spells; the same seed gives the same trades for the
//! same times. It replaces the seed system's MarketDataSimulator.

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
