//! feed-publisher's integration tests, one binary: exchange payload fixtures and the publisher
//! against the real broker.

mod backfill;
mod exchanges;
mod live;
mod publisher;
