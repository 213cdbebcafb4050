//! A block device as one FUSE file, for the loop driver.
//!
//! The FUSE file system is mounted *on a regular file* (the root inode is that file), so the
//! export is a single path that `losetup` attaches. The kernel sends reads and writes of up to
//! 1 MiB; several worker threads (each with its own `/dev/fuse` clone) serve them at once.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::FallocateFlags;
use sealvol_block::BlockDevice;

use crate::{Error, Result};

/// Largest read or write the kernel is asked to send (its own cap is 256 pages).
const MAX_IO: u32 = 1 << 20;

/// Attributes never change behind the kernel's back: cache them long.
const TTL: Duration = Duration::from_secs(3600);

/// How to export.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// Worker threads reading `/dev/fuse` (at least 1).
    pub threads: usize,
    /// Refuse writes (the file is mode 0400 and the mount `ro`).
    pub read_only: bool,
    /// Name shown as the mount's source in `/proc/mounts`.
    pub fsname: String,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            threads: 4,
            read_only: false,
            fsname: "sealvol".into(),
        }
    }
}

/// Plaintext bytes and requests the FUSE file served since it was mounted, counted as the
/// requests complete (a failed request counts nothing). Read them with
/// [`IoCounters::snapshot`] while the export runs ([`FileExport::counters`]).
#[derive(Debug, Default)]
pub struct IoCounters {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoSnapshot {
    /// Plaintext bytes read.
    pub read_bytes: u64,
    /// Plaintext bytes written.
    pub write_bytes: u64,
    /// Read requests served.
    pub reads: u64,
    /// Write requests served.
    pub writes: u64,
}

impl IoCounters {
    /// The counts now.
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    fn read(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self, n: usize) {
        self.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The FUSE file system: one inode, the device.
struct DeviceFile {
    dev: Arc<dyn BlockDevice>,
    counters: Arc<IoCounters>,
    read_only: bool,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

thread_local! {
    /// Each worker's read buffer, reused across requests.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn errno(e: &sealvol_block::Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl DeviceFile {
    fn attr(&self) -> FileAttr {
        let size = self.dev.size();
        FileAttr {
            ino: INodeNo::ROOT,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: FileType::RegularFile,
            perm: if self.read_only { 0o400 } else { 0o600 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: self.dev.block_size().max(512),
            flags: 0,
        }
    }
}

impl Filesystem for DeviceFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        // Direct I/O from an async caller (the loop device in direct-I/O mode) stays async:
        // the loop device keeps many requests in flight instead of one at a time.
        if let Err(e) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
            tracing::debug!(missing = ?e, "the kernel offers no async direct I/O");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::ENOENT);
    }

    fn getattr(&self, _req: &Request, _ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr());
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The size is the volume's: truncation is refused, everything else is ignored.
        match size {
            Some(s) if s != self.dev.size() => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &self.attr()),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        // Nobody else changes the data: keep the page cache across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = offset.saturating_add(size.into()).min(self.dev.size());
        let len = end.saturating_sub(offset) as usize;
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0);
            }
            match self.dev.read_at(&mut buf[..len], offset) {
                Ok(()) => {
                    self.counters.read(len);
                    reply.data(&buf[..len]);
                }
                Err(e) => {
                    tracing::error!(offset, len, error = %e, "read failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.dev.write_at(data, offset) {
            Ok(()) => {
                self.counters.wrote(data.len());
                reply.written(data.len() as u32);
            }
            Err(e) => {
                tracing::error!(offset, len = data.len(), error = %e, "write failed");
                reply.error(errno(&e));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): report any write-back error now.
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(error = %e, "fsync failed");
                reply.error(errno(&e));
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(flags) = FallocateFlags::from_bits(mode as u32) else {
            reply.error(Errno::EOPNOTSUPP);
            return;
        };
        let size = self.dev.size();
        let zero = FallocateFlags::PUNCH_HOLE | FallocateFlags::ZERO_RANGE;
        let result = if flags.intersects(zero) {
            // A punched hole or zeroed range of a file reads as zeros (the loop driver uses
            // both for discard and write-zeroes): encrypted zeros, which read as zeros under
            // dm-crypt too.
            if flags.contains(FallocateFlags::PUNCH_HOLE)
                && !flags.contains(FallocateFlags::KEEP_SIZE)
            {
                reply.error(Errno::EINVAL);
                return;
            }
            let len = length.min(size.saturating_sub(offset));
            self.dev.write_zeroes(offset, len)
        } else if flags.difference(FallocateFlags::KEEP_SIZE).is_empty() {
            // Preallocation: every byte is there already; growing is not possible.
            if offset.saturating_add(length) > size && !flags.contains(FallocateFlags::KEEP_SIZE) {
                reply.error(Errno::EFBIG);
                return;
            }
            Ok(())
        } else {
            reply.error(Errno::EOPNOTSUPP);
            return;
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(offset, length, error = %e, "fallocate failed");
                reply.error(errno(&e));
            }
        }
    }
}

/// A mounted FUSE export; unmounted by [`FileExport::unmount`] or when dropped.
pub struct FileExport {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    counters: Arc<IoCounters>,
}

impl std::fmt::Debug for FileExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileExport")
            .field("path", &self.path)
            .finish()
    }
}

