//! Two SHA-256 digests at once: two independent SHA-NI instruction streams interleaved.
//!
//! One SHA-256 stream is bound by the latency of `sha256rnds2` (each round pair waits for the
//! previous one); a second, independent message fills the idle execution slots, so two
//! digests cost far less than twice one (about 1.35× the throughput of one stream on the
//! AMD EPYC machines this runs on). dm-verity hashes millions of independent, equally long
//! blocks, which is exactly this shape (the Linux kernel's dm-verity does the same with
//! `sha256_finup_2x`).
//!
//! This is the second module of the crate with `unsafe` (x86 intrinsics, used only after the
//! CPU features were detected at run time); every block says why it is sound. Without SHA-NI,
//! or off x86-64, [`sha256_pair`] falls back to the RustCrypto `sha2` crate.

/// `[SHA-256(prefix ‖ bodies[0] ‖ suffix), SHA-256(prefix ‖ bodies[1] ‖ suffix)]`.
///
/// # Panics
/// If the two bodies differ in length.
pub fn sha256_pair(prefix: &[u8], bodies: [&[u8]; 2], suffix: &[u8]) -> [[u8; 32]; 2] {
    assert_eq!(
        bodies[0].len(),
        bodies[1].len(),
        "sha256_pair hashes bodies of equal length"
    );
    #[cfg(target_arch = "x86_64")]
    if shani_available() {
        // SAFETY: the CPU supports SHA, SSE2, SSSE3 and SSE4.1 (checked just above), which
        // is everything the target-feature function requires.
        return unsafe { x86::sha256_pair_shani(prefix, bodies, suffix) };
    }
    bodies.map(|b| portable(prefix, b, suffix))
}

