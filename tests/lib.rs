//! The end-to-end suites live in `e2e.rs` and the fault-injection drills in `faults.rs` (test
//! targets of this package); this library is empty.
