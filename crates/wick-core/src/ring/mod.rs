//! A pre-allocated single-producer, multi-consumer ring in the style of the LMAX Disruptor.
//!
//! The algorithm is the Disruptor's (M. Thompson, D. Farley, M. Barker, P. Gee, A. Stewart,
//! "Disruptor: High performance alternative to bounded queues for exchanging data between
//! concurrent threads", LMAX, 2011): a power-of-two array of slots allocated once, a producer
//! *cursor* holding the highest published sequence, and one *gating sequence* per consumer holding
//! the highest sequence it has finished with. Every consumer sees every event (the Disruptor's
//! parallel handlers; a consumer skips the events of other shards), reads all that is available
//! in one batch, then publishes its progress once. The producer claims slots only when every
//! consumer has passed them, so nothing is ever overwritten: a full ring makes the producer wait
//! (backpressure, never loss). Counters sit on their own cache lines to avoid false sharing.
//!
//! Wait strategies, as in the Disruptor: busy-spin (lowest latency, burns a core), yielding
//! (spins briefly, then yields the thread for as long as it waits: a waiting thread still takes a
//! core when nothing else wants it), blocking (consumers sleep on a condition variable that the
//! producer signals only when someone sleeps) and phased, the default (the Disruptor's
//! `PhasedBackoffWaitStrategy`: spin for a while, then yield for a while, then sleep like
//! blocking). Phased keeps a busy consumer off the condition variable (under load the next batch
//! arrives within the spin or yield phase) and costs an idle one nothing once it sleeps, a
//! fraction of a millisecond after the ring went quiet.
//!
//! Sleeping loses no wake-up: a consumer announces it sleeps (`sleeping`) and looks at the cursor
//! again under the lock before waiting; the producer stores the cursor, then wakes everyone if the
//! announcement is up. A `SeqCst` fence on each side between its store and its load makes one of
//! the two see the other. A producer facing a full ring never sleeps on the condition variable
//! (consumers would have to signal every batch they finish): under phased it spins, yields, then
//! sleeps in naps growing from [`MIN_NAP`] to [`MAX_NAP`].
//!
//! Shutdown: dropping the [`Producer`] closes the ring; consumers drain every published event and
//! then get [`RingClosed`]. Dropping a [`Consumer`] abandons the ring; the producer gets
//! [`RingClosed`] as soon as it would have to wait for the missing consumer.
//!
//! This module holds the only `unsafe` code of the workspace: the slot accesses, whose exclusion
//! is guaranteed by the sequence protocol above. It is model-checked with loom (`tests/loom_ring.rs`).
#![allow(unsafe_code)]

mod sync;

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;
#[cfg(not(loom))]
use std::time::Instant;

use crossbeam_utils::CachePadded;

use self::sync::{fence, sleep, spin_hint, yield_now, Arc, AtomicBool, AtomicI64, Condvar, Mutex, UnsafeCell};

/// How a thread waits for the ring.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitStrategy {
    /// Spin on the counter: lowest latency, one core per waiting thread.
    BusySpin,
    /// Spin a little, then yield the thread: a waiting thread takes a core unless another wants it.
    Yielding,
    /// Consumers sleep until the producer publishes; the producer yields while the ring is full.
    Blocking,
    /// Spin for `spin_for`, then yield for up to `yield_for`, then sleep: consumers as under
    /// [`WaitStrategy::Blocking`], the producer (full ring) in naps of at most [`MAX_NAP`].
    /// The default, with [`WaitStrategy::PHASED_SPIN`] and [`WaitStrategy::PHASED_YIELD`].
    Phased { spin_for: Duration, yield_for: Duration },
}

impl WaitStrategy {
    /// The default spin phase of [`WaitStrategy::Phased`]: short, because a spinning thread holds
    /// a core that the thread it waits for may need when threads outnumber cores (as on a 2-core
    /// machine running the producer, two consumers and more: there a 20 µs spin made the ring
    /// markedly slower than 2 µs); on an otherwise idle core, yielding returns nearly at once.
    pub const PHASED_SPIN: Duration = Duration::from_micros(2);
    /// The default yield phase of [`WaitStrategy::Phased`]: longer than the gap between two
    /// batches of a busy feed, so a busy consumer never reaches the condition variable, and an
    /// idle one sleeps within `PHASED_SPIN + PHASED_YIELD` (about 0.2 ms) of the ring going quiet.
    pub const PHASED_YIELD: Duration = Duration::from_micros(200);

