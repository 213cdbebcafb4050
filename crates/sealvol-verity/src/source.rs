//! Data devices that several threads can read at once.
//!
//! Building or checking a tree hashes every data block; to use every core, each worker reads
//! its own cache-sized run of blocks at its own offset and hashes it while it is still in the
//! CPU cache. A [`BlockSource`] is what allows that: positional reads through a shared
//! reference. Memory (`[u8]`, `Vec<u8>`, `Cursor`) is hashed in place without copying, a
//! [`std::fs::File`] is read with `pread`, and any `Read + Seek` works behind a [`Mutex`]
//! (reads then take turns; hashing still runs in parallel).

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// A data device readable at any offset through a shared reference, from several threads.
pub trait BlockSource: Sync {
    /// Length in bytes.
    ///
    /// # Errors
    /// I/O errors of the device.
    fn size(&self) -> io::Result<u64>;

    /// The `buf.len()` bytes at `offset`: either read into `buf` (and returned), or borrowed
    /// straight from the source when it is memory.
    ///
    /// # Errors
    /// I/O errors, and [`io::ErrorKind::UnexpectedEof`] when the device ends early.
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]>;
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the data device ends early")
}

impl BlockSource for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        self.get(start..end).ok_or_else(eof)
    }
}

impl BlockSource for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        self.as_slice().read_at(offset, buf)
    }
}

impl<T: AsRef<[u8]> + Sync> BlockSource for Cursor<T> {
    fn size(&self) -> io::Result<u64> {
        self.get_ref().as_ref().size()
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        self.get_ref().as_ref().read_at(offset, buf)
    }
}

impl BlockSource for File {
    fn size(&self) -> io::Result<u64> {
        let meta = self.metadata()?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        // A block device reports length 0 in its metadata: ask it where it ends.
        let mut f = self;
        let end = f.seek(SeekFrom::End(0))?;
        Ok(end)
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        self.read_exact_at(buf, offset)?;
        Ok(buf)
    }
}

impl<R: Read + Seek + Send> BlockSource for Mutex<R> {
    fn size(&self) -> io::Result<u64> {
        let mut r = self
            .lock()
            .map_err(|_| io::Error::other("poisoned data device"))?;
        r.seek(SeekFrom::End(0))
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let mut r = self
            .lock()
            .map_err(|_| io::Error::other("poisoned data device"))?;
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(buf)?;
        Ok(buf)
    }
}

impl<T: BlockSource + ?Sized> BlockSource for &T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        (**self).read_at(offset, buf)
    }
}

impl<T: BlockSource + ?Sized> BlockSource for &mut T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        (**self).read_at(offset, buf)
    }
}
