//! A file or block device as a [`BlockDevice`].

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use crate::aligned::{is_aligned, AlignedBuf};
use crate::stripe::StripeLocks;
use crate::{check_range, BlockDevice, Error, Result};

/// Alignment of offsets, lengths and memory for `O_DIRECT` (the largest logical block size
/// in use, so it works on every device).
const DIRECT_ALIGN: u64 = 4096;

/// Largest bounce buffer of an unaligned `O_DIRECT` request.
const BOUNCE_CHUNK: u64 = 1 << 20;

/// How to open a [`FileDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// Bypass the page cache (`O_DIRECT`). Unaligned requests go through an aligned bounce
    /// buffer; writes that cover 4096-byte blocks partly are read-modify-write under a
    /// per-block lock.
    pub direct: bool,
}

/// A regular file or block device: `pread`/`pwrite` at any offset from any thread,
/// `fdatasync` for [`BlockDevice::flush`], hole punching for discard and zeroing.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    opts: FileOptions,
    locks: StripeLocks,
}

impl FileDevice {
    /// Opens `path`. The size is fixed at open (the file's length, or the block device's).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when it cannot be opened; [`Error::Invalid`] for
    /// `O_DIRECT` on a file whose size is not a multiple of 4096.
    pub fn open(path: &Path, opts: FileOptions) -> Result<Self> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        }
        let file = oo.open(path).map_err(|e| {
            let what = if opts.read_only {
                "reading"
            } else {
                "reading and writing"
            };
            Error::io(format!("cannot open {} for {what}", path.display()), e)
        })?;
        Self::from_file(file, opts).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Wraps an open file; `opts` must match how it was opened.
    ///
    /// # Errors
    /// [`Error::Io`] when its size cannot be found; [`Error::Invalid`] for `O_DIRECT` on a
    /// size that is not a multiple of 4096.
    pub fn from_file(file: File, opts: FileOptions) -> Result<Self> {
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("cannot find the size of the device", e))?;
        if opts.direct && size % DIRECT_ALIGN != 0 {
            return Err(Error::Invalid(format!(
                "O_DIRECT needs a size that is a multiple of {DIRECT_ALIGN} bytes, not {size}; \
                 open it without direct I/O"
            )));
        }
        Ok(FileDevice {
            file,
            size,
            opts,
            locks: StripeLocks::new(),
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check_writable(&self, what: &'static str) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly {
                what,
                why: "the file was opened read-only",
            });
        }
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("read of {} bytes at {offset}", buf.len()), e))
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(format!("write of {} bytes at {offset}", buf.len()), e))
    }

    /// `O_DIRECT` read of any range: straight into `buf` when aligned, else through a bounce
    /// buffer covering the aligned blocks.
    fn direct_read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset % DIRECT_ALIGN == 0 && is_aligned(buf, DIRECT_ALIGN as usize) {
            return self.pread(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let start = pos - pos % DIRECT_ALIGN;
            let want = (buf.len() - done) as u64;
            let end = (pos + want.min(BOUNCE_CHUNK)).next_multiple_of(DIRECT_ALIGN);
            let mut bounce = AlignedBuf::new((end - start) as usize, DIRECT_ALIGN as usize);
            self.pread(bounce.as_mut_slice(), start)?;
            let skip = (pos - start) as usize;
            let n = (end - pos).min(want) as usize;
            buf[done..done + n].copy_from_slice(&bounce.as_slice()[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    /// `O_DIRECT` write of any range: partial blocks at either end are read, patched and
    /// written back under their stripe locks.
    fn direct_write(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        if offset % DIRECT_ALIGN == 0 && is_aligned(buf, DIRECT_ALIGN as usize) {
            return self.pwrite(buf, offset);
        }
        let start = offset - offset % DIRECT_ALIGN;
        let stop = end.next_multiple_of(DIRECT_ALIGN);
        let head_partial = offset % DIRECT_ALIGN != 0 || end - start < DIRECT_ALIGN;
        let tail_partial = end % DIRECT_ALIGN != 0;
        let (first_block, last_block) = (start / DIRECT_ALIGN, (stop - 1) / DIRECT_ALIGN);
        let _guards =
            (head_partial || tail_partial).then(|| self.locks.lock_pair(first_block, last_block));
        let mut bounce = AlignedBuf::new((stop - start) as usize, DIRECT_ALIGN as usize);
        let b = bounce.as_mut_slice();
        let a = DIRECT_ALIGN as usize;
        if head_partial {
            self.pread(&mut b[..a], start)?;
        }
        if tail_partial && (stop - start) as usize > a {
            let len = b.len();
            self.pread(&mut b[len - a..], stop - DIRECT_ALIGN)?;
        }
        let skip = (offset - start) as usize;
        b[skip..skip + buf.len()].copy_from_slice(buf);
        self.pwrite(b, start)
    }

    fn punch(&self, offset: u64, len: u64) -> rustix::io::Result<()> {
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.opts.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.size)?;
        if self.opts.direct {
            self.direct_read(buf, offset)
        } else {
            self.pread(buf, offset)
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable("write")?;
        check_range("write", offset, buf.len() as u64, self.size)?;
        if self.opts.direct {
            self.direct_write(buf, offset)
        } else {
            self.pwrite(buf, offset)
        }
    }

    fn flush(&self) -> Result<()> {
        rustix::fs::fdatasync(&self.file)
            .map_err(|e| Error::io("fdatasync of the device", e.into()))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard")?;
        check_range("discard", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        match self.punch(offset, len) {
            // Discard is advisory: a file system without holes keeps the data.
            Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(Error::io(
                format!("punching a hole of {len} bytes at {offset}"),
                e.into(),
            )),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("write zeroes")?;
        check_range("write zeroes", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        match self.punch(offset, len) {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP) => {
                // No holes here: write the zeros.
                let zeros = AlignedBuf::new(BOUNCE_CHUNK.min(len) as usize, DIRECT_ALIGN as usize);
                let mut pos = 0;
                while pos < len {
                    let n = (len - pos).min(BOUNCE_CHUNK) as usize;
                    self.write_at(&zeros.as_slice()[..n], offset + pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(Error::io(
                format!("zeroing {len} bytes at {offset}"),
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(size: u64, direct: bool) -> (tempfile::TempDir, FileDevice) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let dev = FileDevice::open(
            &path,
            FileOptions {
                read_only: false,
                direct,
            },
        );
        match dev {
            Ok(d) => (dir, d),
            // tmpfs has no O_DIRECT: test buffered I/O only then.
            Err(_) if direct => device(size, false),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn unaligned_reads_and_writes_round_trip() {
        for direct in [false, true] {
            let (_dir, dev) = device(64 << 10, direct);
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            dev.write_at(&data, 1234).unwrap();
            let mut back = vec![0u8; data.len()];
            dev.read_at(&mut back, 1234).unwrap();
            assert_eq!(back, data);
            let mut one = [0u8; 1];
            dev.read_at(&mut one, 1233).unwrap();
            assert_eq!(one[0], 0);
            dev.write_zeroes(2000, 5000).unwrap();
            dev.read_at(&mut back, 1234).unwrap();
            assert!(back[766..5766].iter().all(|&b| b == 0));
            assert_eq!(back[5766..], data[5766..]);
            dev.flush().unwrap();
        }
    }

    #[test]
    fn out_of_range_and_read_only_are_refused() {
        let (dir, dev) = device(8192, false);
        assert!(matches!(
            dev.write_at(&[1; 10], 8190),
            Err(Error::OutOfRange { .. })
        ));
        drop(dev);
        let ro = FileDevice::open(
            &dir.path().join("disk"),
            FileOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();
        assert!(ro.read_only());
        let err = ro.write_at(&[1], 0).unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }));
        assert_eq!(err.errno(), Errno::ROFS.raw_os_error());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = FileDevice::open(Path::new("/nonexistent/disk.img"), FileOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/disk.img"), "{err}");
    }
}
