//! The only module with `unsafe`: aws-lc's XTS and CBC bindings and mlock/munlock.
//!
//! Everything here is a thin, safe wrapper: callers in the rest of the crate never see a raw
//! pointer. Each `unsafe` block says why its preconditions hold.

/// Locks the pages holding `buf` into RAM so the secret is not swapped out.
///
/// Returns whether the lock took effect. Failure (typically `RLIMIT_MEMLOCK`) is not an
/// error: the caller just remembers not to unlock. An empty buffer is never locked.
pub(crate) fn mlock(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    // SAFETY: `buf` is a live, initialized allocation of `buf.len()` bytes for the duration
    // of the call; mlock only changes page residency and never reads or writes the memory.
    unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) == 0 }
}

/// Undoes a successful [`mlock`] on the same buffer.
pub(crate) fn munlock(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: as for `mlock`: a live allocation of `buf.len()` bytes; munlock only changes
    // page residency. Its result is ignored: a failed unlock leaves the pages locked, which
    // is harmless, and the kernel drops all locks at exit.
    unsafe {
        libc::munlock(buf.as_ptr().cast(), buf.len());
    }
}

#[cfg(feature = "aws-lc")]
pub(crate) use awslc::{raw_xts256_encrypt, AesCbc, EvpXts};

#[cfg(feature = "aws-lc")]
mod awslc {
    use crate::{Error, Result};
    use aws_lc_sys as sys;
    use std::os::raw::c_int;
    use std::ptr::{self, NonNull};