    /// Whether consumers may sleep on the condition variable, so the producer must wake them.
    fn consumers_sleep(self) -> bool {
        matches!(self, WaitStrategy::Blocking | WaitStrategy::Phased { .. })
    }
}

impl Default for WaitStrategy {
    fn default() -> WaitStrategy {
        WaitStrategy::Phased { spin_for: WaitStrategy::PHASED_SPIN, yield_for: WaitStrategy::PHASED_YIELD }
    }
}

/// The other side of the ring is gone: the producer closed it (consumer side, after every
/// published event was handed out) or a consumer abandoned it (producer side).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("the ring is closed")]
pub struct RingClosed;

/// Why a ring could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring capacity {0} is not a power of two of at least 2")]
    Capacity(usize),
    #[error("a ring needs at least one consumer")]
    NoConsumers,
}

/// Spins before yielding under [`WaitStrategy::Yielding`]; under loom, also the length of each
/// phase of [`WaitStrategy::Phased`] that is not zero (loom has no clock, and few tries keep the
/// interleavings countable).
const SPIN_TRIES: u32 = if cfg!(loom) { 1 } else { 100 };

/// The first nap of a producer waiting under [`WaitStrategy::Phased`] past its spin and yield
/// phases; each further nap is twice as long, up to [`MAX_NAP`].
pub const MIN_NAP: Duration = Duration::from_micros(50);
/// The longest nap of a producer waiting for a full ring under [`WaitStrategy::Phased`]: the
/// longest it can be late to a freed slot, small beside the time consumers take for a full ring.
pub const MAX_NAP: Duration = Duration::from_millis(1);

/// A spin phase looks at the clock once every this many spins (a clock read costs a few spins).
#[cfg(not(loom))]
const SPINS_PER_CLOCK_READ: u32 = 16;

/// Where a waiting thread is in the phases of [`WaitStrategy::Phased`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Spin,
    Yield,
    Sleep,
}

/// One wait's progress through [`WaitStrategy::Phased`], measured from its first [`Phases::next`]
/// (no clock read while the ring has what the thread waits for).
struct Phases {
    spin_for: Duration,
    yield_for: Duration,
    phase: Phase,
    tries: u32,
    #[cfg(not(loom))]
    started: Option<Instant>,
}

impl Phases {
    fn new(spin_for: Duration, yield_for: Duration) -> Phases {
        Phases {
            spin_for,
            yield_for,
            phase: Phase::Spin,
            tries: 0,
            #[cfg(not(loom))]
            started: None,
        }
    }

    /// How to wait this time round; once asleep, always asleep (until the wait ends).
    fn next(&mut self) -> Phase {
        if self.phase != Phase::Sleep {
            self.tries = self.tries.saturating_add(1);
            self.phase = self.current();
        }
        self.phase
    }

    #[cfg(not(loom))]
    fn current(&mut self) -> Phase {
        let started = match self.started {
            Some(_) if self.phase == Phase::Spin && self.tries % SPINS_PER_CLOCK_READ != 0 => return Phase::Spin,
            Some(started) => started,
            None => *self.started.insert(Instant::now()),
        };
        let waited = started.elapsed();
        if waited < self.spin_for {
            Phase::Spin
        } else if waited < self.spin_for.saturating_add(self.yield_for) {
            Phase::Yield
        } else {
            Phase::Sleep
        }
    }

    #[cfg(loom)]
    fn current(&mut self) -> Phase {
        let tries_of = |d: Duration| if d.is_zero() { 0 } else { SPIN_TRIES };
        let (spins, yields) = (tries_of(self.spin_for), tries_of(self.yield_for));
        if self.tries <= spins {
            Phase::Spin
        } else if self.tries <= spins + yields {
            Phase::Yield
        } else {
            Phase::Sleep
        }
    }
}

