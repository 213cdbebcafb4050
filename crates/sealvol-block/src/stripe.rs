//! Striped locks: a fixed table of mutexes indexed by a hash of a block number, so that
//! read-modify-write cycles of one block exclude each other without a lock per block.

use std::sync::{Mutex, MutexGuard};

/// Number of stripes: enough that unrelated blocks rarely share one.
const STRIPES: usize = 256;

/// A table of [`STRIPES`] mutexes.
#[derive(Debug)]
pub(crate) struct StripeLocks {
    stripes: Box<[Mutex<()>]>,
}

impl StripeLocks {
    pub(crate) fn new() -> Self {
        StripeLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks the stripe of block `block` (held until the guard drops).
    pub(crate) fn lock(&self, block: u64) -> MutexGuard<'_, ()> {
        self.stripes[Self::index(block)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl StripeLocks {
    /// Locks the stripes of two blocks (one lock when they share a stripe), in a fixed order
    /// so that two callers locking the same pair cannot deadlock.
    pub(crate) fn lock_pair(
        &self,
        a: u64,
        b: u64,
    ) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let (ia, ib) = (Self::index(a), Self::index(b));
        let get = |i: usize| self.stripes[i].lock().unwrap_or_else(|e| e.into_inner());
        match ia.cmp(&ib) {
            std::cmp::Ordering::Equal => (get(ia), None),
            std::cmp::Ordering::Less => {
                let first = get(ia);
                (first, Some(get(ib)))
            }
            std::cmp::Ordering::Greater => {
                let first = get(ib);
                (first, Some(get(ia)))
            }
        }
    }

    /// Fibonacci hashing spreads neighbouring blocks over the table.
    fn index(block: u64) -> usize {
        (block.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % STRIPES
    }
}