    /// Drains aws-lc's thread-local error queue into a message for `Error::Backend`.
    fn backend_error(what: &str) -> Error {
        let mut reasons = Vec::new();
        loop {
            // SAFETY: ERR_get_error takes no arguments and only pops this thread's queue.
            let code = unsafe { sys::ERR_get_error() };
            if code == 0 {
                break;
            }
            let mut buf = [0u8; 256];
            // SAFETY: `buf` is writable for `buf.len()` bytes; ERR_error_string_n writes at
            // most that many bytes, always NUL-terminated.
            unsafe {
                sys::ERR_error_string_n(code, buf.as_mut_ptr().cast(), buf.len());
            }
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            reasons.push(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if reasons.is_empty() {
            Error::Backend(format!("aws-lc {what} failed"))
        } else {
            Error::Backend(format!("aws-lc {what} failed: {}", reasons.join("; ")))
        }
    }

    /// One owned `EVP_CIPHER_CTX` keyed for AES-256-XTS in one direction.
    struct Ctx(NonNull<sys::EVP_CIPHER_CTX>);

    impl Ctx {
        /// A context with `key` (64 bytes) set for encryption (`enc == 1`) or decryption
        /// (`enc == 0`), and no IV yet.
        fn new(key: &[u8], enc: c_int) -> Result<Self> {
            if key.len() != 64 {
                return Err(Error::KeyLength {
                    what: "aws-lc AES-256-XTS",
                    got: key.len(),
                    expected: "64",
                });
            }
            // SAFETY: EVP_CIPHER_CTX_new has no preconditions; it returns NULL on allocation
            // failure, which NonNull::new turns into an error.
            let raw = unsafe { sys::EVP_CIPHER_CTX_new() };
            let ctx = Ctx(NonNull::new(raw).ok_or_else(|| backend_error("EVP_CIPHER_CTX_new"))?);
            // SAFETY: `ctx` is a fresh, valid context; EVP_aes_256_xts returns a static
            // cipher; `key` points to 64 readable bytes, the cipher's key length (checked
            // above); aws-lc copies the key into its key schedule and keeps no pointer to it.
            let ok = unsafe {
                sys::EVP_CipherInit_ex(
                    ctx.0.as_ptr(),
                    sys::EVP_aes_256_xts(),
                    ptr::null_mut(),
                    key.as_ptr(),
                    ptr::null(),
                    enc,
                )
            };
            if ok != 1 {
                return Err(backend_error("EVP_CipherInit_ex (AES-256-XTS key setup)"));
            }
            // SAFETY: `ctx` is valid and has a cipher set. XTS has block size 1, so padding
            // never applies; turning it off just makes that explicit.
            if unsafe { sys::EVP_CIPHER_CTX_set_padding(ctx.0.as_ptr(), 0) } != 1 {
                return Err(backend_error("EVP_CIPHER_CTX_set_padding"));
            }
            Ok(ctx)
        }

        /// Transforms one data unit (sector) in place with `iv` as its tweak, in the
        /// direction the context was created with.
        fn sector(&mut self, data: &mut [u8], iv: &[u8; 16]) -> Result<()> {
            let len = c_int::try_from(data.len()).map_err(|_| {
                Error::Backend(format!("sector of {} bytes is too large", data.len()))
            })?;
            // SAFETY: the context is valid, keyed and exclusively borrowed through `&mut
            // self`; cipher, engine and key are NULL so only the IV changes (16 readable
            // bytes, copied by aws-lc); enc = -1 keeps the context's direction.
            let ok = unsafe {
                sys::EVP_CipherInit_ex(
                    self.0.as_ptr(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    iv.as_ptr(),
                    -1,
                )
            };
            if ok != 1 {
                return Err(backend_error("EVP_CipherInit_ex (XTS tweak)"));
            }
            let mut out_len: c_int = 0;
            let p = data.as_mut_ptr();
            // SAFETY: `p` points to `len` initialized, writable bytes that nothing else
            // borrows during the call. Input and output are the same pointer: aws-lc's XTS
            // supports exact in-place operation (out == in). With block size 1 and padding
            // off it writes exactly `len` bytes, which `out_len` confirms below.
            let ok = unsafe { sys::EVP_CipherUpdate(self.0.as_ptr(), p, &mut out_len, p, len) };
            if ok != 1 {
                return Err(backend_error("EVP_CipherUpdate (AES-XTS sector)"));
            }
            if out_len != len {
                return Err(Error::Backend(format!(
                    "aws-lc EVP_CipherUpdate wrote {out_len} bytes for a {len}-byte sector"
                )));
            }
            Ok(())
        }
    }

    impl Drop for Ctx {
        fn drop(&mut self) {
            // SAFETY: the pointer came from EVP_CIPHER_CTX_new, is owned by this value only
            // and is freed exactly once. EVP_CIPHER_CTX_free cleans up the cipher data with
            // OPENSSL_free, which cleanses the key schedule before freeing it.
            unsafe { sys::EVP_CIPHER_CTX_free(self.0.as_ptr()) }
        }
    }

    /// AES-256-XTS through aws-lc: one context per direction, keyed once.
    pub(crate) struct EvpXts {
        enc: Ctx,
        dec: Ctx,
    }

    // SAFETY: both contexts are owned exclusively by this value (never shared or aliased) and
    // aws-lc's EVP_CIPHER_CTX has no thread affinity, so moving the owner to another thread
    // is sound. It is deliberately not `Sync`: using one context from two threads at once
    // would race, and every method takes `&mut self` anyway. (The error queue read on
    // failure is per-thread and touched only by the thread doing the call.)
    unsafe impl Send for EvpXts {}

    impl EvpXts {
        /// Both contexts for a 64-byte key.
        pub(crate) fn new(key: &[u8]) -> Result<Self> {
            Ok(EvpXts {
                enc: Ctx::new(key, 1)?,
                dec: Ctx::new(key, 0)?,
            })
        }

        /// Encrypts one sector in place.
        pub(crate) fn encrypt_sector(&mut self, data: &mut [u8], iv: &[u8; 16]) -> Result<()> {
            self.enc.sector(data, iv)
        }

        /// Decrypts one sector in place.
        pub(crate) fn decrypt_sector(&mut self, data: &mut [u8], iv: &[u8; 16]) -> Result<()> {
            self.dec.sector(data, iv)
        }
    }

    /// AES-CBC through aws-lc's `AES_cbc_encrypt` (AES-NI/VAES assembly where the CPU has
    /// it): the encryption and decryption key schedules, set once. No context, no
    /// allocation per call.
    pub(crate) struct AesCbc {
        enc: Box<sys::AES_KEY>,
        dec: Box<sys::AES_KEY>,
    }

    impl AesCbc {
        /// Both key schedules for a 16-, 24- or 32-byte AES key.
        pub(crate) fn new(key: &[u8]) -> Result<Self> {
            if !matches!(key.len(), 16 | 24 | 32) {
                return Err(Error::KeyLength {
                    what: "aws-lc AES-CBC",
                    got: key.len(),
                    expected: "16, 24 or 32",
                });
            }
            let bits = (key.len() * 8) as std::os::raw::c_uint;
            let mut enc = Box::new(sys::AES_KEY::default());
            let mut dec = Box::new(sys::AES_KEY::default());
            // SAFETY: `key` points to `bits / 8` readable bytes (checked above); `enc` and
            // `dec` are valid, exclusively borrowed AES_KEY structures that the calls fill.
            let ok = unsafe {
                sys::AES_set_encrypt_key(key.as_ptr(), bits, &mut *enc) == 0
                    && sys::AES_set_decrypt_key(key.as_ptr(), bits, &mut *dec) == 0
            };
            if !ok {
                return Err(backend_error("AES_set_encrypt_key / AES_set_decrypt_key"));
            }
            Ok(AesCbc { enc, dec })
        }

        /// CBC-encrypts `data` (whole 16-byte blocks) in place from `iv`.
        pub(crate) fn encrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
            self.run(data, iv, true);
        }

        /// CBC-decrypts `data` (whole 16-byte blocks) in place from `iv`.
        pub(crate) fn decrypt(&self, data: &mut [u8], iv: &[u8; 16]) {
            self.run(data, iv, false);
        }

        fn run(&self, data: &mut [u8], iv: &[u8; 16], encrypt: bool) {
            assert!(data.len() % 16 == 0, "CBC takes whole blocks");
            let mut ivec = *iv;
            let (key, enc): (&sys::AES_KEY, _) = if encrypt {
                (&self.enc, sys::AES_ENCRYPT as std::os::raw::c_int)
            } else {
                (&self.dec, sys::AES_DECRYPT as std::os::raw::c_int)
            };
            let p = data.as_mut_ptr();
            // SAFETY: `p` points to `data.len()` initialized, writable bytes (a multiple of the
            // block size, asserted above) that nothing else borrows during the call; input and
            // output are the same pointer, which AES_cbc_encrypt supports (it reads each block
            // before writing it, and its assembly paths handle `in == out`). `key` is a key
            // schedule set up by AES_set_*_key for this direction; `ivec` is 16 writable bytes
            // (the function leaves the last ciphertext block there; we drop it).
            unsafe { sys::AES_cbc_encrypt(p, p, data.len(), key, ivec.as_mut_ptr(), enc) };
            zeroize::Zeroize::zeroize(&mut ivec);
        }
    }

    impl Drop for AesCbc {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.enc.rd_key);
            zeroize::Zeroize::zeroize(&mut self.dec.rd_key);
        }
    }