struct Shared<T> {
    slots: Box<[UnsafeCell<T>]>,
    mask: i64,
    /// Highest published sequence; -1 before the first.
    cursor: CachePadded<AtomicI64>,
    /// Per consumer: the highest sequence it has finished with.
    gates: Box<[CachePadded<AtomicI64>]>,
    closed: CachePadded<AtomicBool>,
    abandoned: CachePadded<AtomicBool>,
    wait: WaitStrategy,
    /// Blocking and phased strategies only: set by a consumer about to sleep. Written only
    /// under `lock`.
    sleeping: CachePadded<AtomicBool>,
    lock: Mutex<()>,
    wakeup: Condvar,
}

// SAFETY: the slots are shared between the producer thread (writes) and the consumer threads
// (shared reads); the sequence protocol guarantees that a slot is never written while it is read.
// Writing moves `T` values across threads (`T: Send`) and consumers read them concurrently
// through shared references (`T: Sync`).
unsafe impl<T: Send + Sync> Sync for Shared<T> {}
// SAFETY: as above; the ring owns its `T`s and may drop them on any thread.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Shared<T> {
    fn min_gate(&self) -> i64 {
        self.gates.iter().map(|g| g.load(Acquire)).min().unwrap_or(i64::MAX)
    }

    fn capacity(&self) -> i64 {
        self.mask + 1
    }

    #[inline(always)]
    fn slot(&self, sequence: i64) -> &UnsafeCell<T> {
        let index = (sequence & self.mask) as usize;
        debug_assert!(index < self.slots.len());
        // SAFETY: `mask` is `slots.len() - 1` for a power-of-two length (checked in `ring`), so
        // `sequence & mask` is always a valid index. This skips a bounds check per event.
        unsafe { self.slots.get_unchecked(index) }
    }

    /// Called after storing the cursor: wakes the consumers that announced they sleep. The fence
    /// pairs with the one in [`sleep_until_published`]: whichever of the two comes second in their
    /// single total order, its thread sees the other's store (the announcement, or the cursor), so
    /// no consumer sleeps through a publish. (`SeqCst` fences rather than `SeqCst` accesses: loom
    /// models the fences exactly but treats `SeqCst` accesses as acquire/release.)
    fn wake_sleepers(&self) {
        fence(SeqCst);
        if self.sleeping.load(Relaxed) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleeping.store(false, Relaxed);
            self.wakeup.notify_all();
        }
    }
}

/// Builds a ring of `capacity` slots (a power of two), each made by `init`, for `consumers` consumers.
pub fn ring<T: Send + Sync>(
    capacity: usize,
    consumers: usize,
    wait: WaitStrategy,
    mut init: impl FnMut() -> T,
) -> Result<(Producer<T>, Vec<Consumer<T>>), RingError> {
    if capacity < 2 || !capacity.is_power_of_two() || i64::try_from(capacity).is_err() {
        return Err(RingError::Capacity(capacity));
    }
    if consumers == 0 {
        return Err(RingError::NoConsumers);
    }
    let shared = Arc::new(Shared {
        slots: (0..capacity).map(|_| UnsafeCell::new(init())).collect(),
        mask: capacity as i64 - 1,
        cursor: CachePadded::new(AtomicI64::new(-1)),
        gates: (0..consumers).map(|_| CachePadded::new(AtomicI64::new(-1))).collect(),
        closed: CachePadded::new(AtomicBool::new(false)),
        abandoned: CachePadded::new(AtomicBool::new(false)),
        wait,
        sleeping: CachePadded::new(AtomicBool::new(false)),
        lock: Mutex::new(()),
        wakeup: Condvar::new(),
    });
    let consumers = (0..consumers).map(|index| Consumer { shared: shared.clone(), index, next: 0 }).collect();
    Ok((Producer { shared, next: 0, clear_up_to: -1 }, consumers))
}

