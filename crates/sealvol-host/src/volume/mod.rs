//! Workload volumes: one sealed volume per workload id, created, opened, closed and destroyed
//! as single operations that survive crashes, bad input and concurrent callers.
//!
//! # The state directory
//!
//! [`Manager`] owns one directory (default [`DEFAULT_STATE_DIR`]):
//!
//! ```text
//! records/<id>.json   the record (journal) of the id: phase, parameters, steps done
//! volumes/<id>/       disk.img (sparse LUKS2 image), header.img (detached header, if chosen)
//! mnt/<id>/           where the volume's file system is mounted
//! locks/<id>.lock     flock per id; sweep.lock: the global lock
//! ```
//!
//! Records are small JSON files replaced atomically: written to a temporary file, fsynced,
//! renamed over the old one, then the directory is fsynced. A reader sees the old record or
//! the new one, never half of one, and a record that a call returned after is on disk. That
//! is all the journal needs (one writer per id under its lock, a few writes per operation),
//! so there is no embedded database to trust or to carry.
//!
//! # Crash safety
//!
//! Every operation writes its intent first and its completion last:
//!
//! - `create` records phase `creating` before it touches anything, then makes the image,
//!   formats it (the keyslot is fsynced before anything depends on it), makes the file system
//!   through the export (FUSE → loop → `mkfs`), mounts or closes it, and only then records
//!   `ready`. A failure undoes every step; a crash leaves `creating`, which the next `create`,
//!   `destroy` or `sweep` of the id undoes. The caller was never told the volume exists, so
//!   nobody's data is lost by undoing it.
//! - `destroy` records phase `destroying`, stops the export, wipes the header area of the
//!   image (both binary headers, both JSON areas and every keyslot), every other file of the
//!   id (detached header, any header backup) in place, then deletes the files and finally the
//!   record. Keys go before data: after any crash, either the key still opens the data or the
//!   data is ciphertext without a key. `sweep` finishes it.
//!
//! Keys never pass through this module: the steps that need one (format, open) are a
//! [`Keyed`] implementation the caller provides, holding the key itself.
//!
//! # Locks
//!
//! Every call on an id holds `sweep.lock` shared and `locks/<id>.lock` exclusive (blocking),
//! so calls on one id run one after the other and calls on different ids run in parallel;
//! [`Manager::sweep`] holds `sweep.lock` exclusive.
//!
//! ```no_run
//! use sealvol_host::state::StateDir;
//! use sealvol_host::volume::{Manager, VolumeId};
//! let m = Manager::new("/var/lib/sealvol", StateDir::new("/run/sealvol"));
//! let id = VolumeId::parse("web-1")?;
//! for v in m.list()? {
//!     println!("{} {}", v.id, v.phase.as_str());
//! }
//! m.destroy(&id)?;
//! # Ok::<(), sealvol_host::Error>(())
//! ```

mod record;
pub mod served;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::Serialize;

pub(crate) use record::{ids_in, read_record, remove_durably, sync_dir, write_atomic};
pub use record::{LuksType, Params, Phase, Record, VolumeId, MAX_ID_LEN};
use served::Busy;

use crate::lock::VolumeLock;
use crate::state::{volume_id, StateDir};
use crate::{loopdev, mount, Error, Result};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sealvol";
/// The header area of an attached LUKS2 header (cryptsetup's default data offset, 16 MiB):
/// what the free-space check reserves and what `destroy` wipes when the record does not say.
pub const DEFAULT_HEADER_AREA: u64 = 16 << 20;
/// Largest volume: 16 TiB.
pub const MAX_SIZE: u64 = 16 << 40;
/// Debug builds only: `kill -9` this process when it reaches the named step
/// (see [`crash_point`]).
pub const CRASH_ENV: &str = "SEALVOL_TEST_CRASH_AT";
/// How long `destroy` retries a busy unmount before detaching lazily.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How long an export gets to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every step a crash can be injected at, in order (`create:…`, then `destroy:…`).
pub const CRASH_STEPS: &[&str] = &[
    "create:journal",
    "create:image",
    "create:format",
    "create:mkfs",
    "create:close",
    "create:ready",
    "destroy:journal",
    "destroy:unmount",
    "destroy:erase",
    "destroy:delete",
];

/// Test hook, compiled into debug builds only: when `SEALVOL_TEST_CRASH_AT` names `step`,
/// the process kills itself with SIGKILL, as a power cut or OOM kill would. It carries a
/// step name, never a key. Release builds ignore it.
pub fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        tracing::warn!(step, "test hook: killing this process");
        crate::process::kill(crate::process::this_pid());
        std::thread::sleep(Duration::from_secs(60));
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// Why a [`Keyed`] step failed (a message without key material).
#[derive(Debug)]
pub struct KeyedError {
    /// What went wrong.
    pub message: String,
    /// The key opens no keyslot (a clean "no").
    pub wrong_key: bool,
}

