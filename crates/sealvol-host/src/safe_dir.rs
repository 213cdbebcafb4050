//! The one way sealvol touches its state and runtime directories: a directory held open by
//! descriptor ([`SafeDir`]), below which nothing is resolved through a symbolic link and
//! nothing escapes it.
//!
//! sealvol runs as root and its directories (`/var/lib/sealvol`, `/run/sealvol`) hold what it
//! wipes, truncates and writes. A path that is followed, even once, lets whoever can plant a
//! symbolic or hard link there make root zero or overwrite any file. So:
//!
//! - The root is opened once, by the path the administrator gave (symbolic links in that
//!   path, such as `/var/run -> /run`, are followed: that is configuration), created if
//!   missing with mode 0700, and refused when another user owns it or group or others may
//!   write in it ([`Error::UnsafeDir`], saying how to fix it).
//! - Everything below it is reached relative to its descriptor, one plain name at a time
//!   (never `/`, `.` or `..`): `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS` and `O_NOFOLLOW`, `mkdirat`, `renameat`, `unlinkat`, `fstatat`
//!   without following. A symbolic link where sealvol expects its own entry is an error
//!   ([`Error::Planted`]) or is removed (`unlinkat` removes the link, never its target).
//! - New files are created with `O_CREAT | O_EXCL` (a planted name is never reused) and an
//!   explicit mode set again with `fchmod`, whatever the umask.
//! - Files that are wiped ([`SafeDir::open_for_wipe`]) must be regular files with one link:
//!   a planted hard link is unlinked, never written through.
//!
//! External tools (`mount`, `losetup`, qemu, the FUSE mount) still take paths. sealvol
//! creates those entries through a [`SafeDir`] and checks, right before handing the path
//! over, that it still names what was made ([`SafeDir::verify`]: `openat2(O_PATH)` without
//! symbolic links, same device and inode). Between that check and the tool's own `open` there
//! is a window of microseconds in which only a process that can write in the directory could
//! swap the entry; the directories are 0700 and owned by root (checked on every open), so
//! only root can, and root needs no trick to write any file.
//!
//! `openat2` needs Linux 5.6 or later; on older kernels the same checks are made one
//! component at a time with `openat(O_NOFOLLOW)`.
//!
//! What it does not do: no policy about what the entries are (that is the volume and VM
//! managers'), no locking of its own (see [`SafeDir::lock_file`] for the files locks live in).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::{Error, Result};

/// How every name below a [`SafeDir`] is resolved: beneath it, without any symbolic link.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Mode of the parents of a root that sealvol creates (root-owned, writable by root only).
const PARENT_MODE: u32 = 0o755;
/// Mode of a root sealvol creates.
pub const ROOT_MODE: u32 = 0o700;

/// The identity of a file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The identity in `st`.
    pub fn of(st: &Stat) -> Self {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The identity of the open file `f`.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be stat'ed.
    pub fn of_file(f: impl AsFd) -> Result<Self> {
        rustix::fs::fstat(f)
            .map(|st| Self::of(&st))
            .map_err(|e| Error::io("cannot stat an open file", e.into()))
    }
}

/// What kind of entry a name is, as listed by [`SafeDir::entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (socket, FIFO, device).
    Other,
}

impl Kind {
    /// The kind of a file of mode `st_mode`.
    pub fn of_mode(st_mode: u32) -> Self {
        Self::of(FileType::from_raw_mode(st_mode))
    }