/// The single publishing side of a ring.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// The next sequence to publish.
    next: i64,
    /// Highest sequence known to be free of consumers, cached to avoid reading every gate.
    clear_up_to: i64,
}

impl<T> Producer<T> {
    /// Publishes one event, written in place into a pre-allocated slot; waits while the ring is full.
    #[inline]
    pub fn publish(&mut self, write: impl FnOnce(&mut T)) -> Result<(), RingClosed> {
        let mut write = Some(write);
        self.publish_batch(1, |_, slot| {
            if let Some(w) = write.take() {
                w(slot);
            }
        })
    }

    /// Publishes `count` events made visible together; `write(i, slot)` fills the `i`-th.
    /// Batches larger than the ring are published in ring-sized parts.
    pub fn publish_batch(&mut self, count: usize, mut write: impl FnMut(usize, &mut T)) -> Result<(), RingClosed> {
        let capacity = self.shared.capacity();
        let mut done = 0usize;
        while done < count {
            let n = i64::try_from(count - done).unwrap_or(i64::MAX).min(capacity);
            let last = self.next + n - 1;
            self.wait_for_space(last)?;
            for (i, sequence) in (self.next..=last).enumerate() {
                self.shared.slot(sequence).with_mut(|slot| {
                    // SAFETY: every consumer's gate is at least `last - capacity` (checked by
                    // `wait_for_space`, with Acquire loads that pair with the consumers' Release
                    // stores), so no consumer reads this slot any more; and no consumer reads
                    // `sequence` before the Release store of the cursor below. The producer is
                    // unique (`&mut self`), so this is the only reference to the slot.
                    write(done + i, unsafe { &mut *slot })
                });
            }
            self.publish_through(last);
            done += n as usize;
        }
        Ok(())
    }

    fn publish_through(&mut self, last: i64) {
        self.shared.cursor.store(last, Release);
        if self.shared.wait.consumers_sleep() {
            self.shared.wake_sleepers();
        }
        self.next = last + 1;
    }

    fn wait_for_space(&mut self, last: i64) -> Result<(), RingClosed> {
        let wrap = last - self.shared.capacity();
        if self.clear_up_to >= wrap {
            return Ok(());
        }
        let mut tries = 0u32;
        let mut phases = match self.shared.wait {
            WaitStrategy::Phased { spin_for, yield_for } => Some(Phases::new(spin_for, yield_for)),
            _ => None,
        };
        let mut nap = MIN_NAP;
        loop {
            let min = self.shared.min_gate();
            self.clear_up_to = min;
            if min >= wrap {
                return Ok(());
            }
            if self.shared.abandoned.load(Acquire) {
                return Err(RingClosed);
            }
            match (self.shared.wait, phases.as_mut().map(Phases::next)) {
                (WaitStrategy::BusySpin, _) | (_, Some(Phase::Spin)) => spin_hint(),
                (_, Some(Phase::Yield)) => yield_now(),
                (_, Some(Phase::Sleep)) => {
                    // Consumers do not signal freed slots (that would cost every batch they
                    // finish), so a producer past its yield phase sleeps in growing naps.
                    sleep(nap);
                    nap = nap.saturating_mul(2).min(MAX_NAP);
                }
                (WaitStrategy::Yielding | WaitStrategy::Blocking, None) if tries < SPIN_TRIES => {
                    tries += 1;
                    spin_hint();
                }
                _ => yield_now(),
            }
        }
    }

    /// Events published and not yet handled by the slowest consumer.
    pub fn occupancy(&self) -> usize {
        occupancy(&self.shared)
    }

    /// A handle that reads the occupancy from any thread, for metrics.
    pub fn gauge(&self) -> RingGauge<T> {
        RingGauge { shared: self.shared.clone() }
    }

    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }
}

fn occupancy<T>(shared: &Shared<T>) -> usize {
    let published = shared.cursor.load(Acquire);
    usize::try_from(published - shared.min_gate().min(published)).unwrap_or(0)
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, SeqCst);
        let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wakeup.notify_all();
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("next", &self.next).field("capacity", &self.shared.slots.len()).finish()
    }
}

