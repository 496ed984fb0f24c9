//! The synchronization primitives of the ring: `std` normally, `loom`'s models under `--cfg loom`.

#[cfg(loom)]
pub(crate) use loom::{
    sync::atomic::{fence, AtomicBool, AtomicI64},
    sync::{Arc, Condvar, Mutex},
};
#[cfg(not(loom))]
pub(crate) use std::{
    sync::atomic::{fence, AtomicBool, AtomicI64},
    sync::{Arc, Condvar, Mutex},
};

/// A hint inside a spin loop. Under loom it yields, so the model checker can schedule the other threads.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Sleeps the thread for `duration`. Under loom, which has no clock, it yields.
pub(crate) fn sleep(duration: std::time::Duration) {
    #[cfg(loom)]
    {
        let _ = duration;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    std::thread::sleep(duration);
}

/// `UnsafeCell` with loom's closure-based access API, so loom can track every access.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
