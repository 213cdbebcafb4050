//! The plaintext view of a LUKS data segment: [`CryptDevice`].

use std::sync::Mutex;

use sealvol_crypto::{SecretBytes, SectorCipher, SectorSize};
use sealvol_luks::DataSegment;

use crate::stripe::StripeLocks;
use crate::{check_range, BlockDevice, Error, Result};

/// Largest piece of a write that is encrypted into one buffer before it is written: bounds
/// the memory of a large request and keeps the buffer in cache.
const WRITE_CHUNK: usize = 1 << 20;

/// Requests at least this large are crypted on two threads.
const PARALLEL_MIN: usize = 128 << 10;

/// Largest sector size (LUKS2 allows 512 to 4096).
const MAX_SECTOR: usize = 4096;

/// Buffers kept for reuse between writes.
const POOLED_BUFFERS: usize = 8;

/// A LUKS data segment on `D`, seen as plaintext: the segment's cipher (any
/// [`sealvol_crypto::CipherSpec`]: aes, serpent, twofish in xts or cbc, adiantum) with the
/// sector IV `iv_tweak + byte_offset / 512`, byte for byte what dm-crypt reads and writes.
///
/// - Requests of any offset and length: the sectors a request covers fully are crypted in
///   place (reads) or through a pooled buffer (writes); a sector covered partly is read,
///   decrypted, patched, encrypted and written back while holding that sector's stripe lock,
///   so two requests writing different bytes of one sector both land. Requests that overlap
///   in bytes race as they would on a disk.
/// - Requests of 128 KiB and more are split across two threads (rayon's pool), each with
///   its own [`SectorCipher`] from a pool: no key setup and no allocation per request once the
///   pools are warm.
/// - The key lives only in the ciphers, which wipe it on drop.
pub struct CryptDevice<D> {
    inner: D,
    offset: u64,
    size: u64,
    sector: SectorSize,
    iv_tweak: u64,
    read_only: bool,
    ciphers: Mutex<Vec<SectorCipher>>,
    buffers: Mutex<Vec<Vec<u8>>>,
    locks: StripeLocks,
}

impl<D> std::fmt::Debug for CryptDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptDevice")
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("sector", &self.sector)
            .field("iv_tweak", &self.iv_tweak)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Where a write's plaintext comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bytes(&'a [u8]),
    Zeroes,
}

impl Source<'_> {
    fn fill(&self, from: usize, dst: &mut [u8]) {
        match self {
            Source::Bytes(b) => dst.copy_from_slice(&b[from..from + dst.len()]),
            Source::Zeroes => dst.fill(0),
        }
    }
}

/// How a request splits into sectors: a partly covered first sector, whole sectors, and a
/// partly covered last sector.
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    /// (sector start, bytes to skip in it, bytes used)
    head: Option<(u64, usize, usize)>,
    /// (start, length) of the whole sectors
    middle: (u64, u64),
    /// (sector start, bytes used from its start)
    tail: Option<(u64, usize)>,
}

fn split(offset: u64, len: u64, ss: u64) -> Parts {
    let end = offset + len;
    let first = offset - offset % ss;
    let mut pos = offset;
    let mut head = None;
    if len > 0 && (offset % ss != 0 || end - first < ss) {
        let stop = end.min(first + ss);
        head = Some((first, (offset - first) as usize, (stop - offset) as usize));
        pos = stop;
    }
    let mid_end = (end - end % ss).max(pos);
    let tail = (end > mid_end).then(|| (mid_end, (end - mid_end) as usize));
    Parts {
        head,
        middle: (pos, mid_end - pos),
        tail,
    }
}

