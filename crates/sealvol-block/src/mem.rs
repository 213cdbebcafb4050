//! Bytes in memory as a block device.

use std::sync::RwLock;

use crate::{check_range, BlockDevice, Error, Result};

/// A [`BlockDevice`] held in memory, for tests and examples. Discard zeroes the range.
#[derive(Debug, Default)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    /// A device holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// The same device, refusing writes.
    pub fn into_read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check_writable(&self, what: &'static str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly {
                what,
                why: "the memory device was made read-only",
            });
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range("read", offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range("write", offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("write zeroes")?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range("write zeroes", offset, len, data.len() as u64)?;
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}