/// Whether [`sha256_pair`] runs on SHA-NI (else it uses the portable `sha2` code).
pub fn shani_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn portable(prefix: &[u8], body: &[u8], suffix: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(prefix);
    h.update(body);
    h.update(suffix);
    h.finalize().into()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// Chunk `c` (64 bytes) of `prefix ‖ body ‖ suffix` with SHA-256 padding, for a padded
    /// message of `n` chunks.
    fn fill_chunk(c: usize, prefix: &[u8], body: &[u8], suffix: &[u8], n: usize) -> [u8; 64] {
        let total = prefix.len() + body.len() + suffix.len();
        let mut out = [0u8; 64];
        for (j, byte) in out.iter_mut().enumerate() {
            let m = c * 64 + j;
            *byte = if m < prefix.len() {
                prefix[m]
            } else if m < prefix.len() + body.len() {
                body[m - prefix.len()]
            } else if m < total {
                suffix[m - prefix.len() - body.len()]
            } else if m == total {
                0x80
            } else {
                0
            };
        }
        if c == n - 1 {
            out[56..].copy_from_slice(&((total as u64) * 8).to_be_bytes());
        }
        out
    }

    /// One round group (4 rounds) of one stream, with the message schedule step when
    /// `$sched` is `sched` (Intel's SHA extensions reference: msg1, alignr, msg2).
    macro_rules! step {
        ($w0:ident, $w1:ident, $w2:ident, $w3:ident, $s0:ident, $s1:ident, $k:ident, sched) => {
            let t = _mm_sha256msg1_epu32($w0, $w1);
            let t = _mm_add_epi32(t, _mm_alignr_epi8($w3, $w2, 4));
            $w0 = _mm_sha256msg2_epu32(t, $w3);
            step!($w0, $w1, $w2, $w3, $s0, $s1, $k, plain);
        };
        ($w0:ident, $w1:ident, $w2:ident, $w3:ident, $s0:ident, $s1:ident, $k:ident, plain) => {
            let m = _mm_add_epi32($w0, $k);
            $s1 = _mm_sha256rnds2_epu32($s1, $s0, m);
            let m = _mm_shuffle_epi32(m, 0x0E);
            $s0 = _mm_sha256rnds2_epu32($s0, $s1, m);
        };
    }

    /// Compresses one 64-byte chunk into each of two states (ABEF/CDGH register layout).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn compress_pair(state: &mut [__m128i; 4], a: &[u8; 64], b: &[u8; 64], mask: __m128i) {
        let [mut a0, mut a1, mut b0, mut b1] = *state;
        // SAFETY: `a` and `b` are 64 bytes long; each load reads 16 of them, unaligned loads
        // have no alignment requirement.
        let load = |p: &[u8; 64], i: usize| unsafe {
            _mm_shuffle_epi8(_mm_loadu_si128(p.as_ptr().add(16 * i).cast()), mask)
        };
        let (mut aw0, mut aw1, mut aw2, mut aw3) = (load(a, 0), load(a, 1), load(a, 2), load(a, 3));
        let (mut bw0, mut bw1, mut bw2, mut bw3) = (load(b, 0), load(b, 1), load(b, 2), load(b, 3));
        macro_rules! both {
            ($i:expr, $x0:ident, $x1:ident, $x2:ident, $x3:ident,
             $y0:ident, $y1:ident, $y2:ident, $y3:ident, $mode:ident) => {{
                // SAFETY: K has 64 words; 4 * $i + 3 < 64 for $i < 16.
                let k = unsafe { _mm_loadu_si128(K.as_ptr().add(4 * $i).cast()) };
                step!($x0, $x1, $x2, $x3, a0, a1, k, $mode);
                step!($y0, $y1, $y2, $y3, b0, b1, k, $mode);
            }};
        }
        both!(0, aw0, aw1, aw2, aw3, bw0, bw1, bw2, bw3, plain);
        both!(1, aw1, aw2, aw3, aw0, bw1, bw2, bw3, bw0, plain);
        both!(2, aw2, aw3, aw0, aw1, bw2, bw3, bw0, bw1, plain);
        both!(3, aw3, aw0, aw1, aw2, bw3, bw0, bw1, bw2, plain);
        both!(4, aw0, aw1, aw2, aw3, bw0, bw1, bw2, bw3, sched);
        both!(5, aw1, aw2, aw3, aw0, bw1, bw2, bw3, bw0, sched);
        both!(6, aw2, aw3, aw0, aw1, bw2, bw3, bw0, bw1, sched);
        both!(7, aw3, aw0, aw1, aw2, bw3, bw0, bw1, bw2, sched);
        both!(8, aw0, aw1, aw2, aw3, bw0, bw1, bw2, bw3, sched);
        both!(9, aw1, aw2, aw3, aw0, bw1, bw2, bw3, bw0, sched);
        both!(10, aw2, aw3, aw0, aw1, bw2, bw3, bw0, bw1, sched);
        both!(11, aw3, aw0, aw1, aw2, bw3, bw0, bw1, bw2, sched);
        both!(12, aw0, aw1, aw2, aw3, bw0, bw1, bw2, bw3, sched);
        both!(13, aw1, aw2, aw3, aw0, bw1, bw2, bw3, bw0, sched);
        both!(14, aw2, aw3, aw0, aw1, bw2, bw3, bw0, bw1, sched);
        both!(15, aw3, aw0, aw1, aw2, bw3, bw0, bw1, bw2, sched);
        state[0] = _mm_add_epi32(a0, state[0]);
        state[1] = _mm_add_epi32(a1, state[1]);
        state[2] = _mm_add_epi32(b0, state[2]);
        state[3] = _mm_add_epi32(b1, state[3]);
    }

    /// See [`super::sha256_pair`].
    ///
    /// # Safety
    /// The CPU must support SHA, SSE2, SSSE3 and SSE4.1; `bodies` must have equal lengths.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn sha256_pair_shani(
        prefix: &[u8],
        bodies: [&[u8]; 2],
        suffix: &[u8],
    ) -> [[u8; 32]; 2] {
        let mask = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        let body_len = bodies[0].len();
        let total = prefix.len() + body_len + suffix.len();
        let n = (total + 9).div_ceil(64);
        // SAFETY: H0 has 8 words; the two loads read words 0..4 and 4..8.
        let (abcd, efgh) = unsafe {
            (
                _mm_loadu_si128(H0.as_ptr().cast()),
                _mm_loadu_si128(H0.as_ptr().add(4).cast()),
            )
        };
        let cdab = _mm_shuffle_epi32(abcd, 0xB1);
        let hgfe = _mm_shuffle_epi32(efgh, 0x1B);
        let abef = _mm_alignr_epi8(cdab, hgfe, 8);
        let cdgh = _mm_blend_epi16(hgfe, cdab, 0xF0);
        let mut state = [abef, cdgh, abef, cdgh];
        for c in 0..n {
            let start = c * 64;
            if start >= prefix.len() && start + 64 <= prefix.len() + body_len {
                let at = start - prefix.len();
                let a: &[u8; 64] = bodies[0][at..at + 64].try_into().expect("64 bytes");
                let b: &[u8; 64] = bodies[1][at..at + 64].try_into().expect("64 bytes");
                compress_pair(&mut state, a, b, mask);
            } else {
                let a = fill_chunk(c, prefix, bodies[0], suffix, n);
                let b = fill_chunk(c, prefix, bodies[1], suffix, n);
                compress_pair(&mut state, &a, &b, mask);
            }
        }
        let mut out = [[0u8; 32]; 2];
        for (digest, (s0, s1)) in out
            .iter_mut()
            .zip([(state[0], state[1]), (state[2], state[3])])
        {
            let feba = _mm_shuffle_epi32(s0, 0x1B);
            let dchg = _mm_shuffle_epi32(s1, 0xB1);
            let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
            let hgfe = _mm_alignr_epi8(dchg, feba, 8);
            let mut words = [0u32; 8];
            // SAFETY: `words` has room for 8 words; each store writes 4.
            unsafe {
                _mm_storeu_si128(words.as_mut_ptr().cast(), dcba);
                _mm_storeu_si128(words.as_mut_ptr().add(4).cast(), hgfe);
            }
            for (i, w) in words.iter().enumerate() {
                digest[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        // FIPS 180-2 "abc", split across prefix, body and suffix.
        let d = sha256_pair(b"a", [b"b", b"b"], b"c");
        let abc = hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            .unwrap();
        assert_eq!(d[0].to_vec(), abc);
        assert_eq!(d[1].to_vec(), abc);
        let empty = sha256_pair(b"", [b"", b""], b"");
        assert_eq!(
            hex::encode(empty[0]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    proptest! {
        #[test]
        fn equals_sha2(
            prefix in prop::collection::vec(any::<u8>(), 0..300),
            a in prop::collection::vec(any::<u8>(), 0..5000),
            seed in any::<u8>(),
            suffix in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let b: Vec<u8> = a.iter().map(|x| x.wrapping_add(seed)).collect();
            let got = sha256_pair(&prefix, [&a, &b], &suffix);
            prop_assert_eq!(got[0], portable(&prefix, &a, &suffix));
            prop_assert_eq!(got[1], portable(&prefix, &b, &suffix));
        }
    }
}