/// A freshly formatted volume.
#[derive(Clone, Debug)]
pub struct Formatted {
    /// LUKS UUID.
    pub uuid: String,
    /// Bytes at the start of the image holding the header and keyslots (0 when detached).
    pub header_area: u64,
}

/// The steps that need the key, provided by the caller, which holds the key.
pub trait Keyed {
    /// Formats `image` as `luks_type` (header in `header` when given) with `data_size`
    /// bytes of data, sizing the (sparse) image, and makes it durable.
    ///
    /// # Errors
    /// Any failure, described without key material.
    fn format(
        &mut self,
        image: &Path,
        header: Option<&Path>,
        data_size: u64,
        luks_type: LuksType,
    ) -> std::result::Result<Formatted, KeyedError>;

    /// Unlocks the volume and starts its export, mounted on `mount` (after `mkfs` of that
    /// type, when given).
    ///
    /// # Errors
    /// A wrong key (with `wrong_key`), or any failure, described without key material.
    fn open(
        &mut self,
        image: &Path,
        header: Option<&Path>,
        mount: &Path,
        mkfs: Option<&str>,
    ) -> std::result::Result<(), KeyedError>;
}

/// Options of [`Manager::create`] that are not volume parameters.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Leave the volume mounted.
    pub mount: bool,
    /// Allow a sparse image larger than the free space.
    pub sparse_ok: bool,
}

/// What [`Manager::create`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    /// The volume existed already with the same parameters: nothing was made.
    pub already_existed: bool,
    /// The volume's state now.
    pub status: Status,
    /// What the sweep of this id repaired first.
    pub swept: Vec<Action>,
}

/// What [`Manager::destroy`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Destroyed {
    /// The id.
    pub id: VolumeId,
    /// There was nothing to destroy.
    pub already_absent: bool,
    /// The mount was busy and was detached lazily.
    pub lazy_unmount: bool,
    /// Files wiped in place before deletion, and how many bytes of each.
    pub wiped: Vec<(PathBuf, u64)>,
}

/// One repair made by a sweep.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Action {
    /// The id it concerned.
    pub id: String,
    /// What was done.
    pub action: String,
}

/// What is known about one volume.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The id.
    pub id: VolumeId,
    /// Its phase.
    pub phase: Phase,
    /// Created with.
    pub params: Params,
    /// LUKS UUID.
    pub uuid: Option<String>,
    /// The image.
    pub image: PathBuf,
    /// The detached header, if any.
    pub header: Option<PathBuf>,
    /// Where it is (or would be) mounted.
    pub mount_path: PathBuf,
    /// Whether it is mounted now by a live export.
    pub mounted: bool,
    /// The export process, when open.
    pub export_pid: Option<u32>,
    /// The loop device, when open.
    pub loop_device: Option<PathBuf>,
}

/// Container runtime arguments that bind a mounted volume.
#[derive(Clone, Debug, Serialize)]
pub struct BindArgs {
    /// The host directory (the volume's mount point).
    pub source: PathBuf,
    /// The path inside the container.
    pub target: PathBuf,
    /// `docker run --mount` / `podman run --mount` value.
    pub mount: String,
    /// `docker run -v` value.
    pub volume: String,
}

/// Rounds a size for display: `64 MiB`.
pub fn human_size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    let mut v = n;
    while i + 1 < units.len() && v >= 1024 && v % 1024 == 0 {
        v /= 1024;
        i += 1;
    }
    format!("{v} {}", units[i])
}

/// The smallest data area `mkfs.<fs>` accepts with room to use.
pub fn min_data_size(fs: &str) -> u64 {
    match fs {
        "xfs" => 300 << 20,
        "btrfs" => 128 << 20,
        _ => 16 << 20,
    }
}

/// Checks a requested size before anything is touched: a multiple of 4096, at least the
/// minimum for the file system, at most [`MAX_SIZE`], and (unless `sparse_ok`) no more than
/// the free space `free` with the header.
///
/// # Errors
/// [`Error::Invalid`] naming the limit and what to do.
pub fn check_size(params: &Params, free: u64, sparse_ok: bool, dir: &Path) -> Result<()> {
    let size = params.size;
    let min = min_data_size(&params.fs);
    if size < min {
        return Err(Error::Invalid(format!(
            "--size {} is too small: a volume needs at least {} of data for {} (plus {} of LUKS2 header); give --size {} or more",
            human_size(size),
            human_size(min),
            params.fs,
            human_size(DEFAULT_HEADER_AREA),
            human_size(min)
        )));
    }
    if size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "--size {} is larger than the largest volume sealvol makes ({})",
            human_size(size),
            human_size(MAX_SIZE)
        )));
    }
    if size % 4096 != 0 {
        return Err(Error::Invalid(format!(
            "--size {size} is not a multiple of 4096 bytes (the encryption sector); round it, for example to {}",
            size.next_multiple_of(4096)
        )));
    }
    let need = size + DEFAULT_HEADER_AREA;
    if !sparse_ok && need > free {
        return Err(Error::Invalid(format!(
            "--size {} needs {} with its header but {} has only {} free; free some space, choose a smaller size, or pass --sparse-ok to make a sparse volume that may fill the disk later",
            human_size(size),
            human_size(need),
            dir.display(),
            human_size(free)
        )));
    }
    Ok(())
}

