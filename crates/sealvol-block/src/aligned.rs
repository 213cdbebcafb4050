//! Memory-aligned byte buffers (for `O_DIRECT`), in safe code: a `Vec` over-allocated by the
//! alignment, used from the first aligned byte.

/// A zero-filled buffer whose first byte is aligned to `align`.
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes aligned to `align` (a power of two).
    pub(crate) fn new(len: usize, align: usize) -> Self {
        debug_assert!(align.is_power_of_two());
        let raw = vec![0u8; len + align];
        let misalign = raw.as_ptr() as usize % align;
        let start = if misalign == 0 { 0 } else { align - misalign };
        AlignedBuf { raw, start, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// True when `buf` starts at a multiple of `align` and its length is one.
pub(crate) fn is_aligned(buf: &[u8], align: usize) -> bool {
    (buf.as_ptr() as usize) % align == 0 && buf.len() % align == 0
}