impl<D: BlockDevice> CryptDevice<D> {
    /// The data segment `segment` on `inner`, unlocked with `volume_key`.
    ///
    /// The device is as large as [`DataSegment::data_len`] of `inner`'s size, and read-only
    /// when `inner` is.
    ///
    /// # Errors
    /// [`Error::Luks`] when the segment does not fit `inner` or the key does not suit its
    /// cipher; [`Error::Invalid`] for a segment offset that is not sector aligned.
    pub fn new(inner: D, segment: &DataSegment, volume_key: &SecretBytes) -> Result<Self> {
        let size = segment.data_len(inner.size())?;
        let cipher = segment.cipher(volume_key)?;
        let ss = segment.sector_size.bytes() as u64;
        if segment.offset % 512 != 0 || size % ss != 0 {
            return Err(Error::Invalid(format!(
                "the data segment (offset {}, {size} bytes) is not aligned to its {ss}-byte \
                 sectors; the header is damaged",
                segment.offset
            )));
        }
        let threads = rayon::current_num_threads().clamp(1, 8);
        let mut ciphers = Vec::with_capacity(threads + 1);
        for _ in 0..threads {
            ciphers.push(cipher.try_clone()?);
        }
        ciphers.push(cipher);
        Ok(CryptDevice {
            read_only: inner.read_only(),
            inner,
            offset: segment.offset,
            size,
            sector: segment.sector_size,
            iv_tweak: segment.iv_tweak,
            ciphers: Mutex::new(ciphers),
            buffers: Mutex::new(Vec::new()),
            locks: StripeLocks::new(),
        })
    }

    /// The same device, refusing writes even when `inner` accepts them.
    pub fn into_read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The device below.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn ss(&self) -> u64 {
        self.sector.bytes() as u64
    }

    fn iv(&self, pos: u64) -> u64 {
        self.iv_tweak.wrapping_add(pos / 512)
    }

    /// Takes a cipher from the pool (or makes one when every pooled cipher is in use).
    fn cipher(&self) -> Result<SectorCipher> {
        let mut pool = self.ciphers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() > 1 {
            return Ok(pool.pop().expect("pool has more than one cipher"));
        }
        // Keep one in the pool to clone from.
        Ok(pool[0].try_clone()?)
    }

    fn give_back(&self, c: SectorCipher) {
        let mut pool = self.ciphers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 16 {
            pool.push(c);
        }
    }

    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        b.resize(len, 0);
        b
    }

    fn recycle(&self, b: Vec<u8>) {
        let mut pool = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_BUFFERS && b.capacity() <= WRITE_CHUNK {
            pool.push(b);
        }
    }

    /// Encrypts or decrypts whole sectors `buf` that start at segment byte `pos`, on two
    /// threads when it is large.
    fn crypt(&self, buf: &mut [u8], pos: u64, encrypt: bool) -> Result<()> {
        let ss = self.sector.bytes();
        let run = |buf: &mut [u8], pos: u64| -> Result<()> {
            let mut c = self.cipher()?;
            let r = if encrypt {
                c.encrypt_sectors(buf, self.sector, self.iv(pos))
            } else {
                c.decrypt_sectors(buf, self.sector, self.iv(pos))
            };
            self.give_back(c);
            Ok(r?)
        };
        if buf.len() < PARALLEL_MIN || rayon::current_num_threads() < 2 {
            return run(buf, pos);
        }
        let half = (buf.len() / ss).div_ceil(2) * ss;
        let (a, b) = buf.split_at_mut(half);
        let (ra, rb) = rayon::join(|| run(a, pos), || run(b, pos + half as u64));
        ra.and(rb)
    }

    /// Reads and decrypts the sector at segment byte `start` into `sector`.
    fn read_sector(&self, sector: &mut [u8], start: u64) -> Result<()> {
        self.inner.read_at(sector, self.offset + start)?;
        self.crypt(sector, start, false)
    }

    /// Read-modify-write of part of one sector under its lock.
    fn patch_sector(
        &self,
        start: u64,
        skip: usize,
        src: Source<'_>,
        from: usize,
        n: usize,
    ) -> Result<()> {
        let ss = self.sector.bytes();
        let mut sector = [0u8; MAX_SECTOR];
        let sector = &mut sector[..ss];
        let _guard = self.locks.lock(start / ss as u64);
        self.read_sector(sector, start)?;
        src.fill(from, &mut sector[skip..skip + n]);
        self.crypt(sector, start, true)?;
        self.inner.write_at(sector, self.offset + start)
    }

    fn check_writable(&self, what: &'static str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly {
                what,
                why: "the volume is open read-only",
            });
        }
        Ok(())
    }

    fn write_from(&self, src: Source<'_>, offset: u64, len: u64, what: &'static str) -> Result<()> {
        self.check_writable(what)?;
        check_range(what, offset, len, self.size)?;
        let parts = split(offset, len, self.ss());
        let mut from = 0usize;
        if let Some((start, skip, n)) = parts.head {
            self.patch_sector(start, skip, src, 0, n)?;
            from = n;
        }
        let (mut pos, mid_len) = parts.middle;
        let mid_end = pos + mid_len;
        if mid_len > 0 {
            let mut buf = self.buffer(WRITE_CHUNK.min(mid_len as usize));
            let result = (|| -> Result<()> {
                while pos < mid_end {
                    let n = (mid_end - pos).min(WRITE_CHUNK as u64) as usize;
                    let chunk = &mut buf[..n];
                    src.fill(from, chunk);
                    self.crypt(chunk, pos, true)?;
                    self.inner.write_at(chunk, self.offset + pos)?;
                    pos += n as u64;
                    from += n;
                }
                Ok(())
            })();
            self.recycle(buf);
            result?;
        }
        if let Some((start, n)) = parts.tail {
            self.patch_sector(start, 0, src, from, n)?;
        }
        Ok(())
    }
}