/// Bytes free for unprivileged use on the file system holding `path` (or its nearest
/// existing ancestor).
pub fn free_space(path: &Path) -> Result<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let st = rustix::fs::statvfs(p)
                .map_err(|e| Error::io(format!("cannot statvfs {}", p.display()), e.into()))?;
            return Ok(st.f_bavail.saturating_mul(st.f_frsize));
        }
        p = p.parent().unwrap_or(Path::new("/"));
    }
}

/// Overwrites the allocated parts of `[0, len)` of `path` with zeros in place and fsyncs it
/// (holes hold nothing and are skipped, so a full disk does not stop a wipe). Returns the
/// bytes it covered, or `None` when the file does not exist.
fn wipe(path: &Path, len: Option<u64>) -> Result<Option<u64>> {
    let io = |e| Error::io(format!("cannot wipe {}", path.display()), e);
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let file_len = f.metadata().map_err(io)?.len();
    let end = len.map_or(file_len, |l| l.min(file_len));
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < end {
        let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only holes from here on
            Err(e) => return Err(io(e.into())),
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(data))
            .map_err(|e| io(e.into()))?
            .min(end);
        f.seek(SeekFrom::Start(data)).map_err(io)?;
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(zeros.len());
            f.write_all(&zeros[..n]).map_err(io)?;
            at += n as u64;
        }
        pos = hole;
    }
    f.sync_all().map_err(io)?;
    Ok(Some(end))
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A held lock: released on drop (or when the process dies).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// Takes the exclusive lock file `path`, waiting for whoever holds it. An owner that
/// removes the lock file while holding it (a destroy) leaves a waiter holding a lock on a
/// removed file: the waiter sees that the path no longer names it and tries again.
pub(crate) fn lock_exclusive(path: &Path) -> Result<Held> {
    loop {
        let file = Manager::flock(path, FlockOperation::LockExclusive)?;
        let held = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        match std::fs::metadata(path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                return Ok(Held { _file: file })
            }
            _ => continue,
        }
    }
}

/// Takes the lock file `path` shared, waiting for an exclusive holder.
pub(crate) fn lock_shared(path: &Path) -> Result<Held> {
    Ok(Held {
        _file: Manager::flock(path, FlockOperation::LockShared)?,
    })
}

/// The volume manager over one state directory.
#[derive(Clone, Debug)]
pub struct Manager {
    root: PathBuf,
    run: StateDir,
}

