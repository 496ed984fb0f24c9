//! Exponential backoff with jitter, for retrying a broker, database or cache that is down.

use std::time::Duration;

/// Delays that double from `min` up to `max`, each drawn between half and all of the current
/// delay so that many clients retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        Backoff { min, max: max.max(min), current: min, seed }
    }

    /// The next delay to wait.
    pub fn delay(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let delay = self.current.mul_f64(0.5 + (self.seed % 1000) as f64 / 2000.0);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        for (d, full) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(*d >= Duration::from_millis(full / 2) && *d <= Duration::from_millis(full), "{d:?} for {full} ms");
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
