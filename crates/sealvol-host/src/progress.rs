//! How far a long copy is: import and export of plaintext, hash trees, verified reads.

/// Where a long copy reports. A closure `|done: u64| …` is one: it gets the running count of
/// bytes and ignores the total.
pub trait Progress {
    /// The copy starts: `total` bytes when known (a stream's length is not).
    fn start(&mut self, total: Option<u64>) {
        let _ = total;
    }

    /// `done` bytes so far.
    fn at(&mut self, done: u64);
}

impl<F: FnMut(u64)> Progress for F {
    fn at(&mut self, done: u64) {
        self(done)
    }
}