    fn of(t: FileType) -> Self {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// What [`SafeDir::open_for_wipe`] found.
#[derive(Debug)]
pub enum WipeTarget {
    /// Nothing by that name.
    Absent,
    /// The regular file, with one link, opened read-write.
    File(File),
    /// Something that must not be written through (a symbolic link, a hard link, a device
    /// ...): left untouched; a link was unlinked (the name, never its target).
    Refused {
        /// Its path.
        path: PathBuf,
        /// What it was and what was done, for logs and reports.
        reason: String,
    },
}

/// A directory held open by descriptor; every name below it is resolved without following
/// symbolic links and without leaving it. Cheap to clone (the descriptor is shared).
#[derive(Clone, Debug)]
pub struct SafeDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// The user name `chown` takes for the effective user.
fn me() -> String {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        "root".into()
    } else {
        uid.as_raw().to_string()
    }
}

fn io_err(context: String, e: Errno) -> Error {
    Error::io(context, e.into())
}

/// Checks that `name` is one plain file name: not empty, no `/`, not `.` or `..`, no NUL.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a plain file name (sealvol names its own entries with one path component, never '/', '.' or '..')"
        )));
    }
    Ok(())
}

/// `path` with its longest existing prefix made canonical (symbolic links resolved), the
/// rest appended as given: the form mount tables and loop devices report.
pub fn canonical_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        if let Ok(c) = std::fs::canonicalize(p) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                p = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl SafeDir {
    /// Opens the root directory `path`, creating it (mode 0700, missing parents 0755, both
    /// whatever the umask) when it does not exist.
    ///
    /// # Errors
    /// [`Error::UnsafeDir`] when it is owned by another user or writable by group or others
    /// (with the fix); [`Error::Io`] when it cannot be made or opened.
    pub fn open_root(path: &Path) -> Result<SafeDir> {
        make_root(path)?;
        Self::open_existing_root(path)?.ok_or_else(|| {
            Error::io(
                format!("cannot open {}", path.display()),
                std::io::ErrorKind::NotFound.into(),
            )
        })
    }

    /// Opens the root directory `path` if it exists (never creating it).
    ///
    /// # Errors
    /// As [`SafeDir::open_root`].
    pub fn open_existing_root(path: &Path) -> Result<Option<SafeDir>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR) => {
                return Err(Error::UnsafeDir {
                    path: path.to_path_buf(),
                    found: "it is not a directory".into(),
                    fix: "choose a directory".into(),
                })
            }
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()), e)),
        };
        check_owner_mode(&fd, path, true)?;
        // Mount tables and loop devices name files by their canonical paths: so does the
        // SafeDir, when that path still names this directory.
        let canonical = std::fs::canonicalize(path)
            .ok()
            .filter(|c| {
                rustix::fs::stat(c).is_ok_and(|st| {
                    rustix::fs::fstat(&fd).is_ok_and(|mine| FileId::of(&st) == FileId::of(&mine))
                })
            })
            .unwrap_or_else(|| path.to_path_buf());
        Ok(Some(SafeDir {
            fd: Arc::new(fd),
            path: canonical,
        }))
    }

    /// The directory's path (canonical when it was opened), for messages and tools.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory (for messages and external tools; see
    /// [`SafeDir::verify`] before handing it to one).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory's identity.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn id(&self) -> Result<FileId> {
        FileId::of_file(self.fd())
    }

    /// `openat2(name)` beneath this directory without symbolic links (`O_NOFOLLOW` and
    /// `O_CLOEXEC` added); falls back to `openat` with `O_NOFOLLOW` on kernels without
    /// `openat2` (the same for a name of one component).
    fn openat2(&self, name: &str, flags: OFlags, mode: u32) -> rustix::io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mode = Mode::from_raw_mode(mode);
        loop {
            match rustix::fs::openat2(self.fd(), name, flags, mode, RESOLVE) {
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(Errno::NOSYS) if !name.contains('/') => {
                    return rustix::fs::openat(self.fd(), name, flags, mode)
                }
                r => return r,
            }
        }
    }

    fn planted(&self, name: &str, found: impl Into<String>, action: impl Into<String>) -> Error {
        Error::Planted {
            path: self.join(name),
            found: found.into(),
            action: action.into(),
        }
    }

    /// What `name` is, without following it; `None` when absent.
    ///
    /// # Errors
    /// [`Error::Io`] other than "absent".
    pub fn stat(&self, name: &str) -> Result<Option<Stat>> {
        check_name(name)?;
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(
                format!("cannot stat {}", self.join(name).display()),
                e,
            )),
        }
    }

    /// Whether anything (of any kind, a dangling link included) is named `name`.
    pub fn exists(&self, name: &str) -> bool {
        self.stat(name).is_ok_and(|s| s.is_some())
    }

    /// The kind of `name`, without following it; `None` when absent.
    ///
    /// # Errors
    /// [`Error::Io`] other than "absent".
    pub fn kind(&self, name: &str) -> Result<Option<Kind>> {
        Ok(self
            .stat(name)?
            .map(|st| Kind::of(FileType::from_raw_mode(st.st_mode))))
    }

    fn wrap_dir(&self, name: &str, fd: OwnedFd, check: bool) -> Result<SafeDir> {
        let path = self.join(name);
        if check {
            check_owner_mode(&fd, &path, false)?;
        }
        Ok(SafeDir {
            fd: Arc::new(fd),
            path,
        })
    }

    fn open_dir_fd(&self, name: &str) -> Result<Option<OwnedFd>> {
        check_name(name)?;
        match self.openat2(name, OFlags::RDONLY | OFlags::DIRECTORY, 0) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            // O_DIRECTORY | O_NOFOLLOW on a symbolic link: ENOTDIR (or ELOOP).
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                if self.kind(name)? == Some(Kind::Symlink) {
                    Err(self.planted(
                        name,
                        "a symbolic link",
                        "sealvol never follows links in its directories; remove it",
                    ))
                } else {
                    Err(self.planted(
                        name,
                        "not a directory",
                        "sealvol expected its own directory there; remove it",
                    ))
                }
            }
            Err(e) => Err(io_err(
                format!("cannot open {}", self.join(name).display()),
                e,
            )),
        }
    }

    /// Opens the existing subdirectory `name` (owned by this user, not writable by group or
    /// others); `None` when absent.
    ///
    /// # Errors
    /// [`Error::Planted`] for a symbolic link or a non-directory; [`Error::UnsafeDir`].
    pub fn open_dir(&self, name: &str) -> Result<Option<SafeDir>> {
        self.open_dir_fd(name)?
            .map(|fd| self.wrap_dir(name, fd, true))
            .transpose()
    }

    /// Opens the subdirectory `name`, creating it with exactly `mode` when missing.
    ///
    /// # Errors
    /// As [`SafeDir::open_dir`].
    pub fn ensure_dir(&self, name: &str, mode: u32) -> Result<SafeDir> {
        check_name(name)?;
        let created = match rustix::fs::mkdirat(self.fd(), name, Mode::from_raw_mode(mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => {
                return Err(io_err(
                    format!("cannot create {}", self.join(name).display()),
                    e,
                ))
            }
        };
        let fd = self.open_dir_fd(name)?.ok_or_else(|| {
            Error::io(
                format!("{} vanished while it was made", self.join(name).display()),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        if created {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|e| io_err(format!("cannot chmod {}", self.join(name).display()), e))?;
        }
        self.wrap_dir(name, fd, true)
    }

    /// Like [`SafeDir::ensure_dir`], but a symbolic link or a non-directory at `name`, which
    /// sealvol never makes there, is removed first (logged; a link's target is untouched).
    ///
    /// # Errors
    /// As [`SafeDir::open_dir`].
    pub fn ensure_dir_replacing(&self, name: &str, mode: u32) -> Result<SafeDir> {
        if let Some(k) = self.kind(name)? {
            if k != Kind::Dir {
                tracing::warn!(path = %self.join(name).display(), kind = ?k, "removing what was planted where sealvol keeps a directory (never followed)");
                self.unlink(name)?;
            }
        }
        self.ensure_dir(name, mode)
    }

    /// Creates the subdirectory `name` with exactly `mode`; it must not exist.
    ///
    /// # Errors
    /// [`Error::Io`] (`AlreadyExists` when it exists).
    pub fn create_dir(&self, name: &str, mode: u32) -> Result<SafeDir> {
        check_name(name)?;
        rustix::fs::mkdirat(self.fd(), name, Mode::from_raw_mode(mode))
            .map_err(|e| io_err(format!("cannot create {}", self.join(name).display()), e))?;
        let fd = self.open_dir_fd(name)?.ok_or_else(|| {
            Error::io(
                format!("{} vanished while it was made", self.join(name).display()),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| io_err(format!("cannot chmod {}", self.join(name).display()), e))?;
        self.wrap_dir(name, fd, true)
    }

    /// Creates the new file `name` (`O_CREAT | O_EXCL`: an existing entry, a symbolic link
    /// included, is an error) with exactly `mode`, opened read-write.
    ///
    /// # Errors
    /// [`Error::Io`] (`AlreadyExists` when the name is taken).
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File> {
        check_name(name)?;
        let fd = self
            .openat2(name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, mode)
            .map_err(|e| io_err(format!("cannot create {}", self.join(name).display()), e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| io_err(format!("cannot chmod {}", self.join(name).display()), e))?;
        Ok(File::from(fd))
    }

    /// Removes whatever is named `name` (a file, a link, a socket; not a directory) and
    /// creates a new file there as [`SafeDir::create_new`] does. A symbolic or hard link is
    /// logged as planted: the link goes, its target is never opened.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Planted`] for a directory at `name`.
    pub fn replace_file(&self, name: &str, mode: u32) -> Result<File> {
        self.remove_stale(name)?;
        self.create_new(name, mode)
    }

    /// Unlinks a stale entry `name` that sealvol is about to make anew, logging a planted link.
    fn remove_stale(&self, name: &str) -> Result<()> {
        let Some(st) = self.stat(name)? else {
            return Ok(());
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                return Err(self.planted(
                    name,
                    "a directory",
                    "sealvol expected a file of its own there; remove it",
                ))
            }
            FileType::Symlink => {
                tracing::warn!(path = %self.join(name).display(), "removing a symbolic link planted where sealvol makes a file (never followed)");
            }
            FileType::RegularFile if st.st_nlink > 1 => {
                tracing::warn!(path = %self.join(name).display(), links = st.st_nlink, "removing a hard link planted where sealvol makes a file (never written through)");
            }
            _ => {}
        }
        self.unlink(name)
    }

    /// `unlinkat(name)` (not a directory); absent is fine.
    fn unlink(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(
                format!("cannot remove {}", self.join(name).display()),
                e,
            )),
        }
    }

    /// Opens the existing file `name` for reading; `None` when absent.
    ///
    /// # Errors
    /// [`Error::Planted`] for a symbolic link or something that is not a regular file.
    pub fn open_read(&self, name: &str) -> Result<Option<File>> {
        check_name(name)?;
        let fd =
            match self.openat2(name, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) => return Err(self.planted(
                    name,
                    "a symbolic link",
                    "sealvol never follows links in its directories and did not read it; remove it",
                )),
                Err(e) => {
                    return Err(io_err(
                        format!("cannot open {}", self.join(name).display()),
                        e,
                    ))
                }
            };
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| io_err(format!("cannot stat {}", self.join(name).display()), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.planted(
                name,
                "not a regular file",
                "sealvol did not read it; remove it",
            ));
        }
        Ok(Some(File::from(fd)))
    }

    /// The whole content of the file `name`; `None` when absent.
    ///
    /// # Errors
    /// As [`SafeDir::open_read`].
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut f) = self.open_read(name)? else {
            return Ok(None);
        };
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| Error::io(format!("cannot read {}", self.join(name).display()), e))?;
        Ok(Some(v))
    }

    /// Writes `bytes` to `name` atomically and durably, with exactly `mode`: an exclusively
    /// created temporary file `.<name>.tmp` (whatever was planted there is unlinked, never
    /// followed), fsync, `renameat` over `name` (which replaces a link at `name`, never
    /// writing through it), fsync of this directory. A reader sees the old content or the
    /// new, never half of it; once this returns, the new content is on disk.
    ///
    /// # Errors
    /// [`Error::Io`] naming `name`.
    pub fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        check_name(name)?;
        let tmp = format!(".{name}.tmp");
        let io = |e| Error::io(format!("cannot write {}", self.join(name).display()), e);
        self.remove_stale(&tmp)?;
        let mut f = self.create_new(&tmp, mode)?;
        if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
            let _ = self.unlink(&tmp);
            return Err(io(e));
        }
        drop(f);
        if let Err(e) = rustix::fs::renameat(self.fd(), &tmp, self.fd(), name) {
            let _ = self.unlink(&tmp);
            return Err(io(e.into()));
        }
        self.sync()
    }

    /// Opens (creating, with mode 0600) the lock file `name`. A symbolic link, a hard link
    /// or a non-file there is unlinked (logged) and a file of sealvol's own made instead: a
    /// lock is never taken on a planted file.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Planted`] for a directory.
    pub fn lock_file(&self, name: &str) -> Result<File> {
        check_name(name)?;
        loop {
            match self.openat2(name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, 0o600) {
                Ok(fd) => {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(|e| {
                        io_err(format!("cannot chmod {}", self.join(name).display()), e)
                    })?;
                    return Ok(File::from(fd));
                }
                Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(io_err(
                        format!("cannot create the lock {}", self.join(name).display()),
                        e,
                    ))
                }
            }
            match self.openat2(name, OFlags::RDWR | OFlags::NONBLOCK, 0) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd).map_err(|e| {
                        io_err(format!("cannot stat {}", self.join(name).display()), e)
                    })?;
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                        && st.st_nlink == 1
                    {
                        return Ok(File::from(fd));
                    }
                    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                        return Err(self.planted(
                            name,
                            "a directory",
                            "sealvol expected its lock file there; remove it",
                        ));
                    }
                    // Only the name that still is this file goes.
                    if self
                        .stat(name)?
                        .is_some_and(|now| FileId::of(&now) == FileId::of(&st))
                    {
                        self.remove_stale(name)?;
                    }
                }
                Err(Errno::LOOP) | Err(Errno::NXIO) | Err(Errno::NODEV) => {
                    self.remove_stale(name)?
                }
                Err(Errno::ISDIR) => {
                    return Err(self.planted(
                        name,
                        "a directory",
                        "sealvol expected its lock file there; remove it",
                    ))
                }
                Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(io_err(
                        format!("cannot open the lock {}", self.join(name).display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Opens the existing lock file `name` read-only to test it; `None` when absent or not
    /// a regular file of one link (a planted link is nobody's lock).
    pub fn existing_lock_file(&self, name: &str) -> Option<File> {
        check_name(name).ok()?;
        let fd = self
            .openat2(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)
            .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink == 1)
            .then(|| File::from(fd))
    }

    /// Opens `name` to be wiped in place: only a regular file with one link, reached
    /// without any symbolic link, is returned. A symbolic or hard link is unlinked (the
    /// name; its target is never opened) and reported as refused, with a log line; anything
    /// else that is not a regular file is refused and left.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn open_for_wipe(&self, name: &str) -> Result<WipeTarget> {
        let Some(st) = self.stat(name)? else {
            return Ok(WipeTarget::Absent);
        };
        let path = self.join(name);
        let refuse = |reason: String| {
            tracing::warn!(path = %path.display(), reason = %reason, "not wiping: not the file sealvol made");
            Ok(WipeTarget::Refused {
                path: path.clone(),
                reason,
            })
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let to = rustix::fs::readlinkat(self.fd(), name, Vec::new())
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.unlink(name)?;
                return refuse(format!(
                    "a symbolic link (to {to:?}): the link was removed, its target left untouched"
                ));
            }
            FileType::RegularFile if st.st_nlink > 1 => {
                self.unlink(name)?;
                return refuse(format!(
                    "a hard link ({} links): this name was removed, the file left untouched",
                    st.st_nlink
                ));
            }
            FileType::RegularFile => {}
            other => return refuse(format!("not a regular file ({other:?}): left untouched")),
        }
        let fd = match self.openat2(name, OFlags::RDWR | OFlags::NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(WipeTarget::Absent),
            Err(Errno::LOOP) => {
                self.unlink(name)?;
                return refuse(
                    "a symbolic link: the link was removed, its target left untouched".into(),
                );
            }
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()), e)),
        };
        let now = rustix::fs::fstat(&fd)
            .map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
        if FileId::of(&now) != FileId::of(&st)
            || FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
            || now.st_nlink != 1
        {
            return refuse("it changed while it was opened: left untouched".into());
        }
        Ok(WipeTarget::File(File::from(fd)))
    }

    /// Checks that `rel` (names joined by `/`, each plain) still names the file `made`,
    /// reached beneath this directory without any symbolic link, and returns its path, to be
    /// handed to an external tool right away.
    ///
    /// # Errors
    /// [`Error::Planted`] when it is a link or another file.
    pub fn verify(&self, rel: &str, made: FileId) -> Result<PathBuf> {
        for part in rel.split('/') {
            check_name(part)?;
        }
        let fd = match self.open_path_beneath(rel) {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::XDEV) => {
                return Err(self.planted(
                    rel,
                    "reached through a symbolic link",
                    "sealvol never hands such a path to a tool; remove it",
                ))
            }
            Err(e) => {
                return Err(io_err(
                    format!("cannot open {}", self.join(rel).display()),
                    e,
                ))
            }
        };
        let id = FileId::of_file(&fd)?;
        if id != made {
            return Err(self.planted(
                rel,
                "no longer the file sealvol made",
                "something replaced it; remove it and try again",
            ));
        }
        Ok(self.join(rel))
    }

    /// An `O_PATH` descriptor of `rel` beneath this directory, reached without any symbolic
    /// link: `openat2`, or on kernels without it one `openat(O_PATH | O_NOFOLLOW)` per
    /// component (the names were checked: no `..`).
    fn open_path_beneath(&self, rel: &str) -> rustix::io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        match rustix::fs::openat2(self.fd(), rel, flags, Mode::empty(), RESOLVE) {
            Err(Errno::NOSYS) => self.open_path_walk(rel),
            r => r,
        }
    }

    /// [`SafeDir::open_path_beneath`] without `openat2`.
    fn open_path_walk(&self, rel: &str) -> rustix::io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let parts: Vec<&str> = rel.split('/').collect();
        let mut cur: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let base = cur.as_ref().map_or(self.fd(), |f| f.as_fd());
            let dir = if last {
                OFlags::empty()
            } else {
                OFlags::DIRECTORY
            };
            let fd =
                rustix::fs::openat(base, *part, flags | OFlags::NOFOLLOW | dir, Mode::empty())?;
            if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink {
                return Err(Errno::LOOP);
            }
            cur = Some(fd);
        }
        cur.ok_or(Errno::INVAL)
    }

    /// Removes the file, link or other non-directory `name`; returns whether it was there.
    ///
    /// # Errors
    /// [`Error::Io`] (a directory is an error).
    pub fn remove_file(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err(
                format!("cannot remove {}", self.join(name).display()),
                e,
            )),
        }
    }

    /// Removes the empty directory `name`; a symbolic link or file planted there instead is
    /// unlinked (logged, never followed). Returns whether anything was there.
    ///
    /// # Errors
    /// [`Error::Io`] (a non-empty directory or a mount point is an error).
    pub fn remove_dir(&self, name: &str) -> Result<bool> {
        match self.kind(name)? {
            None => Ok(false),
            Some(Kind::Dir) => match rustix::fs::unlinkat(self.fd(), name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(io_err(
                    format!("cannot remove {}", self.join(name).display()),
                    e,
                )),
            },
            Some(k) => {
                tracing::warn!(path = %self.join(name).display(), kind = ?k, "removing what was planted where sealvol keeps a directory (never followed)");
                self.unlink(name)?;
                Ok(true)
            }
        }
    }

    /// Removes `name` and, for a directory, everything in it, never following a symbolic
    /// link and never crossing into another mount (a mount point below is an error).
    /// Returns whether anything was there.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remove_tree(&self, name: &str) -> Result<bool> {
        match self.kind(name)? {
            None => Ok(false),
            Some(Kind::Dir) => {
                let fd = rustix::fs::openat2(
                    self.fd(),
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE | ResolveFlags::NO_XDEV,
                )
                .map_err(|e| io_err(format!("cannot open {}", self.join(name).display()), e))?;
                let sub = self.wrap_dir(name, fd, false)?;
                for (n, _) in sub.entries()? {
                    sub.remove_tree(&n)?;
                }
                // A mount point below would have failed above (NO_XDEV).
                match rustix::fs::unlinkat(self.fd(), name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(true),
                    Err(e) => Err(io_err(
                        format!("cannot remove {}", self.join(name).display()),
                        e,
                    )),
                }
            }
            Some(_) => {
                self.unlink(name)?;
                Ok(true)
            }
        }
    }

    /// The entries of this directory (without `.` and `..`; names that are not UTF-8 are
    /// not sealvol's and are left out), sorted by name.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn entries(&self) -> Result<Vec<(String, Kind)>> {
        let io = |e: Errno| io_err(format!("cannot list {}", self.path.display()), e);
        let mut dir = rustix::fs::Dir::read_from(self.fd()).map_err(io)?;
        let mut out = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(io)?;
            let Ok(name) = e.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                FileType::Unknown => self.kind(name)?.unwrap_or(Kind::Other),
                t => Kind::of(t),
            };
            out.push((name.to_string(), kind));
        }
        out.sort();
        Ok(out)
    }

    /// fsyncs this directory, so that creations, renames and removals in it are durable.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(self.fd())
            .map_err(|e| io_err(format!("cannot sync {}", self.path.display()), e))
    }
}