impl Manager {
    /// A manager of the state directory `root`, whose exports keep their runtime records in
    /// `run`.
    pub fn new(root: impl Into<PathBuf>, run: StateDir) -> Self {
        Manager {
            root: root.into(),
            run,
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// The record file of `id`.
    pub fn record_path(&self, id: &VolumeId) -> PathBuf {
        self.dir("records").join(format!("{id}.json"))
    }

    /// The directory of `id`'s files.
    pub fn volume_dir(&self, id: &VolumeId) -> PathBuf {
        self.dir("volumes").join(id.as_str())
    }

    /// The LUKS image of `id`.
    pub fn image(&self, id: &VolumeId) -> PathBuf {
        self.volume_dir(id).join("disk.img")
    }

    /// The detached header of `id` (when it has one).
    pub fn header(&self, id: &VolumeId) -> PathBuf {
        self.volume_dir(id).join("header.img")
    }

    /// Where `id` is mounted.
    pub fn mount_point(&self, id: &VolumeId) -> PathBuf {
        self.dir("mnt").join(id.as_str())
    }

    fn ensure_dirs(&self) -> Result<()> {
        for d in ["", "records", "volumes", "mnt", "locks"] {
            let p = self.dir(d);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
        }
        Ok(())
    }

    fn flock(path: &Path, op: FlockOperation) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("cannot open the lock {}", path.display()), e))?;
        rustix::fs::flock(&file, op)
            .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e.into()))?;
        Ok(file)
    }

    /// Takes the global lock: shared for calls on one id, exclusive for a sweep.
    fn lock_global(&self, exclusive: bool) -> Result<Held> {
        self.ensure_dirs()?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        Ok(Held {
            _file: Self::flock(&self.dir("sweep.lock"), op)?,
        })
    }

    /// Takes the lock of `id`, waiting for whoever holds it. A `destroy` removes the lock
    /// file while holding it; a waiter that then gets the lock on the removed file sees that
    /// the path no longer names it and tries again.
    fn lock_id(&self, id: &VolumeId) -> Result<Held> {
        lock_exclusive(&self.dir("locks").join(format!("{id}.lock")))
    }

    fn unlink_lock(&self, id: &VolumeId) {
        let _ = std::fs::remove_file(self.dir("locks").join(format!("{id}.lock")));
    }

    /// Both locks for a call on `id`.
    fn lock(&self, id: &VolumeId) -> Result<(Held, Held)> {
        let g = self.lock_global(false)?;
        let l = self.lock_id(id)?;
        Ok((g, l))
    }

    /// The record of `id`, if any.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a record that does not parse (never written by sealvol: the
    /// writes are atomic); [`Error::Io`] when it cannot be read.
    pub fn load(&self, id: &VolumeId) -> Result<Option<Record>> {
        let path = self.record_path(id);
        let r: Option<Record> = read_record(&path, "sealvol volume sweep")?;
        if let Some(r) = r.as_ref().filter(|r| r.id != *id) {
            return Err(Error::Invalid(format!(
                "the record {} names id {}, not {id}",
                path.display(),
                r.id
            )));
        }
        Ok(r)
    }

    fn save(&self, r: &Record) -> Result<()> {
        let json = serde_json::to_vec_pretty(r).expect("records serialise");
        write_atomic(&self.record_path(&r.id), &json)
    }

    fn remove_record(&self, id: &VolumeId) -> Result<()> {
        remove_durably(&self.record_path(id))
    }

    fn status_of(&self, r: &Record) -> Status {
        let image = self.image(&r.id);
        let entry = served::find(&self.run, &image);
        let live = entry
            .as_ref()
            .filter(|e| served::alive(&self.run, e))
            .cloned();
        let mount_path = self.mount_point(&r.id);
        Status {
            id: r.id.clone(),
            phase: r.phase,
            params: r.params.clone(),
            uuid: r.uuid.clone(),
            header: r.params.detached_header.then(|| self.header(&r.id)),
            mounted: live.is_some() && mount::is_mountpoint(&mount_path),
            export_pid: live.as_ref().map(|e| e.pid),
            loop_device: live.and_then(|e| e.loop_device),
            image,
            mount_path,
        }
    }

    // -----------------------------------------------------------------------------------
    // create

    /// Creates volume `id` (see the module docs for the steps). The same id with the same
    /// parameters is a no-op that says so (and mounts it when asked and not mounted).
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad sizes or an id that exists with other parameters (nothing
    /// touched); [`Error::Step`] naming the failed step, after undoing the ones before it.
    pub fn create(
        &self,
        id: &VolumeId,
        params: &Params,
        opts: CreateOptions,
        keyed: &mut dyn Keyed,
    ) -> Result<Created> {
        if params.fs.is_empty() || !params.fs.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Invalid(format!(
                "--fs {:?} is not a file system type; use ext4, ext3, ext2, xfs or btrfs",
                params.fs
            )));
        }
        if params.luks_type == LuksType::Luks1 && params.detached_header {
            return Err(Error::Invalid(
                "a LUKS1 volume keeps its header attached (what qemu's luks driver reads through the volume); drop --detached-header or use --type luks2".into(),
            ));
        }
        // Bad input is refused before anything is locked or made.
        let existing = self.load(id)?.filter(|r| r.phase == Phase::Ready);
        match existing {
            Some(r) if r.params != *params => return Err(self.param_mismatch(&r, params)),
            Some(_) => {}
            None => check_size(params, free_space(&self.root)?, opts.sparse_ok, &self.root)?,
        }
        let _locks = self.lock(id)?;
        let swept = self.sweep_id(id)?;
        if let Some(r) = self.load(id)? {
            // Only a ready record survives the sweep.
            if r.params != *params {
                return Err(self.param_mismatch(&r, params));
            }
            let mut status = self.status_of(&r);
            if opts.mount && !status.mounted {
                self.open_locked(&r, keyed)?;
                status = self.status_of(&r);
            }
            return Ok(Created {
                already_existed: true,
                status,
                swept,
            });
        }
        let mut rec = Record {
            id: id.clone(),
            phase: Phase::Creating,
            params: params.clone(),
            steps: Vec::new(),
            uuid: None,
            header_area: None,
            created: now(),
        };
        self.save(&rec)?;
        crash_point("create:journal");
        match self.create_steps(&mut rec, opts, keyed) {
            Ok(()) => {
                let status = self.status_of(&rec);
                tracing::info!(id = %id, mounted = status.mounted, "volume created");
                Ok(Created {
                    already_existed: false,
                    status,
                    swept,
                })
            }
            Err((step, e)) => {
                let after = match self.teardown(&rec) {
                    Ok(_) => {
                        self.unlink_lock(id);
                        "; everything done before it was undone".to_string()
                    }
                    Err(u) => format!(
                        "; undoing it also failed ({u}): `sealvol volume sweep` finishes it"
                    ),
                };
                Err(Error::Step {
                    verb: "create",
                    id: id.to_string(),
                    step,
                    reason: e.message,
                    after,
                    wrong_key: e.wrong_key,
                })
            }
        }
    }

    fn param_mismatch(&self, r: &Record, want: &Params) -> Error {
        Error::Invalid(format!(
            "volume {} exists with other parameters (type {}, size {}, fs {}, detached header {}; asked for type {}, size {}, fs {}, detached header {}); destroy it first or repeat its parameters",
            r.id,
            r.params.luks_type.as_str(),
            human_size(r.params.size),
            r.params.fs,
            r.params.detached_header,
            want.luks_type.as_str(),
            human_size(want.size),
            want.fs,
            want.detached_header
        ))
    }

    fn step_done(&self, rec: &mut Record, step: &str) -> Result<(), KeyedError> {
        rec.steps.push(step.to_string());
        self.save(rec).map_err(host_err)?;
        crash_point(&format!("create:{step}"));
        Ok(())
    }

    fn create_steps(
        &self,
        rec: &mut Record,
        opts: CreateOptions,
        keyed: &mut dyn Keyed,
    ) -> std::result::Result<(), (&'static str, KeyedError)> {
        let id = rec.id.clone();
        let image = self.image(&id);
        let header = rec.params.detached_header.then(|| self.header(&id));
        let mnt = self.mount_point(&id);
        // image: the directory and an empty image file, made durable.
        (|| -> Result<()> {
            let dir = self.volume_dir(&id);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            File::create(&image)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(format!("cannot create {}", image.display()), e))?;
            sync_dir(&dir)?;
            sync_dir(&self.dir("volumes"))
        })()
        .map_err(|e| ("image", host_err(e)))?;
        self.step_done(rec, "image").map_err(|e| ("image", e))?;

        // format: header and keyslot durable before anything depends on them.
        let f = keyed
            .format(
                &image,
                header.as_deref(),
                rec.params.size,
                rec.params.luks_type,
            )
            .map_err(|e| ("format", e))?;
        rec.uuid = Some(f.uuid);
        rec.header_area = Some(f.header_area);
        if let Some(h) = &header {
            sync_dir(h.parent().unwrap_or(Path::new("."))).map_err(|e| ("format", host_err(e)))?;
        }
        self.step_done(rec, "format").map_err(|e| ("format", e))?;

        // mkfs: through the export, which leaves it mounted.
        match std::fs::DirBuilder::new().mode(0o700).create(&mnt) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                let e = Error::io(format!("cannot create {}", mnt.display()), e);
                return Err(("mkfs", host_err(e)));
            }
        }
        keyed
            .open(&image, header.as_deref(), &mnt, Some(&rec.params.fs))
            .map_err(|e| ("mkfs", e))?;
        self.step_done(rec, "mkfs").map_err(|e| ("mkfs", e))?;

        if !opts.mount {
            self.stop_exports(&id, Busy::Fail)
                .map_err(|e| ("close", host_err(e)))?;
            self.step_done(rec, "close").map_err(|e| ("close", e))?;
        }
        rec.phase = Phase::Ready;
        rec.steps.clear();
        self.save(rec).map_err(|e| ("ready", host_err(e)))?;
        crash_point("create:ready");
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // open / close

    /// Mounts volume `id` on its mount point (a no-op when it is mounted). Returns whether
    /// it was mounted already, and the status.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the id does not exist or is not ready; [`Error::Step`] (with
    /// `wrong_key` for a key that opens nothing: then nothing changed).
    pub fn open(&self, id: &VolumeId, keyed: &mut dyn Keyed) -> Result<(bool, Status)> {
        self.ready(id)?; // before the locks make any directory
        let _locks = self.lock(id)?;
        let r = self.ready(id)?;
        let st = self.status_of(&r);
        if st.mounted {
            return Ok((true, st));
        }
        // A dead export or a stale mount is cleared first.
        self.stop_exports(id, Busy::Fail)?;
        // No export left, yet claimed: a VM's qemu reads it through its own LUKS driver.
        if VolumeLock::is_held(&self.run, &volume_id(&self.image(id))?) {
            return Err(Error::Invalid(format!(
                "volume {id} is in use by another process (a running VM reading it as its data disk: `sealvol vm list`); stop that VM first"
            )));
        }
        self.open_locked(&r, keyed)?;
        Ok((false, self.status_of(&r)))
    }

    fn open_locked(&self, r: &Record, keyed: &mut dyn Keyed) -> Result<()> {
        let mnt = self.mount_point(&r.id);
        if !mnt.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&mnt)
                .map_err(|e| Error::io(format!("cannot create {}", mnt.display()), e))?;
        }
        let header = r.params.detached_header.then(|| self.header(&r.id));
        keyed
            .open(&self.image(&r.id), header.as_deref(), &mnt, None)
            .map_err(|e| Error::Step {
                verb: "open",
                id: r.id.to_string(),
                step: "mount",
                reason: e.message,
                after: "; nothing was changed".into(),
                wrong_key: e.wrong_key,
            })
    }

    fn ready(&self, id: &VolumeId) -> Result<Record> {
        match self.load(id)? {
            Some(r) if r.phase == Phase::Ready => Ok(r),
            Some(r) => Err(Error::Invalid(format!(
                "volume {id} is {} (an interrupted operation); run `sealvol volume sweep` to finish it",
                r.phase.as_str()
            ))),
            None => Err(Error::Invalid(format!(
                "there is no volume {id} in {}; create it with `sealvol volume create {id}`",
                self.root.display()
            ))),
        }
    }

    /// Unmounts volume `id` and stops its export (which wipes the key). Returns whether it
    /// was open.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the id does not exist or the file system is busy (nothing
    /// changed then).
    pub fn close(&self, id: &VolumeId) -> Result<bool> {
        self.ready(id)?;
        let _locks = self.lock(id)?;
        self.ready(id)?;
        self.stop_exports(id, Busy::Fail)
    }

    /// Stops every export of `id`'s image and clears a mount on its mount point that has no
    /// live export. Returns whether anything was open.
    fn stop_exports(&self, id: &VolumeId, busy: Busy) -> Result<bool> {
        let image = self.image(id);
        let mut any = false;
        while let Some(entry) = served::find(&self.run, &image) {
            served::stop(&self.run, &entry, busy, STOP_TIMEOUT)?;
            any = true;
        }
        let mnt = self.mount_point(id);
        if mount::is_mountpoint(&mnt) {
            tracing::warn!(mount = %mnt.display(), "mounted without a live export; unmounting lazily");
            mount::umount(&mnt, true)?;
            any = true;
        }
        for dev in loopdev::find_by_backing(&image) {
            loopdev::detach(&dev, None)?;
            any = true;
        }
        Ok(any)
    }

    // -----------------------------------------------------------------------------------
    // destroy

    /// Destroys volume `id`: unmount (busy: bounded retry, then lazy), stop the export, wipe
    /// the header area and every other file of the id in place, delete the files, remove the
    /// record. An absent id is a success that says so.
    ///
    /// # Errors
    /// [`Error::Step`] when a step fails; the record stays `destroying` and the next
    /// `destroy` or `sweep` finishes it.
    pub fn destroy(&self, id: &VolumeId) -> Result<Destroyed> {
        if !self.root.exists() {
            return Ok(Destroyed {
                id: id.clone(),
                already_absent: true,
                lazy_unmount: false,
                wiped: Vec::new(),
            });
        }
        let _locks = self.lock(id)?;
        let rec = match self.load(id)? {
            Some(r) => r,
            None if !self.has_leftovers(id) => {
                self.unlink_lock(id);
                return Ok(Destroyed {
                    id: id.clone(),
                    already_absent: true,
                    lazy_unmount: false,
                    wiped: Vec::new(),
                });
            }
            None => self.orphan_record(id),
        };
        let d = self.teardown(&rec).map_err(|e| Error::Step {
            verb: "destroy",
            id: id.to_string(),
            step: "teardown",
            reason: e.to_string(),
            after: "; run `sealvol volume destroy` again or `sealvol volume sweep` to finish it"
                .into(),
            wrong_key: false,
        })?;
        self.unlink_lock(id);
        tracing::info!(id = %id, "volume destroyed");
        Ok(d)
    }

    /// A `destroying` record for files, mounts or exports of `id` that have no record, so
    /// that [`Manager::teardown`] removes them like any interrupted destroy.
    fn orphan_record(&self, id: &VolumeId) -> Record {
        Record {
            id: id.clone(),
            phase: Phase::Destroying,
            params: Params {
                size: 0,
                fs: String::new(),
                detached_header: self.header(id).exists(),
                luks_type: LuksType::default(),
            },
            steps: Vec::new(),
            uuid: None,
            header_area: None,
            created: now(),
        }
    }

    fn has_leftovers(&self, id: &VolumeId) -> bool {
        self.volume_dir(id).exists()
            || self.mount_point(id).exists()
            || served::find(&self.run, &self.image(id)).is_some()
    }

    /// Undoes or finishes: records `destroying`, then stops, wipes, deletes, unrecords.
    fn teardown(&self, rec: &Record) -> Result<Destroyed> {
        let id = &rec.id;
        // A `creating` record already means "undo" to a sweep, and on a full disk there may
        // be no room to write another: only a ready volume's record is rewritten.
        if rec.phase == Phase::Ready {
            let mut r = rec.clone();
            r.phase = Phase::Destroying;
            r.steps.clear();
            self.save(&r)?;
        }
        crash_point("destroy:journal");
        let mnt = self.mount_point(id);
        let image = self.image(id);
        let mut lazy = false;
        while let Some(entry) = served::find(&self.run, &image) {
            lazy |= served::stop(
                &self.run,
                &entry,
                Busy::RetryThenLazy(BUSY_WAIT),
                STOP_TIMEOUT,
            )?
            .lazy;
        }
        if mount::is_mountpoint(&mnt) {
            mount::umount(&mnt, true)?;
            lazy = true;
        }
        for dev in loopdev::find_by_backing(&image) {
            loopdev::detach(&dev, None)?;
        }
        crash_point("destroy:unmount");

        // Keys first: the header area of the image, then every other file of the id whole.
        let mut wiped = Vec::new();
        let dir = self.volume_dir(id);
        let header_area = if rec.params.detached_header {
            0
        } else {
            rec.header_area.unwrap_or(DEFAULT_HEADER_AREA)
        };
        if let Some(n) = wipe(&image, Some(header_area))? {
            wiped.push((image.clone(), n));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p != image && e.file_type().is_ok_and(|t| t.is_file()) {
                    if let Some(n) = wipe(&p, None)? {
                        wiped.push((p, n));
                    }
                }
            }
        }
        crash_point("destroy:erase");

        // Then the data.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                std::fs::remove_file(&p)
                    .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
            }
        }
        for d in [&dir, &mnt] {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("cannot remove {}", d.display()), e)),
            }
        }
        sync_dir(&self.dir("volumes"))?;
        sync_dir(&self.dir("mnt"))?;
        crash_point("destroy:delete");
        self.remove_record(id)?;
        Ok(Destroyed {
            id: id.clone(),
            already_absent: false,
            lazy_unmount: lazy,
            wiped,
        })
    }

    // -----------------------------------------------------------------------------------
    // status, list, bind-args

    /// The status of `id`, or `None` when it does not exist.
    ///
    /// # Errors
    /// A damaged record.
    pub fn status(&self, id: &VolumeId) -> Result<Option<Status>> {
        Ok(self.load(id)?.map(|r| self.status_of(&r)))
    }

    /// Every volume with a record, by id.
    ///
    /// # Errors
    /// A damaged record.
    pub fn list(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for id in self.ids_in("records") {
            if let Some(r) = self.load(&id)? {
                out.push(self.status_of(&r));
            }
        }
        Ok(out)
    }

    /// The ids named by entries of `sub` (`records/<id>.json`, `volumes/<id>` ...); names
    /// that are not valid ids are not sealvol's and are ignored.
    fn ids_in(&self, sub: &str) -> Vec<VolumeId> {
        ids_in(
            &self.dir(sub),
            match sub {
                "records" => ".json",
                "locks" => ".lock",
                _ => "",
            },
        )
    }

    /// Container-runtime arguments binding mounted volume `id` at `target`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `target` is not an absolute path usable in those arguments,
    /// or the volume is not mounted.
    pub fn bind_args(&self, id: &VolumeId, target: &Path) -> Result<BindArgs> {
        let t = target.to_str().unwrap_or("");
        if !target.is_absolute() || t.contains([',', ':', '"', '\n']) || t.is_empty() {
            return Err(Error::Invalid(format!(
                "--target {:?} must be an absolute path without ',', ':' or quotes (for example /data)",
                target.display()
            )));
        }
        let st = self.status(id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "there is no volume {id}; create it with `sealvol volume create {id} --mount`"
            ))
        })?;
        if !st.mounted {
            return Err(Error::Invalid(format!(
                "volume {id} is not mounted; run `sealvol volume open {id}` first"
            )));
        }
        let s = st.mount_path.display().to_string();
        Ok(BindArgs {
            mount: format!("type=bind,source={s},target={t}"),
            volume: format!("{s}:{t}"),
            source: st.mount_path,
            target: target.to_path_buf(),
        })
    }

    // -----------------------------------------------------------------------------------
    // sweep

    /// Finds what crashes left behind and finishes or undoes it, under the global lock:
    /// interrupted creates (undone), interrupted destroys (finished), files, mounts, exports
    /// and loop devices of ids without a record (removed), dead exports and mounts without
    /// a live export of ready volumes (closed). Returns what it did; each action is logged.
    ///
    /// # Errors
    /// The first repair that fails (the rest are left for the next sweep).
    pub fn sweep(&self) -> Result<Vec<Action>> {
        let _global = self.lock_global(true)?;
        let mut ids = Vec::new();
        for sub in ["records", "volumes", "mnt", "locks"] {
            ids.extend(self.ids_in(sub));
        }
        // Exports and loop devices on images in this state directory.
        let volumes = self.dir("volumes");
        let volumes = std::fs::canonicalize(&volumes).unwrap_or(volumes);
        for e in self.run.list() {
            if let Ok(rest) = e.volume.strip_prefix(&volumes) {
                if let Some(Ok(id)) = rest
                    .iter()
                    .next()
                    .map(|c| VolumeId::parse(&c.to_string_lossy()))
                {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        let mut actions = Vec::new();
        for id in ids {
            let _l = self.lock_id(&id)?;
            actions.extend(self.sweep_id(&id)?);
            if self.load(&id)?.is_none() {
                self.unlink_lock(&id);
            }
        }
        Ok(actions)
    }

    /// The part of the sweep for one id (its lock held).
    fn sweep_id(&self, id: &VolumeId) -> Result<Vec<Action>> {
        let act = |what: String| {
            tracing::warn!(id = %id, action = %what, "sweep");
            Action {
                id: id.to_string(),
                action: what,
            }
        };
        let mut out = Vec::new();
        match self.load(id)? {
            Some(r) if r.phase == Phase::Creating => {
                self.teardown(&r)?;
                out.push(act(format!(
                    "undid an interrupted create (steps done: {})",
                    if r.steps.is_empty() {
                        "none".into()
                    } else {
                        r.steps.join(", ")
                    }
                )));
            }
            Some(r) if r.phase == Phase::Destroying => {
                self.teardown(&r)?;
                out.push(act("finished an interrupted destroy".into()));
            }
            Some(r) => {
                let image = self.image(id);
                if let Some(e) = served::find(&self.run, &image) {
                    if !served::alive(&self.run, &e) {
                        served::stop(&self.run, &e, Busy::RetryThenLazy(BUSY_WAIT), STOP_TIMEOUT)?;
                        out.push(act(format!(
                            "closed export {} that had died (its mount and loop device)",
                            e.pid
                        )));
                    }
                }
                if served::find(&self.run, &image).is_none() {
                    let mnt = self.mount_point(&r.id);
                    if mount::is_mountpoint(&mnt) {
                        mount::umount(&mnt, true)?;
                        out.push(act(format!("unmounted {} (no live export)", mnt.display())));
                    }
                }
                for dev in loopdev::find_by_backing(&image) {
                    loopdev::detach(&dev, None)?;
                    out.push(act(format!(
                        "detached {} (a loop device on the image)",
                        dev.display()
                    )));
                }
            }
            None if self.has_leftovers(id) => {
                self.teardown(&self.orphan_record(id))?;
                out.push(act(
                    "removed files, mounts and exports that had no record".into()
                ));
            }
            None => {}
        }
        Ok(out)
    }
}

fn host_err(e: Error) -> KeyedError {
    KeyedError {
        message: e.to_string(),
        wrong_key: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded_with_clear_errors() {
        let p = |size| Params {
            size,
            fs: "ext4".into(),
            detached_header: false,
            luks_type: LuksType::Luks2,
        };
        let dir = Path::new("/x");
        let e = check_size(&p(1 << 20), u64::MAX, false, dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small") && e.contains("16 MiB"), "{e}");
        let e = check_size(&p(1 << 50), u64::MAX, true, dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("largest"), "{e}");
        let e = check_size(&p((64 << 20) + 1), u64::MAX, false, dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of 4096"), "{e}");
        let e = check_size(&p(10 << 30), 1 << 30, false, dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sparse-ok") && e.contains("1 GiB free"), "{e}");
        check_size(&p(10 << 30), 1 << 30, true, dir).unwrap();
        check_size(&p(64 << 20), 1 << 30, false, dir).unwrap();
    }

    #[test]
    fn wipe_zeroes_data_and_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(&[0xaa; 8192]).unwrap();
        f.set_len(1 << 20).unwrap();
        f.seek(SeekFrom::Start((1 << 20) - 4096)).unwrap();
        f.write_all(&[0xbb; 4096]).unwrap();
        drop(f);
        assert_eq!(wipe(&p, Some(1 << 19)).unwrap(), Some(1 << 19));
        let b = std::fs::read(&p).unwrap();
        assert!(b[..1 << 19].iter().all(|&x| x == 0));
        assert!(b[b.len() - 4096..].iter().all(|&x| x == 0xbb));
        wipe(&p, None).unwrap();
        assert!(std::fs::read(&p).unwrap().iter().all(|&x| x == 0));
        assert_eq!(wipe(&dir.path().join("none"), None).unwrap(), None);
    }

    #[test]
    fn locks_serialize_one_id_and_survive_removal() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(dir.path(), StateDir::new(dir.path().join("run")));
        m.ensure_dirs().unwrap();
        let id = VolumeId::parse("a").unwrap();
        let held = m.lock_id(&id).unwrap();
        let m2 = m.clone();
        let id2 = id.clone();
        let t = std::thread::spawn(move || {
            let _l = m2.lock_id(&id2).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished());
        m.unlink_lock(&id);
        drop(held);
        t.join().unwrap();
        // Another id is never blocked.
        let _a = m.lock_id(&id).unwrap();
        let _b = m.lock_id(&VolumeId::parse("b").unwrap()).unwrap();
    }

    #[test]
    fn absent_ids_destroy_as_already_absent_and_bind_args_check_targets() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(dir.path().join("s"), StateDir::new(dir.path().join("run")));
        let id = VolumeId::parse("gone").unwrap();
        assert!(m.destroy(&id).unwrap().already_absent);
        assert!(m.list().unwrap().is_empty());
        assert!(m.sweep().unwrap().is_empty());
        let e = m.bind_args(&id, Path::new("data")).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = m
            .bind_args(&id, Path::new("/data"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no volume gone"), "{e}");
    }
}
