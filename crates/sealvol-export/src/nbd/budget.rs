//! The server-wide bound on the bytes held for requests in flight: write payloads read and
//! not yet written, read replies not yet sent, across all connections.
//!
//! A connection's reader takes a [`Grant`] before it reads a write's payload or queues a
//! read; the grant carries the buffer and gives its bytes back when dropped (after the reply
//! went out, or when the connection ends with the request still queued). A request larger
//! than the whole budget still runs, alone. Freed buffers of up to [`POOL_MAX`] bytes are kept
//! for reuse (a fresh buffer costs page faults and zeroing on every request), and the bytes
//! they hold count against the budget too: held + pooled never exceeds the bound.
//!
//! Waiting for budget ends when bytes come back or when the caller's `cancelled` says so
//! (its connection failed, the server stops); the wait re-checks `cancelled` at least every
//! [`CANCEL_POLL`].

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Largest buffer kept for reuse: a request of the preferred maximum size.
pub(crate) const POOL_MAX: usize = super::proto::PREFERRED_MAX as usize;

/// How often a wait for budget looks at its `cancelled`.
pub(crate) const CANCEL_POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct State {
    /// Bytes granted and not given back.
    used: usize,
    /// Free buffers, each at most `POOL_MAX` bytes.
    pool: Vec<Vec<u8>>,
    /// Capacity held by `pool`.
    pooled: usize,
}

/// The bound and what is held against it.
#[derive(Debug)]
pub(crate) struct Budget {
    total: usize,
    state: Mutex<State>,
    freed: Condvar,
}

impl Budget {
    /// A budget of `total` bytes (at least 1).
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(Budget {
            total: total.max(1),
            state: Mutex::new(State {
                used: 0,
                pool: Vec::new(),
                pooled: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes granted now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.lock().used
    }

    /// Waits until `len` bytes fit (or nothing else is held), then grants them with a buffer
    /// of `len` bytes. `None` when `cancelled` turned true first.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        len: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Option<Grant> {
        let mut st = self.lock();
        loop {
            if cancelled() {
                return None;
            }
            if st.used == 0 || st.used + len <= self.total {
                break;
            }
            st = self
                .freed
                .wait_timeout(st, CANCEL_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // A pooled buffer that fits without wasting most of itself.
        let reuse = st
            .pool
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                let cap = b.capacity();
                cap >= len && cap / 4 <= len.max(1) && (st.used == 0 || st.used + cap <= self.total)
            })
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buf = match reuse {
            Some(i) => {
                let b = st.pool.swap_remove(i);
                st.pooled -= b.capacity();
                b
            }
            None => Vec::new(),
        };
        let held = buf.capacity().max(len);
        st.used += held;
        // Keep held + pooled within the bound: drop pooled buffers first.
        while st.used + st.pooled > self.total {
            match st.pool.pop() {
                Some(b) => st.pooled -= b.capacity(),
                None => break,
            }
        }
        drop(st);
        if buf.len() < len {
            buf.resize(len, 0); // zeroes only what was never used
        } else {
            buf.truncate(len);
        }
        Some(Grant {
            budget: Arc::clone(self),
            held,
            buf,
        })
    }

    /// Wakes every wait (a connection failed or the server stops: they re-check).
    pub(crate) fn wake_all(&self) {
        self.freed.notify_all();
    }
}

/// Bytes granted, with their buffer; given back when dropped.
#[derive(Debug)]
pub(crate) struct Grant {
    budget: Arc<Budget>,
    held: usize,
    /// The request's buffer: the write payload, or room for the read reply.
    pub(crate) buf: Vec<u8>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut st = self.budget.lock();
        st.used -= self.held;
        let cap = buf.capacity();
        if cap > 0 && cap <= POOL_MAX && st.used + st.pooled + cap <= self.budget.total {
            st.pooled += cap;
            st.pool.push(buf);
        }
        drop(st);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    #[test]
    fn grants_up_to_the_bound_then_waits_for_a_release() {
        let b = Budget::new(10);
        let never = || false;
        let g1 = b.acquire(6, &never).unwrap();
        assert_eq!(g1.buf.len(), 6);
        let g2 = b.acquire(4, &never).unwrap();
        assert_eq!(b.used(), 10);
        std::thread::scope(|s| {
            let t = s.spawn(|| b.acquire(3, &never).map(|g| g.buf.len()));
            std::thread::sleep(Duration::from_millis(100));
            assert!(!t.is_finished(), "waits while the budget is full");
            drop(g1);
            assert_eq!(t.join().unwrap(), Some(3));
        });
        drop(g2);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_request_larger_than_the_bound_runs_alone() {
        let b = Budget::new(10);
        let never = || false;
        let big = b.acquire(25, &never).unwrap();
        assert_eq!(big.buf.len(), 25);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let t = s.spawn(|| b.acquire(1, &|| stop.load(Ordering::SeqCst)).is_some());
            std::thread::sleep(Duration::from_millis(100));
            assert!(!t.is_finished());
            drop(big);
            assert!(t.join().unwrap());
        });
    }

    #[test]
    fn a_wait_ends_when_cancelled() {
        let b = Budget::new(10);
        let _g = b.acquire(10, &|| false).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let t0 = Instant::now();
                (
                    b.acquire(5, &|| stop.load(Ordering::SeqCst)).is_none(),
                    t0.elapsed(),
                )
            });
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::SeqCst);
            b.wake_all();
            let (none, waited) = t.join().unwrap();
            assert!(none);
            assert!(waited < Duration::from_secs(1));
        });
    }

    #[test]
    fn pooled_buffers_count_against_the_bound() {
        let b = Budget::new(100);
        let never = || false;
        let g = b.acquire(60, &never).unwrap();
        drop(g); // pooled: 60 (or its capacity)
        let g = b.acquire(50, &never).unwrap(); // reuses it
        assert!(g.buf.capacity() >= 60 && g.buf.len() == 50);
        let h = b.acquire(30, &never).unwrap();
        let st = b.lock();
        assert!(st.used + st.pooled <= 100, "{st:?}");
        drop(st);
        drop((g, h));
        let st = b.lock();
        assert_eq!(st.used, 0);
        assert!(st.pooled <= 100);
    }
}
