//! Verified reads of a dm-verity protected image: [`VerityDevice`].

use std::io::{Read, Seek};
use std::sync::Mutex;

use sealvol_verity::VerityReader;

use crate::{check_range, BlockDevice, Error, Result};

/// The data of a dm-verity image, read-only, every block checked against the hash tree up to
/// the trusted root hash before it is returned (as the kernel's dm-verity target does).
///
/// A corrupt block fails the reads that touch it ([`Error::Verity`], `EIO` through an
/// export); the rest of the image stays readable. Reads are serialised on one
/// [`VerityReader`], whose cache of verified hash blocks makes repeated reads cheap.
pub struct VerityDevice<D, H> {
    reader: Mutex<VerityReader<D, H>>,
    size: u64,
    block: usize,
}

impl<D, H> std::fmt::Debug for VerityDevice<D, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerityDevice")
            .field("size", &self.size)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl<D: Read + Seek, H: Read + Seek> VerityDevice<D, H> {
    /// Serves the data that `reader` verifies.
    pub fn new(reader: VerityReader<D, H>) -> Self {
        VerityDevice {
            size: reader.len(),
            block: reader.params().data_block_size() as usize,
            reader: Mutex::new(reader),
        }
    }
}

fn refuse(what: &'static str) -> Error {
    Error::ReadOnly {
        what,
        why: "a dm-verity image is read-only",
    }
}

impl<D: Read + Seek + Send, H: Read + Seek + Send> BlockDevice for VerityDevice<D, H> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn block_size(&self) -> u32 {
        self.block as u32
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.size)?;
        let bs = self.block as u64;
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut scratch = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / bs;
            let skip = (pos % bs) as usize;
            let n = (self.block - skip).min(buf.len() - done);
            if skip == 0 && n == self.block {
                reader.read_block(index, &mut buf[done..done + n])?;
            } else {
                scratch.resize(self.block, 0);
                reader.read_block(index, &mut scratch)?;
                buf[done..done + n].copy_from_slice(&scratch[skip..skip + n]);
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(refuse("write"))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(refuse("discard"))
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(refuse("write zeroes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealvol_verity::{format, HashAlgorithm, HashArea, HashType, Params, Salt};
    use std::io::Cursor;

    fn image(corrupt: Option<usize>) -> VerityDevice<Cursor<Vec<u8>>, Cursor<Vec<u8>>> {
        let mut data: Vec<u8> = (0..16 * 4096u32).map(|i| (i % 253) as u8).collect();
        let params = Params::new(
            HashType::Normal,
            HashAlgorithm::Sha256,
            4096,
            4096,
            16,
            Salt::from_hex("0011").unwrap(),
        )
        .unwrap();
        let mut hash = Cursor::new(Vec::new());
        let tree = format(
            &data,
            &mut hash,
            &params,
            HashArea::default(),
            None,
            &mut |_| {},
        )
        .unwrap();
        if let Some(at) = corrupt {
            data[at] ^= 1;
        }
        let reader = VerityReader::new(
            Cursor::new(data),
            hash,
            params,
            HashArea::default(),
            tree.root(),
        )
        .unwrap();
        VerityDevice::new(reader)
    }

    #[test]
    fn reads_verified_data_at_any_offset() {
        let dev = image(None);
        assert_eq!(dev.size(), 16 * 4096);
        let mut b = vec![0u8; 10_000];
        dev.read_at(&mut b, 4000).unwrap();
        let expected: Vec<u8> = (4000..14_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(b, expected);
        assert!(matches!(dev.write_at(&[0], 0), Err(Error::ReadOnly { .. })));
    }

    #[test]
    fn a_corrupt_block_fails_only_its_reads() {
        let dev = image(Some(5 * 4096 + 17));
        let mut b = vec![0u8; 4096];
        dev.read_at(&mut b, 4 * 4096).unwrap();
        let err = dev.read_at(&mut b[..10], 5 * 4096 + 4000).unwrap_err();
        assert!(matches!(err, Error::Verity(_)), "{err}");
        assert_eq!(err.errno(), rustix::io::Errno::IO.raw_os_error());
        dev.read_at(&mut b, 6 * 4096).unwrap();
    }
}
