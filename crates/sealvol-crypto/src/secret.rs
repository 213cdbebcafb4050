//! Secret byte buffers.

/// Key material: zeroized on drop, mlocked when `RLIMIT_MEMLOCK` allows, and printed by
/// `Debug` only as its length. The bytes are reachable only through [`SecretBytes::expose`]
/// and [`SecretBytes::expose_mut`], so every use of the raw key is a visible call.
pub struct SecretBytes {
    _todo: (),
}

impl SecretBytes {
    /// A zero-filled secret of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        let _ = len;
        todo!()
    }
    /// Takes ownership of `v` without copying it (the Vec's buffer becomes the secret).
    pub fn from_vec(v: Vec<u8>) -> Self {
        let _ = v;
        todo!()
    }
    /// Copies `b` into a new secret.
    pub fn from_slice(b: &[u8]) -> Self {
        let _ = b;
        todo!()
    }
    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> crate::Result<Self> {
        let _ = len;
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The secret bytes. Callers must not copy them into non-secret storage.
    pub fn expose(&self) -> &[u8] {
        todo!()
    }
    pub fn expose_mut(&mut self) -> &mut [u8] {
        todo!()
    }
    /// An explicit copy (secrets are not `Clone`, so copies are visible in code).
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose())
    }
    /// Constant-time equality.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        let _ = other;
        todo!()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.len())
    }
}