impl<D: BlockDevice> BlockDevice for CryptDevice<D> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        self.sector.bytes() as u32
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.size)?;
        let ss = self.sector.bytes();
        let parts = split(offset, buf.len() as u64, ss as u64);
        let mut sector = [0u8; MAX_SECTOR];
        let sector = &mut sector[..ss];
        let mut at = 0usize;
        if let Some((start, skip, n)) = parts.head {
            self.read_sector(sector, start)?;
            buf[..n].copy_from_slice(&sector[skip..skip + n]);
            at = n;
        }
        let (pos, mid_len) = parts.middle;
        if mid_len > 0 {
            let mid = &mut buf[at..at + mid_len as usize];
            self.inner.read_at(mid, self.offset + pos)?;
            self.crypt(mid, pos, false)?;
            at += mid_len as usize;
        }
        if let Some((start, n)) = parts.tail {
            self.read_sector(sector, start)?;
            buf[at..at + n].copy_from_slice(&sector[..n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_from(Source::Bytes(buf), offset, buf.len() as u64, "write")
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Passes the whole sectors of the range down as a discard (partial sectors are kept).
    /// Like dm-crypt with `allow_discards`, the range then reads as garbage, not zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard")?;
        check_range("discard", offset, len, self.size)?;
        let ss = self.ss();
        let start = offset.next_multiple_of(ss);
        let end = (offset + len) - (offset + len) % ss;
        if end > start {
            self.inner.discard(self.offset + start, end - start)?;
        }
        Ok(())
    }

    /// Writes encrypted zeros, so the range reads as zeros here and under dm-crypt alike.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write_from(Source::Zeroes, offset, len, "write zeroes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::sync::Arc;

    fn segment(offset: u64, sector: SectorSize, iv_tweak: u64) -> DataSegment {
        segment_with(offset, sector, iv_tweak, "aes-xts-plain64", 64)
    }

    fn segment_with(
        offset: u64,
        sector: SectorSize,
        iv_tweak: u64,
        cipher: &str,
        key_size: usize,
    ) -> DataSegment {
        DataSegment {
            id: 0,
            offset,
            size: None,
            iv_tweak,
            sector_size: sector,
            cipher: cipher.into(),
            key_size,
        }
    }

    fn key() -> SecretBytes {
        key_of(64)
    }

    fn key_of(len: usize) -> SecretBytes {
        SecretBytes::from_vec(
            (0..len as u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect(),
        )
    }

    /// The ciphers of the other tests' cases: one per mode and IV generator.
    const CIPHERS: [(&str, usize); 6] = [
        ("aes-xts-plain64", 64),
        ("serpent-cbc-essiv:sha256", 32),
        ("twofish-xts-plain", 48),
        ("aes-cbc-plain64", 24),
        ("xchacha12,aes-adiantum-plain64", 32),
        ("xchacha20,aes-adiantum-plain64", 32),
    ];

    #[test]
    fn split_covers_every_byte_once() {
        for ss in [512u64, 4096] {
            for offset in [0, 1, 511, 512, 4095, 4096, 5000] {
                for len in [0, 1, 100, 511, 512, 513, 4096, 4097, 9000, 20_000] {
                    let p = split(offset, len, ss);
                    let mut covered = 0;
                    if let Some((start, skip, n)) = p.head {
                        assert_eq!(start % ss, 0);
                        assert_eq!(start + skip as u64, offset);
                        assert!(skip + n <= ss as usize);
                        covered += n as u64;
                    }
                    assert_eq!(p.middle.0, offset + covered);
                    if p.middle.1 > 0 {
                        assert_eq!(p.middle.0 % ss, 0, "{offset} {len} {ss} {p:?}");
                    }
                    assert_eq!(p.middle.1 % ss, 0);
                    covered += p.middle.1;
                    if let Some((start, n)) = p.tail {
                        assert_eq!(start, offset + covered);
                        assert!((n as u64) < ss);
                        covered += n as u64;
                    }
                    assert_eq!(covered, len, "{offset} {len} {ss} {p:?}");
                }
            }
        }
    }

    /// A CryptDevice's writes are what `sealvol_luks::data::import` writes, and its reads
    /// what `data::export` reads, for every mode.
    #[test]
    fn matches_luks_data_import_and_export() {
        for (i, (sector, tweak)) in [
            (SectorSize::S4096, 0),
            (SectorSize::S512, 7),
            (SectorSize::S4096, 1 << 40),
            (SectorSize::S2048, 4),
            (SectorSize::S1024, (1 << 32) - 64),
            (SectorSize::S4096, 8),
        ]
        .into_iter()
        .enumerate()
        {
            let (cipher, key_size) = CIPHERS[i];
            let key = || key_of(key_size);
            let offset = 16 << 10;
            let data_len = 3 << 20;
            let seg = segment_with(offset, sector, tweak, cipher, key_size);
            let plain: Vec<u8> = (0..data_len as u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();

            let mut imported = Cursor::new(vec![0u8; offset as usize + data_len]);
            sealvol_luks::data::import(
                &mut &plain[..],
                &mut imported,
                &seg,
                &key(),
                None,
                &mut |_| {},
            )
            .unwrap();
            assert!(
                imported.get_ref()[offset as usize..] != plain[..],
                "{cipher}"
            );

            let dev =
                CryptDevice::new(MemDevice::new(offset as usize + data_len), &seg, &key()).unwrap();
            // Large, small and unaligned pieces.
            let cuts = [
                0,
                1,
                700,
                4096,
                4097,
                300_000,
                1 << 20,
                (1 << 20) + 3,
                data_len,
            ];
            for w in cuts.windows(2) {
                dev.write_at(&plain[w[0]..w[1]], w[0] as u64).unwrap();
            }
            assert!(
                dev.inner().to_vec() == imported.get_ref()[..],
                "{cipher} {sector:?}"
            );

            let mut exported = Vec::new();
            let mut src = Cursor::new(imported.into_inner());
            sealvol_luks::data::export(
                &mut src,
                &mut exported,
                &seg,
                &key(),
                data_len as u64,
                &mut |_| {},
            )
            .unwrap();
            let mut back = vec![0u8; data_len];
            dev.read_at(&mut back, 0).unwrap();
            assert!(back == exported);
            assert!(back == plain);
        }
    }

    #[test]
    fn write_zeroes_reads_zero_and_discard_passes_whole_sectors() {
        let seg = segment(4096, SectorSize::S4096, 0);
        let dev = CryptDevice::new(MemDevice::new(4096 * 9), &seg, &key()).unwrap();
        dev.write_at(&[0xaa; 4096 * 8], 0).unwrap();
        dev.write_zeroes(100, 10_000).unwrap();
        let mut b = vec![0u8; 4096 * 8];
        dev.read_at(&mut b, 0).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0xaa));
        assert!(b[100..10_100].iter().all(|&x| x == 0));
        assert!(b[10_100..].iter().all(|&x| x == 0xaa));
        // Ciphertext of zeros is not zeros.
        assert!(dev.inner().to_vec()[4096..8192].iter().any(|&x| x != 0));
        dev.discard(1000, 3 * 4096).unwrap();
        let raw = dev.inner().to_vec();
        assert!(
            raw[4096..8192].iter().any(|&x| x != 0),
            "partial first sector kept"
        );
        assert!(
            raw[8192..3 * 4096 + 4096].iter().all(|&x| x == 0),
            "whole sectors discarded"
        );
        assert!(
            raw[4 * 4096..5 * 4096].iter().any(|&x| x != 0),
            "partial last sector kept"
        );
    }

    #[test]
    fn read_only_refuses_writes() {
        let seg = segment(0, SectorSize::S512, 0);
        let dev = CryptDevice::new(MemDevice::new(8192).into_read_only(), &seg, &key()).unwrap();
        assert!(dev.read_only());
        assert!(matches!(dev.write_at(&[1], 0), Err(Error::ReadOnly { .. })));
        assert!(matches!(dev.discard(0, 512), Err(Error::ReadOnly { .. })));
        let mut b = [0u8; 10];
        dev.read_at(&mut b, 5).unwrap();
        assert!(matches!(
            dev.read_at(&mut b, 8190),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn segment_larger_than_device_is_refused() {
        let mut seg = segment(4096, SectorSize::S4096, 0);
        seg.size = Some(1 << 20);
        let err = CryptDevice::new(MemDevice::new(8192), &seg, &key()).unwrap_err();
        assert!(matches!(err, Error::Luks(_)), "{err}");
    }

    /// Many threads writing different bytes of the same few sectors: every byte lands.
    #[test]
    fn concurrent_partial_writes_of_one_sector_all_land() {
        let seg = segment(0, SectorSize::S4096, 0);
        let dev = Arc::new(CryptDevice::new(MemDevice::new(4 * 4096), &seg, &key()).unwrap());
        dev.write_zeroes(0, 4 * 4096).unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let dev = Arc::clone(&dev);
                std::thread::spawn(move || {
                    for round in 0..200u64 {
                        // Thread t owns bytes t, t+8, t+16, ... of sectors 1 and 2.
                        let pos = 4096 + (round * 8 + t as u64) % (2 * 4096);
                        dev.write_at(&[t + 1], pos).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut b = vec![0u8; 2 * 4096];
        dev.read_at(&mut b, 4096).unwrap();
        for (i, &x) in b.iter().enumerate() {
            let expected_owner = (i % 8) as u8 + 1;
            // Rounds 0..200 of each thread cover positions (round*8+t) % 8192: only the
            // first 1600 bytes are written.
            if i < 1600 {
                assert_eq!(x, expected_owner, "byte {i}");
            } else {
                assert_eq!(x, 0, "byte {i}");
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        Zero(u64, u64),
    }

    fn op(size: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..size, prop::collection::vec(any::<u8>(), 1..9000)).prop_map(move |(o, d)| {
                let o = o.min(size - d.len().min(size as usize) as u64);
                Op::Write(o, d.into_iter().take(size as usize).collect())
            }),
            (0..size, 0usize..9000).prop_map(move |(o, l)| Op::Read(o, l.min((size - o) as usize))),
            (0..size, 0u64..9000).prop_map(move |(o, l)| Op::Zero(o, l.min(size - o))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random writes, zeroing and reads behave like a plain byte array.
        #[test]
        fn behaves_like_plain_memory(
            big in any::<bool>(),
            tweak in 0u64..1_000_000,
            cipher in 0..CIPHERS.len(),
            ops in prop::collection::vec(op(32 * 1024), 1..40),
        ) {
            let sector = if big { SectorSize::S4096 } else { SectorSize::S512 };
            let size = 32 * 1024u64;
            let (name, key_size) = CIPHERS[cipher];
            let seg = segment_with(8192, sector, tweak - tweak % 8, name, key_size);
            let dev = CryptDevice::new(MemDevice::new(8192 + size as usize), &seg, &key_of(key_size)).unwrap();
            let mut model = vec![0u8; size as usize];
            // The device starts as ciphertext zeros: decrypted garbage. Make both agree.
            dev.read_at(&mut model, 0).unwrap();
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        dev.write_at(&d, o).unwrap();
                        model[o as usize..o as usize + d.len()].copy_from_slice(&d);
                    }
                    Op::Zero(o, l) => {
                        dev.write_zeroes(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                    Op::Read(o, l) => {
                        let mut b = vec![0u8; l];
                        dev.read_at(&mut b, o).unwrap();
                        prop_assert!(b == model[o as usize..o as usize + l]);
                    }
                }
            }
            let mut all = vec![0u8; size as usize];
            dev.read_at(&mut all, 0).unwrap();
            prop_assert!(all == model);
        }
    }
}
