//! Kafka's default partitioner: murmur2 of the key, as the Java client computes it, so that any
//! other producer (Java, librdkafka with `murmur2_random`, kafka-python) puts an instrument's
//! records on the same partition as Wick.

/// Kafka's `Utils.murmur2` (seed `0x9747b28c`), as a signed 32-bit value like Java's.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`, cross-checked with kafka-python.
    #[test]
    fn matches_the_java_client() {
        for (key, hash) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    /// Instrument keys, with the partitions kafka-python's default partitioner picks among 16.
    #[test]
    fn agrees_with_kafka_python_on_instrument_keys() {
        assert_eq!(murmur2(b"BINANCE:BTC-USDT"), -1_031_018_325);
        assert_eq!(partition_for(b"BINANCE:BTC-USDT", 16), 11);
        assert_eq!(murmur2(b"COINBASE:BTC-USD"), -800_048_956);
        assert_eq!(partition_for(b"COINBASE:BTC-USD", 16), 4);
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for key in ["BINANCE:BTC-USDT", "COINBASE:BTC-USD", "KRAKEN:BTC-USD", ""] {
            let p = partition_for(key.as_bytes(), 16);
            assert!((0..16).contains(&p));
            assert_eq!(p, partition_for(key.as_bytes(), 16));
        }
    }
}