    /// The aws-lc primitive called as plainly as possible, for the benchmark baseline: one
    /// context keyed once, then per `sector`-byte unit one `EVP_CipherInit_ex` (IV only) and
    /// one `EVP_CipherUpdate`, with return codes checked but no other bookkeeping.
    ///
    /// Returns `false` if aws-lc reported any failure.
    pub(crate) fn raw_xts256_encrypt(
        key: &[u8; 64],
        buf: &mut [u8],
        sector: usize,
        first_iv: u64,
    ) -> bool {
        if sector == 0 || buf.len() % sector != 0 || sector > c_int::MAX as usize {
            return false;
        }
        let step = (sector / 512) as u64;
        // SAFETY: no preconditions; NULL is handled below.
        let ctx = unsafe { sys::EVP_CIPHER_CTX_new() };
        if ctx.is_null() {
            return false;
        }
        // SAFETY: `ctx` is valid; the key is 64 readable bytes, the cipher's key length.
        let mut ok = unsafe {
            sys::EVP_CipherInit_ex(
                ctx,
                sys::EVP_aes_256_xts(),
                ptr::null_mut(),
                key.as_ptr(),
                ptr::null(),
                1,
            )
        } == 1;
        let mut iv = [0u8; 16];
        for (i, chunk) in buf.chunks_exact_mut(sector).enumerate() {
            if !ok {
                break;
            }
            iv[..8].copy_from_slice(&first_iv.wrapping_add(i as u64 * step).to_le_bytes());
            let mut out_len: c_int = 0;
            let p = chunk.as_mut_ptr();
            // SAFETY: `ctx` is valid and keyed; `iv` is 16 readable bytes; `p` points to
            // `sector` writable bytes (checked to fit in c_int above), used in place, which
            // aws-lc's XTS supports.
            ok = unsafe {
                sys::EVP_CipherInit_ex(
                    ctx,
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    iv.as_ptr(),
                    -1,
                ) == 1
                    && sys::EVP_CipherUpdate(ctx, p, &mut out_len, p, sector as c_int) == 1
            };
        }
        // SAFETY: `ctx` came from EVP_CIPHER_CTX_new and is freed exactly once here.
        unsafe { sys::EVP_CIPHER_CTX_free(ctx) };
        if !ok {
            // Drain aws-lc's thread-local error queue so it does not leak into later calls.
            let _ = backend_error("raw XTS");
        }
        ok
    }
}
