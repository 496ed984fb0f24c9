//! loom model tests of the ring: every interleaving of a tiny ring (2 slots) with wraparound,
//! two consumers, shutdown, abandonment and the sleep/wake handshake of the blocking and phased
//! wait strategies (under loom a phase of phased lasts one try, or none when it is zero).
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p wick-core --test loom_ring --release`
//! (`cargo xtask ci` does).
#![cfg(loom)]

use std::time::Duration;

use loom::thread;
use wick_core::ring::{ring, RingClosed, WaitStrategy};

/// Explores every interleaving with at most `preemptions` forced context switches (loom's
/// recommended bound: most concurrency bugs need very few, and spin loops make the space explode).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.max_branches = 100_000;
    builder.check(f);
}

fn wraparound_with(wait: WaitStrategy, consumers: usize, events: u32) {
    let (mut producer, consumers) = ring(2, consumers, wait, || 0u32).unwrap();
    let handles: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut seen = Vec::new();
                while c.poll(|v| seen.push(*v)).is_ok() {}
                seen
            })
        })
        .collect();
    for i in 0..events {
        producer.publish(|slot| *slot = i).unwrap();
    }
    drop(producer);
    for h in handles {
        assert_eq!(h.join().unwrap(), (0..events).collect::<Vec<_>>());
    }
}

#[test]
fn one_consumer_wraps_around_and_drains_on_shutdown() {
    model(2, || wraparound_with(WaitStrategy::Yielding, 1, 3));
}

#[test]
fn two_spinning_consumers_drain_on_shutdown() {
    model(1, || wraparound_with(WaitStrategy::Yielding, 2, 2));
}

#[test]
fn blocking_consumers_never_miss_a_wakeup() {
    model(2, || wraparound_with(WaitStrategy::Blocking, 2, 3));
}

#[test]
fn phased_consumers_that_sleep_at_once_never_miss_a_wakeup() {
    let sleep_at_once = WaitStrategy::Phased { spin_for: Duration::ZERO, yield_for: Duration::ZERO };
    model(2, move || wraparound_with(sleep_at_once, 2, 3));
}

#[test]
fn phased_spins_yields_then_sleeps_without_missing_a_wakeup() {
    let tiny = WaitStrategy::Phased { spin_for: Duration::from_nanos(1), yield_for: Duration::from_nanos(1) };
    model(2, move || wraparound_with(tiny, 1, 3));
}

#[test]
fn batches_wrap_around() {
    model(3, || {
        let (mut producer, mut consumers) = ring(2, 1, WaitStrategy::BusySpin, || 0u32).unwrap();
        let mut consumer = consumers.pop().unwrap();
        let h = thread::spawn(move || {
            let mut seen = Vec::new();
            while consumer.poll(|v| seen.push(*v)).is_ok() {}
            seen
        });
        producer.publish_batch(3, |i, slot| *slot = i as u32).unwrap();
        drop(producer);
        assert_eq!(h.join().unwrap(), vec![0, 1, 2]);
    });
}

#[test]
fn abandoned_ring_releases_a_waiting_producer() {
    model(3, || {
        let (mut producer, mut consumers) = ring(2, 1, WaitStrategy::Yielding, || 0u32).unwrap();
        let consumer = consumers.pop().unwrap();
        let h = thread::spawn(move || drop(consumer));
        let mut result = Ok(());
        for i in 0..3 {
            result = producer.publish(|slot| *slot = i);
            if result.is_err() {
                break;
            }
        }
        h.join().unwrap();
        // The third publish needs the (gone) consumer to have passed slot 0.
        assert_eq!(result, Err(RingClosed));
    });
}
