//! A statistics counter with one writer at a time: the writer adds with a plain load and
//! store of an atomic (no locked instruction), any thread reads.
//!
//! "One writer at a time" means the increments are ordered: one thread (a vCPU's exit
//! counters), or whoever holds the lock of the device that owns the counter. A reader may see
//! a count a few increments behind, never a torn one.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
