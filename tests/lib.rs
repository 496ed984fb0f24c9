//! The end-to-end suites live in `e2e.rs` (a test target of this package); this library is empty.