/// One consuming side of a ring; every consumer sees every event.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    index: usize,
    /// The next sequence to handle.
    next: i64,
}

impl<T> Consumer<T> {
    /// Waits for at least one event, then hands every available event to `handle` in order, and
    /// returns how many. Returns [`RingClosed`] once the producer is gone and everything is handled.
    pub fn poll(&mut self, handle: impl FnMut(&T)) -> Result<usize, RingClosed> {
        let available = self.wait_for(self.next)?;
        Ok(self.handle_through(available, handle))
    }

    /// Like [`Consumer::poll`], but returns `Ok(0)` at once when nothing is available.
    pub fn try_poll(&mut self, handle: impl FnMut(&T)) -> Result<usize, RingClosed> {
        let available = self.shared.cursor.load(Acquire);
        if available < self.next {
            return if self.shared.closed.load(Acquire) && self.shared.cursor.load(Acquire) < self.next { Err(RingClosed) } else { Ok(0) };
        }
        Ok(self.handle_through(available, handle))
    }

    fn handle_through(&mut self, available: i64, mut handle: impl FnMut(&T)) -> usize {
        for sequence in self.next..=available {
            self.shared.slot(sequence).with(|slot| {
                // SAFETY: `sequence <= cursor` (Acquire load pairing with the producer's Release
                // store after writing), and the producer does not write this slot again until this
                // consumer's gate passes `sequence`, which happens only after this loop.
                handle(unsafe { &*slot })
            });
        }
        self.shared.gates[self.index].store(available, Release);
        let handled = available - self.next + 1;
        self.next = available + 1;
        handled as usize
    }

    fn wait_for(&self, sequence: i64) -> Result<i64, RingClosed> {
        let shared = &*self.shared;
        let mut tries = 0u32;
        let mut phases = match shared.wait {
            WaitStrategy::Phased { spin_for, yield_for } => Some(Phases::new(spin_for, yield_for)),
            _ => None,
        };
        loop {
            let available = shared.cursor.load(Acquire);
            if available >= sequence {
                return Ok(available);
            }
            if shared.closed.load(Acquire) {
                // The cursor was stored before `closed`: look once more, then give up.
                let available = shared.cursor.load(Acquire);
                return if available >= sequence { Ok(available) } else { Err(RingClosed) };
            }
            match (shared.wait, phases.as_mut().map(Phases::next)) {
                (WaitStrategy::BusySpin, _) | (_, Some(Phase::Spin)) => spin_hint(),
                (_, Some(Phase::Yield)) => yield_now(),
                (_, Some(Phase::Sleep)) => sleep_until_published(shared, sequence),
                (_, None) if tries < SPIN_TRIES => {
                    tries += 1;
                    spin_hint();
                }
                (WaitStrategy::Blocking, None) => sleep_until_published(shared, sequence),
                _ => yield_now(),
            }
        }
    }

    /// Events published and not yet handled by this consumer.
    pub fn lag(&self) -> usize {
        usize::try_from(self.shared.cursor.load(Relaxed) - self.next + 1).unwrap_or(0)
    }

    /// Which consumer of the ring this is, from 0.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Sleeps on the condition variable until the producer publishes `sequence` or closes the ring
/// (or a spurious wake-up: the caller looks again).
fn sleep_until_published<T>(shared: &Shared<T>, sequence: i64) {
    let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.sleeping.store(true, Relaxed);
    // Look again after the fence (see `Shared::wake_sleepers`): the producer either sees the
    // announcement and notifies under the lock, so after we wait, or published before it and we
    // see its cursor here. `closed` is stored before the producer notifies under the lock.
    fence(SeqCst);
    if shared.cursor.load(Acquire) < sequence && !shared.closed.load(Acquire) {
        drop(shared.wakeup.wait(guard).unwrap_or_else(|e| e.into_inner()));
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("index", &self.index).field("next", &self.next).finish()
    }
}

/// Reads a ring's occupancy from any thread.
pub struct RingGauge<T> {
    shared: Arc<Shared<T>>,
}

impl<T> RingGauge<T> {
    pub fn occupancy(&self) -> usize {
        occupancy(&self.shared)
    }
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }
}

