//! Ring throughput: one producer to 1 and to 4 consumers, bursts of 1, 10 and 100 events, against
//! the usual alternatives. Each iteration publishes one burst and waits until every consumer has
//! handled its share, so a figure is the cost of moving a burst across threads, per burst.
//!
//! The work is the aggregator's: every event belongs to one shard (`value % consumers`) and only
//! that shard's consumer handles it. The Disruptor designs (Wick's ring, the `disruptor` crate)
//! broadcast every event and each consumer skips the others' shards; the queue designs route each
//! event into its shard's own queue, which is how one would build it with them.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use wick_core::ring::{ring, WaitStrategy};

const CAPACITY: usize = 1024;

/// Per consumer: how many events of its shard it has handled.
type Progress = Arc<Vec<CachePadded<AtomicU64>>>;

fn progress(consumers: usize) -> Progress {
    Arc::new((0..consumers).map(|_| CachePadded::new(AtomicU64::new(0))).collect())
}

/// Waits until every consumer has handled its shard of the first `published` events.
fn wait_handled(progress: &Progress, published: u64) {
    let k = progress.len() as u64;
    for (i, done) in progress.iter().enumerate() {
        let target = (published + k - 1 - i as u64) / k;
        let mut spins = 0u32;
        while done.load(Ordering::Acquire) < target {
            spins += 1;
            if spins < 100 {
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

/// A pipeline under test: `burst(n)` publishes `n` events and returns once all are handled.
trait Pipeline {
    fn burst(&mut self, n: usize);
}

struct WickRing {
    producer: Option<wick_core::ring::Producer<u64>>,
    threads: Vec<JoinHandle<()>>,
    progress: Progress,
    next: u64,
}

impl WickRing {
    fn new(consumers: usize, wait: WaitStrategy) -> WickRing {
        let (producer, handles) = ring(CAPACITY, consumers, wait, || 0u64).unwrap();
        let progress = progress(consumers);
        let k = consumers as u64;
        let threads = handles
            .into_iter()
            .enumerate()
            .map(|(i, mut consumer)| {
                let progress = progress.clone();
                thread::spawn(move || {
                    let (mut handled, mut acc) = (0u64, 0u64);
                    while consumer
                        .poll(|v| {
                            if v % k == i as u64 {
                                handled += 1;
                                acc = acc.wrapping_add(*v);
                            }
                        })
                        .is_ok()
                    {
                        progress[i].store(handled, Ordering::Release);
                    }
                    black_box(acc);
                })
            })
            .collect();
        WickRing { producer: Some(producer), threads, progress, next: 0 }
    }
}

impl Pipeline for WickRing {
    fn burst(&mut self, n: usize) {
        let base = self.next;
        if let Some(p) = self.producer.as_mut() {
            p.publish_batch(n, |i, slot| *slot = base + i as u64).unwrap();
        }
        self.next += n as u64;
        wait_handled(&self.progress, self.next);
    }
}

impl Drop for WickRing {
    fn drop(&mut self) {
        self.producer.take();
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

/// The `disruptor` crate, with its managed consumer threads.
struct DisruptorCrate {
    producer: Option<Box<dyn FnMut(usize, u64)>>,
    progress: Progress,
    next: u64,
}

impl DisruptorCrate {
    fn new(consumers: usize) -> DisruptorCrate {
        use disruptor::{build_single_producer, BusySpinWithSpinLoopHint, Producer};
        let progress = progress(consumers);
        let k = consumers as u64;
        let handler = |i: usize| {
            let progress = progress.clone();
            let (mut handled, mut acc) = (0u64, 0u64);
            move |v: &u64, _seq: i64, end_of_batch: bool| {
                if v % k == i as u64 {
                    handled += 1;
                    acc = acc.wrapping_add(*v);
                    black_box(acc);
                }
                if end_of_batch {
                    progress[i].store(handled, Ordering::Release);
                }
            }
        };
        let producer: Box<dyn FnMut(usize, u64)> = match consumers {
            1 => {
                let mut p = build_single_producer(CAPACITY, || 0u64, BusySpinWithSpinLoopHint).handle_events_with(handler(0)).build();
                Box::new(move |n, base| {
                    p.batch_publish(n, |iter| {
                        for (i, e) in iter.enumerate() {
                            *e = base + i as u64;
                        }
                    })
                })
            }
            4 => {
                let mut p = build_single_producer(CAPACITY, || 0u64, BusySpinWithSpinLoopHint)
                    .handle_events_with(handler(0))
                    .handle_events_with(handler(1))
                    .handle_events_with(handler(2))
                    .handle_events_with(handler(3))
                    .build();
                Box::new(move |n, base| {
                    p.batch_publish(n, |iter| {
                        for (i, e) in iter.enumerate() {
                            *e = base + i as u64;
                        }
                    })
                })
            }
            other => panic!("no disruptor-crate setup for {other} consumers"),
        };
        DisruptorCrate { producer: Some(producer), progress, next: 0 }
    }
}

impl Pipeline for DisruptorCrate {
    fn burst(&mut self, n: usize) {
        if let Some(p) = self.producer.as_mut() {
            p(n, self.next);
        }
        self.next += n as u64;
        wait_handled(&self.progress, self.next);
    }
}

impl Drop for DisruptorCrate {
    fn drop(&mut self) {
        // Dropping the producer stops and joins the crate's threads.
        self.producer.take();
    }
}

/// One bounded queue per shard: `send(shard, value)` blocks or spins while full.
struct Queues {
    send: Box<dyn FnMut(usize, u64)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    progress: Progress,
    next: u64,
    consumers: usize,
}

impl Queues {
    fn crossbeam_channel(consumers: usize) -> Queues {
        Queues::channels(
            consumers,
            || crossbeam_channel::bounded::<u64>(CAPACITY),
            |tx, v| tx.send(v).is_ok(),
            |rx| rx.recv().ok(),
            |rx| rx.try_recv().ok(),
        )
    }

    fn std_sync_channel(consumers: usize) -> Queues {
        Queues::channels(
            consumers,
            || std::sync::mpsc::sync_channel::<u64>(CAPACITY),
            |tx, v| tx.send(v).is_ok(),
            |rx| rx.recv().ok(),
            |rx| rx.try_recv().ok(),
        )
    }

    /// One bounded channel per shard; a consumer blocks for one value, then drains what is there.
    fn channels<S: Send + 'static, R: Send + 'static>(
        consumers: usize,
        make: impl Fn() -> (S, R),
        send: fn(&S, u64) -> bool,
        recv: fn(&R) -> Option<u64>,
        try_recv: fn(&R) -> Option<u64>,
    ) -> Queues {
        let progress = progress(consumers);
        let stop = Arc::new(AtomicBool::new(false));
        let (senders, threads): (Vec<_>, Vec<_>) = (0..consumers)
            .map(|i| {
                let (tx, rx) = make();
                let progress = progress.clone();
                let t = thread::spawn(move || {
                    let (mut handled, mut acc) = (0u64, 0u64);
                    while let Some(v) = recv(&rx) {
                        acc = acc.wrapping_add(v);
                        handled += 1;
                        while let Some(v) = try_recv(&rx) {
                            acc = acc.wrapping_add(v);
                            handled += 1;
                        }
                        progress[i].store(handled, Ordering::Release);
                    }
                    black_box(acc);
                });
                (tx, t)
            })
            .unzip();
        let mut senders = Some(senders);
        let send = Box::new(move |shard: usize, v: u64| {
            if shard == usize::MAX {
                senders.take(); // disconnect: the consumers' `recv` ends
            } else if let Some(s) = senders.as_ref() {
                assert!(send(&s[shard], v), "consumer {shard} went away");
            }
        });
        Queues { send, stop, threads, progress, next: 0, consumers }
    }

    fn array_queue(consumers: usize) -> Queues {
        let progress = progress(consumers);
        let stop = Arc::new(AtomicBool::new(false));
        let queues: Vec<Arc<crossbeam_queue::ArrayQueue<u64>>> =
            (0..consumers).map(|_| Arc::new(crossbeam_queue::ArrayQueue::new(CAPACITY))).collect();
        let threads = queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (q, progress, stop) = (q.clone(), progress.clone(), stop.clone());
                thread::spawn(move || {
                    let (mut handled, mut acc, mut idle) = (0u64, 0u64, 0u32);
                    loop {
                        let before = handled;
                        while let Some(v) = q.pop() {
                            acc = acc.wrapping_add(v);
                            handled += 1;
                        }
                        if handled != before {
                            progress[i].store(handled, Ordering::Release);
                            idle = 0;
                        } else if stop.load(Ordering::Acquire) {
                            break;
                        } else {
                            idle += 1;
                            if idle < 100 {
                                spin_loop();
                            } else {
                                thread::yield_now();
                            }
                        }
                    }
                    black_box(acc);
                })
            })
            .collect();
        let send = Box::new(move |shard: usize, v: u64| {
            if shard == usize::MAX {
                return;
            }
            let mut v = v;
            while let Err(back) = queues[shard].push(v) {
                v = back;
                thread::yield_now();
            }
        });
        Queues { send, stop, threads, progress, next: 0, consumers }
    }
}

impl Pipeline for Queues {
    fn burst(&mut self, n: usize) {
        let k = self.consumers as u64;
        for v in self.next..self.next + n as u64 {
            (self.send)((v % k) as usize, v);
        }
        self.next += n as u64;
        wait_handled(&self.progress, self.next);
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        (self.send)(usize::MAX, 0);
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

fn pipeline(name: &str, consumers: usize) -> Box<dyn Pipeline> {
    match name {
        "wick_ring" => Box::new(WickRing::new(consumers, WaitStrategy::Yielding)),
        "wick_ring_busy_spin" => Box::new(WickRing::new(consumers, WaitStrategy::BusySpin)),
        "disruptor_crate" => Box::new(DisruptorCrate::new(consumers)),
        "crossbeam_channel" => Box::new(Queues::crossbeam_channel(consumers)),
        "array_queue" => Box::new(Queues::array_queue(consumers)),
        "std_sync_channel" => Box::new(Queues::std_sync_channel(consumers)),
        other => panic!("unknown pipeline {other}"),
    }
}

fn ring_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    for consumers in [1usize, 4] {
        for burst in [1usize, 10, 100] {
            group.throughput(Throughput::Elements(burst as u64));
            for name in ["wick_ring", "wick_ring_busy_spin", "disruptor_crate", "crossbeam_channel", "array_queue", "std_sync_channel"] {
                let mut p = pipeline(name, consumers);
                group.bench_function(BenchmarkId::new(name, format!("c{consumers}_b{burst}")), |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            p.burst(burst);
                        }
                        start.elapsed()
                    })
                });
            }
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    ring_benches(&mut c);
    c.final_summary();
}
