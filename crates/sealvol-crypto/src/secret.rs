//! Secret byte buffers.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Key material: zeroized on drop, mlocked when `RLIMIT_MEMLOCK` allows, and printed by
/// `Debug` only as its length. The bytes are reachable only through [`SecretBytes::expose`]
/// and [`SecretBytes::expose_mut`], so every use of the raw key is a visible call.
///
/// Locking is best effort: `mlock` works on whole pages and does not nest, so when two
/// secrets share a page, dropping one unlocks the page for the other.
///
/// `SecretBytes` is deliberately not `Clone` (use [`SecretBytes::duplicate`]), has no
/// `Display` and no serde support. Its length is fixed at construction, so the buffer never
/// reallocates and leaves no stale copy behind.
///
/// ```
/// use sealvol_crypto::SecretBytes;
/// let key = SecretBytes::from_slice(b"0123456789abcdef");
/// assert_eq!(key.len(), 16);
/// assert!(!format!("{key:?}").contains("0123"));
/// ```
pub struct SecretBytes {
    /// The secret itself. Never resized after construction.
    buf: Box<[u8]>,
    /// Whether `mlock` succeeded on `buf` (then `munlock` runs on drop).
    locked: bool,
}

impl SecretBytes {
    /// Wraps an exactly-sized buffer and tries to lock it in memory.
    fn from_box(buf: Box<[u8]>) -> Self {
        let locked = crate::ffi::mlock(&buf);
        SecretBytes { buf, locked }
    }

    /// A zero-filled secret of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        Self::from_box(vec![0u8; len].into_boxed_slice())
    }

    /// Takes ownership of `v` without copying it (the Vec's buffer becomes the secret).
    ///
    /// If `v` has spare capacity, its bytes are moved into an exactly-sized buffer and the
    /// old allocation is zeroized (including the spare capacity) before it is freed, so no
    /// unzeroized copy is left on the heap.
    pub fn from_vec(mut v: Vec<u8>) -> Self {
        if v.len() == v.capacity() {
            return Self::from_box(v.into_boxed_slice());
        }
        let copy: Box<[u8]> = v.as_slice().into();
        // `Vec::zeroize` clears the initialized bytes and the spare capacity.
        v.zeroize();
        drop(v);
        Self::from_box(copy)
    }

    /// Copies `b` into a new secret.
    pub fn from_slice(b: &[u8]) -> Self {
        Self::from_box(b.into())
    }

    /// `len` bytes from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`](crate::Error::Random) when the system RNG fails.
    pub fn random(len: usize) -> crate::Result<Self> {
        let mut s = Self::zeroed(len);
        getrandom::fill(s.expose_mut()).map_err(|e| crate::Error::Random(e.to_string()))?;
        Ok(s)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the secret has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The secret bytes. Callers must not copy them into non-secret storage.
    pub fn expose(&self) -> &[u8] {
        &self.buf
    }

    /// The secret bytes, writable. The length cannot change.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// An explicit copy (secrets are not `Clone`, so copies are visible in code).
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose())
    }

    /// Constant-time equality (the lengths are compared in variable time; they are not
    /// secret).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.buf.len() == other.len() && bool::from(self.buf.as_ref().ct_eq(other))
    }

    /// Whether the buffer is currently mlocked (best effort; `false` when
    /// `RLIMIT_MEMLOCK` refused it or the secret is empty).
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.buf.zeroize();
        if self.locked {
            crate::ffi::munlock(&self.buf);
        }
    }
}

impl zeroize::ZeroizeOnDrop for SecretBytes {}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_only_the_length() {
        let s = SecretBytes::from_slice(&[0xAB; 32]);
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes([redacted; 32 bytes])");
        assert!(!d.to_ascii_lowercase().contains("ab"));
        assert!(!d.contains("171"));
        let s = SecretBytes::from_slice(b"hunter2-password");
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"));
    }

    #[test]
    fn constructors_hold_the_bytes() {
        assert_eq!(SecretBytes::zeroed(5).expose(), &[0u8; 5]);
        assert_eq!(SecretBytes::from_slice(b"abc").expose(), b"abc");
        let mut v = Vec::with_capacity(100);
        v.extend_from_slice(b"key bytes");
        let s = SecretBytes::from_vec(v);
        assert_eq!(s.expose(), b"key bytes");
        assert_eq!(SecretBytes::from_vec(b"exact".to_vec()).expose(), b"exact");
        let d = s.duplicate();
        assert_eq!(d.expose(), s.expose());
        assert!(SecretBytes::zeroed(0).is_empty());
    }

    #[test]
    fn random_is_random() {
        let a = SecretBytes::random(32).unwrap();
        let b = SecretBytes::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(!a.ct_eq(b.expose()));
        assert!(SecretBytes::random(0).unwrap().is_empty());
    }

    #[test]
    fn ct_eq_compares_contents_and_length() {
        let a = SecretBytes::from_slice(b"same");
        assert!(a.ct_eq(b"same"));
        assert!(!a.ct_eq(b"samE"));
        assert!(!a.ct_eq(b"sam"));
        assert!(!a.ct_eq(b"same!"));
    }

    #[test]
    fn expose_mut_writes_through() {
        let mut s = SecretBytes::zeroed(4);
        s.expose_mut().copy_from_slice(b"wxyz");
        assert_eq!(s.expose(), b"wxyz");
    }
}
