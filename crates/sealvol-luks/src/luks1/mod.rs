//! LUKS1 (the "LUKS1 On-Disk Format Specification", version 1.2.3), as written by
//! `cryptsetup luksFormat --type luks1` and by qemu's `luks` block driver.
//!
//! A LUKS1 device is a 592-byte binary header ([`Header`]), eight key material areas (the
//! volume key AF-split into 4000 stripes and encrypted with the volume cipher under a
//! PBKDF2-derived key, 512-byte sectors with IVs from 0 at each area's start), then the
//! payload at `payload-offset` sectors: the header's cipher (e.g. `aes` / `xts-plain64`,
//! `aes` / `cbc-essiv:sha256`), 512-byte sectors, IV 0 at the payload's first sector. The
//! header may be detached (payload offset 0 on its own device).
//!
//! sealvol loads exactly the headers cryptsetup loads ([`Header::validate`]: its 32-bit
//! arithmetic, any hash its OpenSSL backend knows, no cipher check) and refuses everything
//! cryptsetup refuses on load (`_check_and_convert_hdr`, `LUKS_check_keyslots`). It reads,
//! writes and unlocks ([`Header::usable`]) every cipher [`sealvol_crypto::CipherSpec`]
//! implements (aes, serpent, twofish in xts-plain64, xts-plain, cbc-essiv:sha256,
//! cbc-plain64, cbc-plain; xchacha12,aes and xchacha20,aes in adiantum-plain64) with the
//! hashes [`sealvol_crypto::HashAlg`] implements (sha1, sha256, sha512, ripemd160,
//! whirlpool); a header in another cipher or hash is read and dumped, never used.

mod header;
mod volume;

pub use header::{
    material_sectors, Header, Keyslot, KEY_DISABLED, KEY_ENABLED, MAGIC, NUM_KEYS, PHDR_LEN,
    STRIPES,
};
pub use volume::{FormatOptions, Volume, MIN_ITERATIONS};

#[cfg(test)]
mod tests;
