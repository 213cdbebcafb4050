//! Where an overlay's bytes live: the [`Store`] trait, [`MemStore`], and the view of its
//! first bytes the LUKS crate formats and opens.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, RwLock};

/// A growable array of bytes with positioned reads and writes from many threads, a
/// durability barrier and hole punching: an overlay file.
///
/// Reads must be inside [`Store::len`]; writes may extend it.
#[allow(clippy::len_without_is_empty)]
pub trait Store: Send + Sync {
    /// Current length in bytes.
    ///
    /// # Errors
    /// I/O errors.
    fn len(&self) -> std::io::Result<u64>;

    /// Fills `buf` from `offset` (inside the length).
    ///
    /// # Errors
    /// I/O errors, `UnexpectedEof` past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// Writes all of `buf` at `offset`, growing the store when needed.
    ///
    /// # Errors
    /// I/O errors.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;

    /// Makes every completed write durable.
    ///
    /// # Errors
    /// I/O errors.
    fn sync(&self) -> std::io::Result<()>;

    /// Frees `len` bytes at `offset` (a hole that reads as zeros); the length stays.
    ///
    /// # Errors
    /// I/O errors.
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()>;
}

/// Bytes in memory, for tests and examples. Discard zeroes.
#[derive(Debug, Default)]
pub struct MemStore {
    data: RwLock<Vec<u8>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStore {
            data: RwLock::new(data),
        }
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the bytes (tests: restoring a saved copy).
    pub fn replace(&self, data: Vec<u8>) {
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = data;
    }

    /// Runs `f` on the bytes (tests: flipping bits).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.data.write().unwrap_or_else(|e| e.into_inner()))
    }
}

fn eof(offset: u64, len: usize, size: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} passes the end ({size} bytes)"),
    )
}

impl Store for MemStore {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| eof(offset, buf.len(), d.len()))?;
        match start.checked_add(buf.len()) {
            Some(end) if end <= d.len() => {
                buf.copy_from_slice(&d[start..end]);
                Ok(())
            }
            _ => Err(eof(offset, buf.len(), d.len())),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start + buf.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = (offset as usize).min(d.len());
        let end = (offset.saturating_add(len) as usize).min(d.len());
        d[start..end].fill(0);
        Ok(())
    }
}

/// A regular file: `pread`/`pwrite`, `fdatasync`, and `fallocate(PUNCH_HOLE)` to discard.
impl Store for std::fs::File {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        use rustix::fs::FallocateFlags;
        match rustix::fs::fallocate(
            self,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // A file system without holes: the space stays allocated, the data is ciphertext
            // under a key no entry names any more.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl<T: Store + ?Sized> Store for Arc<T> {
    fn len(&self) -> std::io::Result<u64> {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        (**self).sync()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        (**self).discard(offset, len)
    }
}

/// The first bytes of an overlay's store as `Read + Write + Seek` (the LUKS crate's
/// [`sealvol_luks::Storage`]): the embedded LUKS2 header's whole world. See
/// [`crate::embedded_header`].
pub struct HeaderArea {
    store: Arc<dyn Store>,
    len: u64,
    pos: u64,
}

impl HeaderArea {
    pub(crate) fn new(store: Arc<dyn Store>, len: u64) -> Self {
        HeaderArea { store, len, pos: 0 }
    }
}

impl Read for HeaderArea {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.store.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for HeaderArea {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the embedded LUKS2 header area",
            ));
        }
        self.store.write_at(&buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for HeaderArea {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

impl sealvol_luks::Storage for HeaderArea {
    fn sync(&mut self) -> std::io::Result<()> {
        self.store.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_reads_inside_and_grows_on_write() {
        let s = MemStore::new();
        s.write_at(b"abc", 10).unwrap();
        assert_eq!(s.len().unwrap(), 13);
        let mut b = [9u8; 4];
        s.read_at(&mut b[..3], 10).unwrap();
        assert_eq!(&b[..3], b"abc");
        assert!(s.read_at(&mut b, 10).is_err());
        s.discard(11, 100).unwrap();
        s.read_at(&mut b[..3], 10).unwrap();
        assert_eq!(&b[..3], b"a\0\0");
    }

    #[test]
    fn file_store_punches_holes() {
        let f = tempfile::tempfile().unwrap();
        f.write_at(&vec![0xAA; 1 << 20], 0).unwrap();
        f.discard(4096, 8192).unwrap();
        let mut b = vec![0u8; 3 * 4096];
        Store::read_at(&f, &mut b, 0).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0xAA));
        assert!(b[4096..].iter().all(|&x| x == 0));
        assert_eq!(Store::len(&f).unwrap(), 1 << 20);
    }

    #[test]
    fn window_is_bounded() {
        let s: Arc<dyn Store> = Arc::new(MemStore::from_vec(vec![1; 100]));
        let mut w = HeaderArea::new(s, 10);
        assert_eq!(w.seek(SeekFrom::End(0)).unwrap(), 10);
        let mut b = [0u8; 20];
        w.seek(SeekFrom::Start(5)).unwrap();
        assert_eq!(w.read(&mut b).unwrap(), 5);
        assert!(w.write(b"x").is_err());
    }
}