impl FileExport {
    /// Mounts `dev` as the regular file `path` (which must exist; it is created empty with
    /// mode 0600 when missing).
    ///
    /// # Errors
    /// [`Error::Invalid`] when `path` is not a regular file; [`Error::Mount`] when the
    /// kernel refuses the mount.
    pub fn mount(dev: Arc<dyn BlockDevice>, path: &Path, opts: &FuseOptions) -> Result<Self> {
        if !path.exists() {
            std::fs::File::create(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "the FUSE export must be mounted on a regular file, and {} is not one",
                path.display()
            )));
        }
        let read_only = opts.read_only || dev.read_only();
        let counters = Arc::new(IoCounters::default());
        let fs = DeviceFile {
            dev,
            counters: Arc::clone(&counters),
            read_only,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            started: SystemTime::now(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(opts.fsname.clone()),
            MountOption::Subtype("sealvol".into()),
            MountOption::NoAtime,
            if read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        config.n_threads = Some(opts.threads.max(1));
        config.clone_fd = true;
        let session = fuser::spawn_mount(fs, path, &config).map_err(|source| Error::Mount {
            path: path.to_path_buf(),
            source,
        })?;
        tracing::info!(path = %path.display(), read_only, "FUSE export mounted");
        Ok(FileExport {
            session: Some(session),
            path: path.to_path_buf(),
            counters,
        })
    }

    /// The exported file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes and requests served so far (shared: it keeps counting).
    pub fn counters(&self) -> Arc<IoCounters> {
        Arc::clone(&self.counters)
    }

    /// False once the session has ended (unmounted from outside, or the kernel connection
    /// was aborted).
    pub fn is_running(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts and waits for the workers to stop.
    ///
    /// # Errors
    /// [`Error::Io`] when the kernel refuses (the file is still in use, for example by a
    /// loop device: detach it first).
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            session.umount_and_join().map_err(|e| {
                Error::io(
                    format!(
                        "cannot unmount the FUSE export {} (is a loop device still attached? `losetup -j {}`)",
                        self.path.display(),
                        self.path.display()
                    ),
                    e,
                )
            })?;
            tracing::info!(path = %self.path.display(), "FUSE export unmounted");
        }
        Ok(())
    }
}

impl Drop for FileExport {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::error!(error = %e, "unmount on drop failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealvol_block::MemDevice;
    use std::os::unix::fs::FileExt;

    /// Needs root and /dev/fuse (both there on the project's machines).
    #[test]
    fn fuse_export_serves_reads_writes_fsync_and_punch_hole() {
        if !Path::new("/dev/fuse").exists() || !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root and /dev/fuse");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        let mem = Arc::new(MemDevice::from_vec(vec![7u8; 3 << 20]));
        let dev: Arc<dyn BlockDevice> = mem.clone();
        let export = FileExport::mount(dev, &file, &FuseOptions::default()).unwrap();
        assert!(export.is_running());
        let counters = export.counters();
        assert_eq!(counters.snapshot(), IoSnapshot::default());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 3 << 20);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let big: Vec<u8> = (0..(2 << 20)).map(|i: u32| (i % 241) as u8).collect();
        f.write_all_at(&big, 12345).unwrap();
        f.sync_all().unwrap();
        assert_eq!(&mem.to_vec()[12345..12345 + big.len()], &big[..]);
        let mut back = vec![0u8; big.len()];
        f.read_exact_at(&mut back, 12345).unwrap();
        assert_eq!(back, big);
        // Every plaintext byte written reached the device through a counted write; reads
        // may come from the page cache, or be rounded up to pages, but are counted.
        let c = counters.snapshot();
        assert_eq!(c.write_bytes, big.len() as u64, "{c:?}");
        assert!(c.writes >= 2 && c.reads >= 1, "{c:?}");
        rustix::fs::fallocate(
            &f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            4096,
            8192,
        )
        .unwrap();
        let mut z = vec![1u8; 8192];
        f.read_exact_at(&mut z, 4096).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        assert!(f.set_len(1).is_err(), "truncation is refused");
        drop(f);
        export.unmount().unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "unmounted");
    }
}
