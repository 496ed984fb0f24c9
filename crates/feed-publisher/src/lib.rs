//! feed-publisher: normalized trades from exchange feeds, a simulator and history files into
//! `market-events`.
//!
//! - [`producer`]: trades batched per instrument into records and per partition into requests, with
//!   linger, size limit, lz4, bounded memory and a dead-letter path; [`partitioner`]: Kafka's murmur2.
//! - [`run`]: the `simulate` ([`simulate`]) and `replay` ([`replay`]) commands.
//! - [`exchange`]: the exchanges' message parsers and symbol mapping. The live WebSocket sessions
//!   (subscribe, keep alive, reconnect, de-duplicate, count gaps) are not built yet, and neither is
//!   the `live` command.

pub mod config;
pub mod exchange;
pub mod metrics;
pub mod partitioner;
pub mod producer;
pub mod replay;
pub mod run;
pub mod simulate;