impl<T> Clone for RingGauge<T> {
    fn clone(&self) -> Self {
        RingGauge { shared: self.shared.clone() }
    }
}

impl<T> fmt::Debug for RingGauge<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingGauge").field("occupancy", &self.occupancy()).field("capacity", &self.capacity()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn refuses_bad_shapes() {
        assert_eq!(ring(3, 1, WaitStrategy::Yielding, || 0u64).unwrap_err(), RingError::Capacity(3));
        assert_eq!(ring(1, 1, WaitStrategy::Yielding, || 0u64).unwrap_err(), RingError::Capacity(1));
        assert_eq!(ring(4, 0, WaitStrategy::Yielding, || 0u64).unwrap_err(), RingError::NoConsumers);
    }

    fn run(wait: WaitStrategy, consumers: usize, capacity: usize, total: u64, batch: usize) {
        let (mut producer, consumers) = ring(capacity, consumers, wait, || 0u64).unwrap();
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
        let mut next = 0u64;
        while next < total {
            let n = batch.min((total - next) as usize);
            producer.publish_batch(n, |i, slot| *slot = next + i as u64).unwrap();
            next += n as u64;
        }
        drop(producer);
        for h in handles {
            let seen = h.join().unwrap();
            assert_eq!(seen, (0..total).collect::<Vec<_>>());
        }
    }

    /// Phased with no spin or yield phase: every wait goes straight to sleep.
    const SLEEPY: WaitStrategy = WaitStrategy::Phased { spin_for: Duration::ZERO, yield_for: Duration::ZERO };

    #[test]
    fn every_consumer_sees_every_event_in_order() {
        for wait in [WaitStrategy::BusySpin, WaitStrategy::Yielding, WaitStrategy::Blocking, WaitStrategy::default(), SLEEPY] {
            run(wait, 1, 8, 10_000, 1);
            run(wait, 3, 16, 10_000, 7);
            run(wait, 2, 4, 5_000, 100); // batches larger than the ring
        }
    }

    #[test]
    fn phased_consumers_see_every_event_while_the_producer_waits_for_a_tiny_ring() {
        // More threads than this machine has cores, so both sides wait through every phase.
        let spin_only = WaitStrategy::Phased { spin_for: Duration::from_micros(1), yield_for: Duration::ZERO };
        for wait in [WaitStrategy::default(), SLEEPY, spin_only] {
            run(wait, 4, 2, 5_000, 1);
            run(wait, 4, 2, 1_000, 3);
        }
    }

    #[test]
    fn phased_is_the_default() {
        assert_eq!(
            WaitStrategy::default(),
            WaitStrategy::Phased { spin_for: Duration::from_micros(2), yield_for: Duration::from_micros(200) }
        );
    }

    #[test]
    fn phases_spin_then_yield_then_sleep() {
        let hour = Duration::from_secs(3600);
        let mut spinning = Phases::new(hour, hour);
        assert!((0..100).all(|_| spinning.next() == Phase::Spin));
        let mut yielding = Phases::new(Duration::ZERO, hour);
        assert!((0..100).all(|_| yielding.next() == Phase::Yield));
        let mut sleeping = Phases::new(Duration::ZERO, Duration::ZERO);
        assert!((0..100).all(|_| sleeping.next() == Phase::Sleep));
        // Past both phases, a wait sleeps and stays asleep.
        let mut short = Phases::new(Duration::from_micros(1), Duration::from_micros(1));
        let phases: Vec<Phase> = std::iter::repeat_with(|| short.next()).take_while(|p| *p != Phase::Sleep).collect();
        assert!(phases.windows(2).all(|w| w[0] == w[1] || (w[0], w[1]) == (Phase::Spin, Phase::Yield)), "{phases:?}");
        assert!((0..100).all(|_| short.next() == Phase::Sleep));
    }

    /// Waits until a consumer announced that it sleeps on the condition variable.
    fn until_a_consumer_sleeps<T>(producer: &Producer<T>) {
        while !producer.shared.sleeping.load(SeqCst) {
            thread::yield_now();
        }
    }

    #[test]
    fn an_idle_phased_consumer_sleeps_and_the_producer_wakes_it() {
        for wait in [WaitStrategy::default(), SLEEPY] {
            let (mut producer, mut consumers) = ring(4, 1, wait, || 0u32).unwrap();
            let mut consumer = consumers.pop().unwrap();
            let t = thread::spawn(move || {
                let mut seen = Vec::new();
                consumer.poll(|v| seen.push(*v)).unwrap();
                seen
            });
            until_a_consumer_sleeps(&producer);
            producer.publish(|s| *s = 7).unwrap();
            assert_eq!(t.join().unwrap(), vec![7], "{wait:?}");
            assert!(!producer.shared.sleeping.load(SeqCst), "the producer took the announcement down");
        }
    }

    #[test]
    fn sleeping_phased_consumers_wake_when_the_producer_closes() {
        let (producer, consumers) = ring(4, 2, SLEEPY, || 0u32).unwrap();
        let handles: Vec<_> = consumers.into_iter().map(|mut c| thread::spawn(move || c.poll(|_| {}))).collect();
        until_a_consumer_sleeps(&producer);
        drop(producer);
        for h in handles {
            assert_eq!(h.join().unwrap(), Err(RingClosed));
        }
    }

    #[test]
    fn a_phased_producer_naps_on_a_full_ring_and_loses_nothing() {
        let (mut producer, mut consumers) = ring(4, 1, SLEEPY, || 0u32).unwrap();
        let mut consumer = consumers.pop().unwrap();
        let t = thread::spawn(move || {
            for i in 0..64 {
                producer.publish(|s| *s = i).unwrap(); // from the fifth on, waits for the consumer
            }
        });
        let mut seen = Vec::new();
        while let Ok(n) = consumer.poll(|v| seen.push(*v)) {
            assert!(n <= 4, "the ring never holds more than its capacity");
            // A slow consumer, so the producer goes through its naps.
            thread::sleep(Duration::from_millis(1));
        }
        t.join().unwrap();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn full_ring_makes_the_producer_wait_and_loses_nothing() {
        let (mut producer, mut consumers) = ring(4, 1, WaitStrategy::Yielding, || 0u32).unwrap();
        for i in 0..4 {
            producer.publish(|s| *s = i).unwrap();
        }
        assert_eq!(producer.occupancy(), 4);
        let mut consumer = consumers.pop().unwrap();
        let t = thread::spawn(move || {
            producer.publish(|s| *s = 4).unwrap(); // blocks until the consumer frees a slot
            producer.occupancy()
        });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            consumer.poll(|v| seen.push(*v)).unwrap();
        }
        assert!(t.join().unwrap() <= 4, "the ring never holds more than its capacity");
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(consumer.poll(|_| {}), Err(RingClosed));
    }

    #[test]
    fn abandoned_ring_stops_the_producer_instead_of_hanging() {
        let (mut producer, consumers) = ring(2, 2, WaitStrategy::Yielding, || 0u8).unwrap();
        drop(consumers);
        producer.publish(|_| {}).unwrap();
        producer.publish(|_| {}).unwrap();
        assert_eq!(producer.publish(|_| {}), Err(RingClosed));
    }

    #[test]
    fn try_poll_does_not_wait() {
        let (mut producer, mut consumers) = ring(4, 1, WaitStrategy::Blocking, || 0u8).unwrap();
        let gauge = producer.gauge();
        assert_eq!(consumers[0].try_poll(|_| {}), Ok(0));
        producer.publish(|s| *s = 9).unwrap();
        assert_eq!((gauge.occupancy(), gauge.capacity(), consumers[0].lag()), (1, 4, 1));
        let mut got = 0;
        assert_eq!(consumers[0].try_poll(|v| got = *v), Ok(1));
        assert_eq!((got, gauge.occupancy()), (9, 0));
        drop(producer);
        assert_eq!(consumers[0].try_poll(|_| {}), Err(RingClosed));
    }
}
