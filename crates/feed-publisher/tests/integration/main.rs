//! feed-publisher's integration tests, one binary: exchange payload fixtures and the publisher
//! against the real broker.

mod exchanges;
mod live;
mod publisher;
