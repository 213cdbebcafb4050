//! The storage a LUKS2 header lives on.

use std::io::{Read, Seek, SeekFrom, Write};

/// A seekable byte store holding a LUKS2 header (a device, a file, a detached header file,
/// or memory), with a durability barrier.
///
/// Header updates write one copy, call [`Storage::sync`], then write the other, so a crash at
/// any byte leaves at least one valid copy (LUKS2 on-disk format, §2).
pub trait Storage: Read + Write + Seek {
    /// Durability barrier: returns once everything written so far is durable
    /// (`fdatasync` for files; a no-op for memory).
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Storage for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

impl Storage for std::io::Cursor<Vec<u8>> {
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<S: Storage + ?Sized> Storage for &mut S {
    fn sync(&mut self) -> std::io::Result<()> {
        (**self).sync()
    }
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn sync(&mut self) -> std::io::Result<()> {
        (**self).sync()
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_at<S: Storage + ?Sized>(
    s: &mut S,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> crate::Result<()> {
    s.seek(SeekFrom::Start(offset))
        .and_then(|_| s.read_exact(buf))
        .map_err(|e| crate::Error::io(format!("reading {what} at offset {offset}"), e))
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at<S: Storage + ?Sized>(
    s: &mut S,
    offset: u64,
    buf: &[u8],
    what: &str,
) -> crate::Result<()> {
    s.seek(SeekFrom::Start(offset))
        .and_then(|_| s.write_all(buf))
        .and_then(|_| s.flush())
        .map_err(|e| crate::Error::io(format!("writing {what} at offset {offset}"), e))
}

/// Durability barrier with context.
pub(crate) fn sync<S: Storage + ?Sized>(s: &mut S, what: &str) -> crate::Result<()> {
    s.sync()
        .map_err(|e| crate::Error::io(format!("syncing after {what}"), e))
}

/// Length of the storage (seek to end).
pub(crate) fn len<S: Storage + ?Sized>(s: &mut S) -> crate::Result<u64> {
    s.seek(SeekFrom::End(0))
        .map_err(|e| crate::Error::io("finding the storage size", e))
}
