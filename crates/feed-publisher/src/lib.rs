//! feed-publisher: normalized trades from exchange feeds, a simulator and history files into
//! `market-events`.
//!
//! Built so far: the exchanges' message parsers and symbol mapping ([`exchange`]), Kafka's default
//! partitioner ([`partitioner`]) and history-file parsing ([`replay`]). The WebSocket sessions, the
//! simulator, the batching producer and the binary are the rest of the feed-publisher issue.

pub mod exchange;
pub mod partitioner;
pub mod replay;