/// Refuses a directory owned by another user or writable by group or others.
fn check_owner_mode(fd: &OwnedFd, path: &Path, root: bool) -> Result<()> {
    let st =
        rustix::fs::fstat(fd).map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
    let euid = rustix::process::geteuid().as_raw();
    let fix = if root {
        format!(
            "fix it with `chown {}: {p} && chmod 0700 {p}`, or choose another directory",
            me(),
            p = path.display()
        )
    } else {
        format!(
            "sealvol makes its own directories owned by it with mode 0700; fix it with `chown {}: {p} && chmod 0700 {p}`, or remove it",
            me(),
            p = path.display()
        )
    };
    if st.st_uid != euid {
        return Err(Error::UnsafeDir {
            path: path.to_path_buf(),
            found: format!(
                "it is owned by uid {}, not by this user (uid {euid}), so that user could plant links in it",
                st.st_uid
            ),
            fix,
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(Error::UnsafeDir {
            path: path.to_path_buf(),
            found: format!(
                "its mode {:04o} lets group or others write in it (and plant links)",
                st.st_mode & 0o7777
            ),
            fix,
        });
    }
    Ok(())
}

/// Creates `path` (mode 0700) and its missing parents (0755), modes set exactly.
fn make_root(path: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match rustix::fs::stat(p) {
            Ok(_) => break,
            Err(Errno::NOENT) => {
                missing.push(p);
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(io_err(format!("cannot stat {}", p.display()), e)),
        }
    }
    for (i, dir) in missing.iter().rev().enumerate() {
        let mode = if i + 1 == missing.len() {
            ROOT_MODE
        } else {
            PARENT_MODE
        };
        match rustix::fs::mkdir(*dir, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                let fd = rustix::fs::open(
                    *dir,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(format!("cannot open {}", dir.display()), e))?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                    .map_err(|e| io_err(format!("cannot chmod {}", dir.display()), e))?;
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err(format!("cannot create {}", dir.display()), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
