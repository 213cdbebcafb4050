//! The hashes LUKS names in its headers.

use sha2::Digest;

/// A hash named by LUKS metadata: `"sha1"`, `"sha256"`, `"sha512"`, `"ripemd160"`,
/// `"whirlpool"` (the hashes cryptsetup offers for PBKDF2, the AF splitter, the LUKS2
/// digest and ESSIV).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (LUKS1's historical default; still valid for PBKDF2 and the AF splitter).
    Sha1,
    /// SHA-256 (cryptsetup's default).
    Sha256,
    /// SHA-512.
    Sha512,
    /// RIPEMD-160 (some old LUKS1 volumes).
    Ripemd160,
    /// Whirlpool (512-bit; some old LUKS1 volumes).
    Whirlpool,
}

impl HashAlg {
    /// Every hash, in the order error messages list them.
    pub const ALL: [HashAlg; 5] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha512,
        HashAlg::Ripemd160,
        HashAlg::Whirlpool,
    ];

    /// The hash a LUKS header names exactly (`sha256`, not `SHA256`), as cryptsetup writes
    /// it; `None` for any other name.
    pub fn from_luks_name(name: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The name as LUKS writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
            HashAlg::Ripemd160 => "ripemd160",
            HashAlg::Whirlpool => "whirlpool",
        }
    }
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
            HashAlg::Ripemd160 => 20,
            HashAlg::Whirlpool => 64,
        }
    }
    /// One-shot digest.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// One-shot digest of the concatenation of `parts` (no copy of the parts is made).
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<sha1::Sha1>(parts),
            HashAlg::Sha256 => run::<sha2::Sha256>(parts),
            HashAlg::Sha512 => run::<sha2::Sha512>(parts),
            HashAlg::Ripemd160 => run::<ripemd::Ripemd160>(parts),
            HashAlg::Whirlpool => run::<whirlpool::Whirlpool>(parts),
        }
    }
}

impl std::str::FromStr for HashAlg {
    type Err = crate::Error;
    /// Accepts `sha1`, `sha256`, `sha512`, `ripemd160`, `whirlpool` (case-insensitive).
    fn from_str(s: &str) -> crate::Result<Self> {
        HashAlg::from_luks_name(&s.to_ascii_lowercase())
            .ok_or_else(|| crate::Error::UnknownHash(s.to_string()))
    }
}

impl std::fmt::Display for HashAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // FIPS 180 "abc" examples.
        let hex = |a: HashAlg| hex::encode(a.digest(b"abc"));
        assert_eq!(
            hex(HashAlg::Sha1),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(HashAlg::Sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(HashAlg::Sha512),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        // RIPEMD-160 paper (Dobbertin, Bosselaers, Preneel), "abc".
        assert_eq!(
            hex(HashAlg::Ripemd160),
            "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
        );
        // ISO/IEC 10118-3 Whirlpool test vectors (the NESSIE set), "abc".
        assert_eq!(
            hex(HashAlg::Whirlpool),
            "4e2448a4c6f486bb16b6562c73b4020bf3043e3a731bce721ae1b303d97e6d4c\
             7181eebdb6c57e277d0e34957114cbd6c797fc9d95d8b582d225292076d4eef5"
        );
        for a in HashAlg::ALL {
            assert_eq!(a.digest(b"").len(), a.output_len());
            assert_eq!(a.digest_parts(&[b"a", b"", b"bc"]), a.digest(b"abc"));
            assert_eq!(a.as_str().parse::<HashAlg>().unwrap(), a);
            assert_eq!(HashAlg::from_luks_name(a.as_str()), Some(a));
        }
        assert!("SHA256".parse::<HashAlg>().is_ok());
        assert!("RIPEMD160".parse::<HashAlg>().is_ok());
        assert_eq!(HashAlg::from_luks_name("SHA256"), None);
        assert!("md5".parse::<HashAlg>().is_err());
    }
}
