//! feed-publisher: normalized trades from exchange feeds, a simulator and history files into
//! `market-events`.
//!
//! - [`producer`]: trades batched per instrument into records and per partition into requests, with
//!   linger, size limit, lz4, bounded memory and a dead-letter path (partitions by Kafka's murmur2,
//!   `wick_kafka::partitioner`).
//! - [`run`]: the `simulate` ([`simulate`]) and `replay` ([`replay`]) commands.
//! - [`backfill`]: the `backfill` command: historical trades from the exchanges' REST APIs into
//!   `market-events`, resumable, over [`history`]: paged REST history normalized like the live
//!   feeds (rate limited, retried), also used by `live` to repair gaps.
//! - [`live`]: the `live` command's WebSocket sessions (subscribe, keep alive, reconnect with
//!   backoff, de-duplicate, repair gaps in the trade sequence from [`history`]) over [`exchange`]'s
//!   message parsers and symbol mapping.

pub mod backfill;
pub mod config;
pub mod exchange;
pub mod history;
pub mod live;
pub mod metrics;
pub mod producer;
pub mod replay;
pub mod run;
pub mod simulate;
