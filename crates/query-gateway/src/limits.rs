//! API keys and rate limits, shared by REST, WebSocket and gRPC.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{AuthConfig, LimitsConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Token buckets by key: `rate` tokens a second, up to `burst`.
#[derive(Debug)]
struct Buckets<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Buckets beyond this many are swept of the full (idle) ones.
const SWEEP_AT: usize = 100_000;

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: u32, burst: u32) -> Option<Buckets<K>> {
        (rate > 0).then(|| Buckets { rate: f64::from(rate), burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) })
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// Who may call, and how often.
#[derive(Debug)]
pub struct Guard {
    keys: Vec<Vec<u8>>,
    per_key: Option<Buckets<Vec<u8>>>,
    per_address: Option<Buckets<IpAddr>>,
    metrics: Metrics,
}

/// Compares without an early exit, so response times do not tell how much of a key matched.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guard {
    pub fn new(auth: &AuthConfig, limits: &LimitsConfig, metrics: Metrics) -> Guard {
        Guard {
            keys: auth.api_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            per_key: Buckets::new(limits.per_key_rate, limits.per_key_burst),
            per_address: Buckets::new(limits.per_address_rate, limits.per_address_burst),
            metrics,
        }
    }

    /// Checks the per-address limit first (so refused keys and bad requests are limited too),
    /// then the key (when keys are configured), then the key's limit.
    pub fn check(&self, key: Option<&str>, address: Option<IpAddr>) -> Result<(), ApiError> {
        let now = Instant::now();
        if let (Some(buckets), Some(address)) = (&self.per_address, address) {
            buckets.take(&address, now).map_err(|retry_after| self.limited("address", retry_after))?;
        }
        if !self.keys.is_empty() {
            let Some(key) = key else {
                return Err(ApiError::Unauthorized(
                    "an API key is required: header x-api-key, authorization: Bearer <key>, or query parameter api_key".into(),
                ));
            };
            if !self.keys.iter().any(|k| same_bytes(k, key.as_bytes())) {
                return Err(ApiError::Unauthorized("unknown API key".into()));
            }
        }
        // Keyed buckets only for configured keys: a client must not grow the table at will.
        if let (Some(buckets), Some(key), false) = (&self.per_key, key, self.keys.is_empty()) {
            buckets.take(&key.as_bytes().to_vec(), now).map_err(|retry_after| self.limited("key", retry_after))?;
        }
        Ok(())
    }

    fn limited(&self, limit: &str, retry_after: Duration) -> ApiError {
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
        ApiError::RateLimited { retry_after }
    }
}

/// The API key of a request: `x-api-key`, `authorization: Bearer <key>`, or the `api_key` query
/// parameter (browsers cannot set headers on a WebSocket).
pub fn request_key<'a>(x_api_key: Option<&'a str>, authorization: Option<&'a str>, query_key: Option<&'a str>) -> Option<&'a str> {
    x_api_key
        .or_else(|| authorization.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer "))).map(str::trim))
        .or(query_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_required_when_configured() {
        let auth = AuthConfig { api_keys: vec!["secret-key-1".into()] };
        let guard = Guard::new(&auth, &LimitsConfig::default(), Metrics::new());
        assert!(matches!(guard.check(None, None), Err(ApiError::Unauthorized(_))));
        assert!(matches!(guard.check(Some("secret-key-2"), None), Err(ApiError::Unauthorized(_))));
        assert!(guard.check(Some("secret-key-1"), None).is_ok());
        let open = Guard::new(&AuthConfig::default(), &LimitsConfig::default(), Metrics::new());
        assert!(open.check(None, None).is_ok());
        assert_eq!(request_key(None, Some("Bearer abc"), None), Some("abc"));
        assert_eq!(request_key(Some("x"), Some("Bearer abc"), Some("q")), Some("x"));
        assert_eq!(request_key(None, None, Some("q")), Some("q"));
    }

    #[test]
    fn buckets_allow_the_burst_then_say_when_to_retry() {
        let buckets: Buckets<u8> = Buckets::new(10, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(&1, t0).is_ok());
        }
        let wait = buckets.take(&1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(buckets.take(&2, t0).is_ok(), "buckets are per key");
        assert!(buckets.take(&1, t0 + Duration::from_millis(100)).is_ok());
    }
}
