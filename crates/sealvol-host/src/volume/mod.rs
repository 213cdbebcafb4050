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
//! The records, the locks and the sweep's skeleton are a [`crate::store`]: the directory is
//! made 0700 and refused when another user owns it or others may write in it; every entry
//! below it is made, read, wiped and removed through a [`SafeDir`] (by descriptor, never
//! through a symbolic link; a planted link is refused or unlinked, never followed; a file is
//! wiped only when it is a regular file with one link whose LUKS UUID, when it still has
//! one, is the record's). Records are replaced atomically and durably, so a reader sees the
//! old record or the new one, and a record that a call returned after is on disk.
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
//! Keys: `create` and `open` take the workload's key as [`SecretBytes`] (and `create` a
//! [`KdfPolicy`] for its keyslot). `create` formats with [`NewHeader::build`] in memory and
//! writes the header through the descriptors of the files it made; both open the volume
//! through [`crate::export`], whose background export gets the volume key on a pipe. No key
//! is written to a record, a log or a command line.
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

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealvol_crypto::SecretBytes;
use sealvol_luks::{KdfLimits, KdfPolicy, NewHeader, Version};
use serde::Serialize;

pub use crate::store::{Action, Phase, VolumeId, MAX_ID_LEN};
pub use record::{LuksType, Params, Record};

use crate::export::served::{self, Busy};
use crate::export::{self, BaseSpec, KeyInput, Launcher, Mode, MountSpec, OpenSpec, Serve};
use crate::lock::VolumeLock;
use crate::overlay;
use crate::safe_dir::{canonical_prefix, FileId, Kind, SafeDir, WipeTarget};
use crate::state::{now, runtime_id, StateDir};
use crate::store::{Store, Sweeper};
use crate::{loopdev, mount, Error, Result, Subject};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sealvol";
/// The header area of an attached LUKS2 header (cryptsetup's default data offset, 16 MiB):
/// what the free-space check reserves and what `destroy` wipes when the record does not say.
pub const DEFAULT_HEADER_AREA: u64 = 16 << 20;
/// Largest volume: 16 TiB.
pub const MAX_SIZE: u64 = 16 << 40;
/// How long `destroy` retries a busy unmount before detaching lazily.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How long an export gets to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A freshly formatted volume.
#[derive(Clone, Debug)]
struct Formatted {
    /// LUKS UUID.
    uuid: String,
    /// Bytes at the start of the image holding the header and keyslots (0 when detached).
    header_area: u64,
}

/// A file sealvol made, open, with its path (for messages).
#[derive(Clone, Copy, Debug)]
struct Target<'a> {
    /// Where it is.
    path: &'a Path,
    /// The file itself, opened read-write: write through this, never through the path.
    file: &'a File,
}

/// Formats the new, empty `image` as `luks_type` (header in `header` when given) with
/// `data_size` bytes of data for `key` (its keyslot's KDF by `kdf`), sizing the (sparse)
/// image, and makes it durable. The header is built whole in memory first (every
/// validation and KDF error before a byte is written), then written through the files'
/// descriptors: both were made exclusively by the manager.
fn format(
    image: Target<'_>,
    header: Option<Target<'_>>,
    data_size: u64,
    luks_type: LuksType,
    key: &SecretBytes,
    kdf: &KdfPolicy,
) -> Result<Formatted> {
    let request = NewHeader {
        version: match luks_type {
            LuksType::Luks2 => Version::Luks2,
            LuksType::Luks1 => Version::Luks1,
        },
        detached: header.is_some(),
        kdf: kdf.clone(),
        ..NewHeader::default()
    };
    let built = request.build(key.expose()).map_err(|e| {
        Error::Invalid(format!(
            "cannot build the {} header: {e}",
            luks_type.as_str()
        ))
    })?;
    let (uuid, data_offset, bytes) = (built.uuid, built.segment.offset, built.bytes);
    let len = data_offset
        .checked_add(data_size)
        .ok_or_else(|| Error::Invalid("the size is too large".into()))?;
    image.file.set_len(len).map_err(|e| {
        Error::io(
            format!("cannot size {} to {len} bytes", image.path.display()),
            e,
        )
    })?;
    let write = |t: Target<'_>| -> Result<()> {
        use std::os::unix::fs::FileExt;
        t.file
            .write_all_at(&bytes, 0)
            .and_then(|()| t.file.sync_all())
            .map_err(|e| {
                Error::io(
                    format!("cannot write the LUKS header to {}", t.path.display()),
                    e,
                )
            })
    };
    write(header.unwrap_or(image))?;
    image
        .file
        .sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", image.path.display()), e))?;
    tracing::info!(uuid = %uuid, r#type = luks_type.as_str(), kdf = ?built.kdf, "formatted");
    Ok(Formatted {
        uuid,
        header_area: if header.is_some() { 0 } else { data_offset },
    })
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
    /// When a keyslot was made for the key: a note that the KDF policy may have taken the
    /// key for what it is not (see [`KdfPolicy::hint`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kdf_hint: Option<String>,
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
    /// Entries that were not wiped because they were not the volume's files (a symbolic or
    /// hard link planted in their place, a LUKS header of another UUID ...), and why: links
    /// were unlinked, their targets left untouched.
    pub refused: Vec<(PathBuf, String)>,
}

/// What is known about one volume: what its record says and what the host has.
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
    /// Whether something is mounted on `mount_path` now, whatever the record says
    /// (`export_alive` says whether a live export serves it).
    pub mounted: bool,
    /// What is mounted there (`/dev/loopN`), when something is.
    pub mount_source: Option<String>,
    /// The live export process, when open.
    pub export_pid: Option<u32>,
    /// Whether an export of the volume runs and holds the volume.
    pub export_alive: bool,
    /// The export process the runtime record names, alive or not.
    pub recorded_export_pid: Option<u32>,
    /// The loop device under the mount: the live export's, else the mount's source when it
    /// is a loop device.
    pub loop_device: Option<PathBuf>,
    /// Every loop device on the image or on its FUSE file.
    pub loop_devices: Vec<PathBuf>,
    /// The volume's FUSE file in the runtime directory (when the image exists).
    pub fuse_file: Option<PathBuf>,
    /// Whether a FUSE file system is mounted on it.
    pub fuse_mounted: bool,
    /// Whether that FUSE file system answers (`false`: its export died and every access
    /// fails with ENOTCONN); `None` when none is mounted.
    pub fuse_alive: Option<bool>,
    /// What the host has that no live export or finished operation accounts for, in words;
    /// `sealvol volume sweep` clears it.
    pub stale: Vec<String>,
}

impl Status {
    /// Mounted by a live export (what `open`, `create --mount` and `bind-args` want).
    pub fn served(&self) -> bool {
        self.mounted && self.export_alive
    }
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

/// Parses a byte size: plain bytes or a number with K, M, G, T (powers of 1024; an optional
/// trailing `B` or `iB` is accepted): what `--size` and a volume driver's `size` option say.
///
/// # Errors
/// [`Error::Invalid`] naming the text and the units accepted.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| {
        Error::Invalid(format!(
            "{s:?} is not a size; use bytes or a number with K, M, G or T"
        ))
    })?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(Error::Invalid(format!(
                "unknown size unit {other:?} in {s:?}; use K, M, G or T"
            )))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| Error::Invalid(format!("size {s:?} does not fit in 64 bits")))
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

/// [`check_size`] of an overlay volume: its virtual size a positive multiple of 4096 and
/// at most [`MAX_SIZE`] (the base's file system sets the rest), and (unless `sparse_ok`)
/// room for all of it to be written, with its map.
///
/// # Errors
/// [`Error::Invalid`] naming the limit and what to do.
pub fn check_overlay_size(params: &Params, free: u64, sparse_ok: bool, dir: &Path) -> Result<()> {
    let size = params.size;
    if size == 0 || size % 4096 != 0 || size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "the overlay volume's size {size} must be a positive multiple of 4096 bytes, at most {}",
            human_size(MAX_SIZE)
        )));
    }
    // Every cluster written once, plus its map (1.6 %) and the keys.
    let need = size + size / 50 + overlay::KEY_AREA;
    if !sparse_ok && need > free {
        return Err(Error::Invalid(format!(
            "an overlay of {} may grow to {} once written through, but {} has only {} free; free some space or pass --sparse-ok",
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

/// Overwrites the allocated parts of `[0, len)` of the open file `f` (named `path` in
/// messages) with zeros in place and fsyncs it (holes hold nothing and are skipped, so a
/// full disk does not stop a wipe). Returns the bytes it covered.
fn wipe(f: &mut File, path: &Path, len: Option<u64>) -> Result<u64> {
    let io = |e| Error::io(format!("cannot wipe {}", path.display()), e);
    let file_len = f.metadata().map_err(io)?.len();
    let end = len.map_or(file_len, |l| l.min(file_len));
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < end {
        let data = match rustix::fs::seek(&*f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only holes from here on
            Err(e) => return Err(io(e.into())),
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(&*f, rustix::fs::SeekFrom::Hole(data))
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
    Ok(end)
}

/// The LUKS magic at the start of a LUKS1 or LUKS2 header.
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Where LUKS1 and LUKS2 both keep the UUID (40 bytes, NUL-padded).
const LUKS_UUID_AT: usize = 168;

/// The LUKS UUID of the header at the start of `f`, when the magic is still there.
fn luks_uuid(f: &mut File) -> Option<String> {
    let mut b = [0u8; LUKS_UUID_AT + 40];
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_exact(&mut b).ok()?;
    if &b[..6] != LUKS_MAGIC {
        return None;
    }
    let uuid = &b[LUKS_UUID_AT..];
    let end = uuid.iter().position(|&c| c == 0).unwrap_or(uuid.len());
    Some(String::from_utf8_lossy(&uuid[..end]).into_owned())
}

/// What [`wipe_checked`] did.
#[derive(Debug)]
enum WipeOutcome {
    Absent,
    Done(PathBuf, u64),
    Refused(PathBuf, String),
}

/// Wipes `[0, len)` of `name` in `dir` (all of it for `None`) through a descriptor checked
/// to be the volume's: a regular file with one link, reached without any symbolic link,
/// and, when `uuid` is known and the file still starts with a LUKS header, of that UUID.
/// Anything else is refused (a planted link unlinked, never followed) and logged.
fn wipe_checked(
    dir: &SafeDir,
    name: &str,
    len: Option<u64>,
    uuid: Option<&str>,
) -> Result<WipeOutcome> {
    let mut f = match dir.open_for_wipe(name)? {
        WipeTarget::Absent => return Ok(WipeOutcome::Absent),
        WipeTarget::Refused { path, reason } => return Ok(WipeOutcome::Refused(path, reason)),
        WipeTarget::File(f) => f,
    };
    let path = dir.join(name);
    if let (Some(want), Some(found)) = (uuid, luks_uuid(&mut f)) {
        if !found.eq_ignore_ascii_case(want) {
            let reason = format!(
                "a LUKS header of UUID {found:?}, not the volume's {want}: not wiped (it is deleted with the volume's files)"
            );
            tracing::warn!(path = %path.display(), reason = %reason, "not wiping");
            return Ok(WipeOutcome::Refused(path, reason));
        }
    }
    let n = wipe(&mut f, &path, len)?;
    Ok(WipeOutcome::Done(path, n))
}

/// What [`Manager::clear_host`] did.
#[derive(Debug, Default)]
struct Cleared {
    /// An export, a mount or a loop device was there.
    open: bool,
    /// An overlay volume's checkpoint as its export recorded it when it stopped.
    checkpoint: Option<sealvol_overlay::Checkpoint>,
    /// A mount was detached lazily.
    lazy: bool,
    /// What was done, in words.
    actions: Vec<String>,
}

/// The volume manager over one state directory.
#[derive(Clone, Debug)]
pub struct Manager {
    store: Store<Record>,
    run: StateDir,
    launcher: Launcher,
    limits: KdfLimits,
}

impl Manager {
    /// A manager of the state directory `root` (its existing part made canonical: mount
    /// tables and loop devices report canonical paths), whose exports keep their runtime
    /// records in `run`.
    pub fn new(root: impl Into<PathBuf>, run: StateDir) -> Self {
        Manager {
            store: Store::new(
                canonical_prefix(&root.into()),
                None,
                Subject::Volume,
                &["volumes", "mnt"],
            ),
            run,
            launcher: Launcher::default(),
            limits: KdfLimits::default(),
        }
    }

    /// Starts its exports with `launcher` (default: this program's own executable, which
    /// must handle [`crate::export::child::VERB`]).
    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = launcher;
        self
    }

    /// Holds the headers it unlocks to `limits` (default: [`KdfLimits::default`]).
    pub fn with_kdf_limits(mut self, limits: KdfLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How its exports are started.
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The limits the headers it unlocks are held to.
    pub fn kdf_limits(&self) -> KdfLimits {
        self.limits
    }

    /// Opens volume `r`'s image (header in `header`) with `key` and mounts it on `mount`
    /// through a background export (after `mkfs` of that type, when given): a LUKS volume,
    /// or an overlay over its base, refused when older than the checkpoint its record keeps.
    fn export_mount(
        &self,
        r: &Record,
        image: &Path,
        header: Option<&Path>,
        key: &SecretBytes,
        mount: &Path,
        mkfs: Option<&str>,
    ) -> Result<()> {
        let spec = match &r.params.base {
            None => OpenSpec::luks(image, header.map(Path::to_path_buf)),
            Some(base) => {
                OpenSpec::for_volume(image, None, false, Some(base.clone()), r.checkpoint.clone())?
            }
        };
        export::export(
            &self.run,
            &spec,
            KeyInput::Bytes(key),
            self.limits,
            &Serve::Mount(MountSpec {
                mount_point: mount.to_path_buf(),
                mkfs: mkfs.map(str::to_string),
            }),
            Mode::Child {
                launcher: &self.launcher,
                log: None,
            },
        )
        .map(|_| ())
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// The runtime directory its exports use.
    pub fn run(&self) -> &StateDir {
        &self.run
    }

    /// Opens the state directory, creating it (0700) when missing; refuses one that
    /// another user owns or others may write in.
    ///
    /// # Errors
    /// [`Error::UnsafeDir`] with the fix; [`Error::Io`].
    pub fn state(&self) -> Result<SafeDir> {
        self.store.open()
    }

    /// The record file of `id`.
    pub fn record_path(&self, id: &VolumeId) -> PathBuf {
        self.store.record_path(id)
    }

    /// The directory of `id`'s files.
    pub fn volume_dir(&self, id: &VolumeId) -> PathBuf {
        self.store.path("volumes").join(id.as_str())
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
        self.store.path("mnt").join(id.as_str())
    }

    /// The record of `id`, if any.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a record that does not parse (never written by sealvol: the
    /// writes are atomic); [`Error::Planted`] for a link in its place; [`Error::Io`] when it
    /// cannot be read.
    pub fn load(&self, id: &VolumeId) -> Result<Option<Record>> {
        self.store.load(id)
    }

    /// `volumes/<id>` if it is there; a link planted in its place is an error.
    fn vol_dir(&self, id: &VolumeId) -> Result<Option<SafeDir>> {
        match self.store.existing_sub("volumes")? {
            Some(v) => v.open_dir(id.as_str()),
            None => Ok(None),
        }
    }

    /// The identity of `id`'s image when it is a regular file of one link (reached without
    /// any symbolic link); `None` when absent.
    ///
    /// # Errors
    /// [`Error::Planted`] for a link or another kind of file.
    fn image_file_id(&self, id: &VolumeId) -> Result<Option<FileId>> {
        let Some(dir) = self.vol_dir(id)? else {
            return Ok(None);
        };
        checked_file(&dir, "disk.img")
    }

    /// The runtime id of `id`'s image (`vol-<dev>-<ino>`: its exports' records, FUSE file
    /// and claim), when the image is there and is the volume's file.
    pub(crate) fn image_runtime_id(&self, id: &VolumeId) -> Option<String> {
        self.image_file_id(id).ok().flatten().map(runtime_id)
    }

    /// The image (and detached header) of `id`, each checked right now to be the regular
    /// file of one link sealvol made, reached without any symbolic link: paths to hand to
    /// an export or to qemu right away.
    ///
    /// # Errors
    /// [`Error::Invalid`] when missing; [`Error::Planted`] for links.
    pub(crate) fn checked_files(
        &self,
        id: &VolumeId,
        detached: bool,
    ) -> Result<(PathBuf, Option<PathBuf>)> {
        let root = self.state()?;
        let missing = |what: &str| {
            Error::Invalid(format!(
                "the {what} of volume {id} is missing; run `sealvol volume sweep`, or destroy and create it again"
            ))
        };
        let dir = self.vol_dir(id)?.ok_or_else(|| missing("directory"))?;
        let image_id = checked_file(&dir, "disk.img")?.ok_or_else(|| missing("image"))?;
        let image = root.verify(&format!("volumes/{id}/disk.img"), image_id)?;
        let header = if detached {
            let h = checked_file(&dir, "header.img")?.ok_or_else(|| missing("header"))?;
            Some(root.verify(&format!("volumes/{id}/header.img"), h)?)
        } else {
            None
        };
        Ok((image, header))
    }

    /// The first `n` bytes (or fewer) of `id`'s image, read through a descriptor checked as
    /// in [`Manager::checked_files`].
    ///
    /// # Errors
    /// As [`Manager::checked_files`].
    /// The first `n` bytes of the file that holds `id`'s LUKS header: the detached header
    /// when `detached`, else the image.
    pub(crate) fn header_head(&self, id: &VolumeId, detached: bool, n: usize) -> Result<Vec<u8>> {
        self.file_head(id, if detached { "header.img" } else { "disk.img" }, n)
    }

    fn file_head(&self, id: &VolumeId, name: &str, n: usize) -> Result<Vec<u8>> {
        let missing = || Error::Invalid(format!("there is no {name} of volume {id}"));
        let dir = self.vol_dir(id)?.ok_or_else(missing)?;
        checked_file(&dir, name)?;
        let f = dir.open_read(name)?.ok_or_else(missing)?;
        let mut head = Vec::with_capacity(n);
        f.take(n as u64).read_to_end(&mut head).map_err(|e| {
            Error::io(
                format!("cannot read {}", self.volume_dir(id).join(name).display()),
                e,
            )
        })?;
        Ok(head)
    }

    /// The paths the export gets: the image (and detached header) and the mount point,
    /// each checked right now to name the volume's file or directory without any symbolic
    /// link (the mount point is made when missing; a link in its place is unlinked).
    fn paths_for_open(
        &self,
        id: &VolumeId,
        detached: bool,
    ) -> Result<(PathBuf, Option<PathBuf>, PathBuf)> {
        let (image, header) = self.checked_files(id, detached)?;
        let root = self.state()?;
        let mnts = root.ensure_dir("mnt", 0o700)?;
        let mnt = mnts.ensure_dir_replacing(id.as_str(), 0o700)?;
        let mnt = root.verify(&format!("mnt/{id}"), mnt.id()?)?;
        Ok((image, header, mnt))
    }

    /// What the host has for `id` whatever the record says: mounts, loop devices, the FUSE
    /// file and the export.
    fn status_of(&self, r: &Record) -> Status {
        let image = self.image(&r.id);
        let mount_path = self.mount_point(&r.id);
        let entry = served::find(&self.run, &image);
        let live = entry
            .as_ref()
            .filter(|e| served::alive(&self.run, e))
            .cloned();
        let rid = entry
            .as_ref()
            .map(|e| e.id.clone())
            .or_else(|| self.image_runtime_id(&r.id));
        let fuse_file = rid.as_ref().map(|rid| self.run.fuse_file(rid));
        // A link planted at mnt/<id> is not the volume's mount point.
        let mount_source = self
            .store
            .existing_sub("mnt")
            .ok()
            .flatten()
            .filter(|m| m.kind(r.id.as_str()).ok().flatten() == Some(Kind::Dir))
            .and_then(|_| mount::source_at(&mount_path));
        let mut loop_devices = loopdev::find_by_backing(&image);
        if let Some(f) = &fuse_file {
            loop_devices.extend(loopdev::find_by_backing(f));
        }
        loop_devices.sort();
        loop_devices.dedup();
        let fuse_mounted = fuse_file.as_deref().is_some_and(mount::mounted_at);
        let fuse_alive = fuse_file
            .as_deref()
            .filter(|_| fuse_mounted)
            .map(mount::fuse_answers);
        let loop_device = live
            .as_ref()
            .and_then(|e| e.loop_device.clone())
            .or_else(|| {
                mount_source
                    .as_ref()
                    .filter(|s| s.starts_with("/dev/loop"))
                    .map(PathBuf::from)
            });

        let mut stale = Vec::new();
        match r.phase {
            Phase::Ready => {}
            p => stale.push(format!(
                "an interrupted {} (phase {})",
                if p == Phase::Creating {
                    "create"
                } else {
                    "destroy"
                },
                p.as_str()
            )),
        }
        if live.is_none() {
            if let Some(e) = &entry {
                stale.push(format!(
                    "the runtime record {} names export process {}, which is gone (or no longer holds the volume)",
                    self.run.root().join(format!("{}.json", e.id)).display(),
                    e.pid
                ));
            }
            if let Some(src) = &mount_source {
                stale.push(format!(
                    "{} is mounted (from {src}) with no live export behind it",
                    mount_path.display()
                ));
            }
            for dev in &loop_devices {
                let on = loopdev::backing_file(dev).unwrap_or_default();
                stale.push(format!(
                    "loop device {} on {} with no live export",
                    dev.display(),
                    on.display()
                ));
            }
        }
        match (fuse_alive, &fuse_file) {
            (Some(false), Some(f)) => stale.push(format!(
                "a dead FUSE mount on {} (its export died; accesses fail with ENOTCONN)",
                f.display()
            )),
            (Some(true), Some(f)) if live.is_none() => stale.push(format!(
                "a FUSE mount on {} with no export holding the volume",
                f.display()
            )),
            _ => {}
        }
        if live.is_none() {
            if let Some(rid) = &rid {
                let there = self
                    .run
                    .existing()
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.exists(rid));
                if there && !VolumeLock::is_held(&self.run, rid) {
                    stale.push(format!(
                        "the runtime directory {} of an export that is gone",
                        self.run.root().join(rid).display()
                    ));
                }
            }
        }
        Status {
            id: r.id.clone(),
            phase: r.phase,
            params: r.params.clone(),
            uuid: r.uuid.clone(),
            header: r.params.detached_header.then(|| self.header(&r.id)),
            mounted: mount_source.is_some(),
            mount_source,
            export_pid: live.as_ref().map(|e| e.pid),
            export_alive: live.is_some(),
            recorded_export_pid: entry.as_ref().map(|e| e.pid),
            loop_device,
            loop_devices,
            fuse_file,
            fuse_mounted,
            fuse_alive,
            stale,
            image,
            mount_path,
        }
    }

    // -----------------------------------------------------------------------------------
    // create

    /// Creates volume `id` (see the module docs for the steps) with one keyslot for `key`,
    /// its KDF chosen by `kdf`. The same id with the same parameters is a no-op that says so
    /// (and mounts it when asked and not mounted).
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad sizes or an id that exists with other parameters (nothing
    /// touched); [`Error::Step`] naming the failed step, after undoing the ones before it
    /// (its cause an [`Error::WrongKey`] when mounting an existing volume with a key that
    /// opens nothing).
    pub fn create(
        &self,
        id: &VolumeId,
        params: &Params,
        opts: CreateOptions,
        key: &SecretBytes,
        kdf: &KdfPolicy,
    ) -> Result<Created> {
        if params.fs.is_empty() || !params.fs.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Invalid(format!(
                "--fs {:?} is not a file system type; use ext4, ext3, ext2, xfs or btrfs",
                params.fs
            )));
        }
        // Bad input is refused before anything is locked or made.
        let params = &self.resolve_base(params)?;
        let existing = self.load(id)?.filter(|r| r.phase == Phase::Ready);
        match existing {
            Some(r) if r.params != *params => return Err(self.param_mismatch(&r, params)),
            Some(_) => {}
            None if params.base.is_some() => check_overlay_size(
                params,
                free_space(self.root())?,
                opts.sparse_ok,
                self.root(),
            )?,
            None => check_size(
                params,
                free_space(self.root())?,
                opts.sparse_ok,
                self.root(),
            )?,
        }
        let _locks = self.store.lock(id)?;
        let swept = self.store.sweep_id(self, id)?;
        if let Some(r) = self.load(id)? {
            // Only a ready record survives the sweep.
            if r.params != *params {
                return Err(self.param_mismatch(&r, params));
            }
            let mut status = self.status_of(&r);
            if opts.mount && !status.served() {
                self.open_locked(&r, key)?;
                status = self.status_of(&r);
            }
            return Ok(Created {
                already_existed: true,
                status,
                swept,
                kdf_hint: None,
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
            checkpoint: None,
        };
        self.store.begin(&rec)?;
        if rec.params.base.is_some() {
            return match self.create_overlay_steps(&mut rec, opts, key, kdf) {
                Ok(()) => {
                    let status = self.status_of(&rec);
                    tracing::info!(id = %id, mounted = status.served(), "overlay volume created");
                    Ok(Created {
                        already_existed: false,
                        status,
                        swept,
                        kdf_hint: kdf.hint(key.expose()).map(str::to_string),
                    })
                }
                Err((step, e)) => Err(self.store.create_failed(id, step, *e, self.teardown(&rec))),
            };
        }
        match self.create_steps(&mut rec, opts, key, kdf) {
            Ok(()) => {
                let status = self.status_of(&rec);
                tracing::info!(id = %id, mounted = status.served(), "volume created");
                Ok(Created {
                    already_existed: false,
                    status,
                    swept,
                    kdf_hint: kdf.hint(key.expose()).map(str::to_string),
                })
            }
            Err((step, e)) => Err(self.store.create_failed(id, step, *e, self.teardown(&rec))),
        }
    }

    /// A base volume's parameters made whole: the base checked (an image or a verity image:
    /// a LUKS base would need a second key), its paths canonical, the size the base's when
    /// not given.
    fn resolve_base(&self, params: &Params) -> Result<Params> {
        let Some(spec) = &params.base else {
            return Ok(params.clone());
        };
        if !matches!(spec, BaseSpec::Image { .. } | BaseSpec::Verity { .. }) {
            return Err(Error::Invalid(
                "a volume's base is a plain image or a dm-verity image (--base, with --base-hash and --base-root)".into(),
            ));
        }
        let (base, _) = overlay::check_base(spec, overlay::BaseKey::None, self.limits)?;
        let size = match params.size {
            0 => base.device(None)?.size(),
            n => n,
        };
        Ok(Params {
            size,
            base: Some(base.spec().clone()),
            ..params.clone()
        })
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

    fn create_steps(
        &self,
        rec: &mut Record,
        opts: CreateOptions,
        key: &SecretBytes,
        kdf: &KdfPolicy,
    ) -> std::result::Result<(), (&'static str, Box<Error>)> {
        let at = |step: &'static str| move |e: Error| (step, Box::new(e));
        let id = rec.id.clone();
        let image_path = self.image(&id);
        let header_path = self.header(&id);
        // image: the directory and an empty image file, made exclusively, made durable.
        let (dir, image) = (|| -> Result<(SafeDir, File)> {
            let volumes = self.store.sub("volumes")?;
            let dir = volumes.create_dir(id.as_str(), 0o700)?;
            let image = dir.create_new("disk.img", 0o600)?;
            image
                .sync_all()
                .map_err(|e| Error::io(format!("cannot sync {}", image_path.display()), e))?;
            dir.sync()?;
            volumes.sync()?;
            Ok((dir, image))
        })()
        .map_err(at("image"))?;
        self.store.step_done(rec, "image").map_err(at("image"))?;

        // format: header and keyslot durable before anything depends on them.
        let header = rec
            .params
            .detached_header
            .then(|| dir.create_new("header.img", 0o600))
            .transpose()
            .map_err(at("format"))?;
        let f = format(
            Target {
                path: &image_path,
                file: &image,
            },
            header.as_ref().map(|h| Target {
                path: &header_path,
                file: h,
            }),
            rec.params.size,
            rec.params.luks_type,
            key,
            kdf,
        )
        .map_err(at("format"))?;
        drop((image, header));
        rec.uuid = Some(f.uuid);
        rec.header_area = Some(f.header_area);
        if rec.params.detached_header {
            dir.sync().map_err(at("format"))?;
        }
        self.store.step_done(rec, "format").map_err(at("format"))?;

        // mkfs: through the export, which leaves it mounted.
        let (image, header, mnt) = self
            .paths_for_open(&id, rec.params.detached_header)
            .map_err(at("mkfs"))?;
        self.export_mount(
            rec,
            &image,
            header.as_deref(),
            key,
            &mnt,
            Some(&rec.params.fs),
        )
        .map_err(at("mkfs"))?;
        self.store.step_done(rec, "mkfs").map_err(at("mkfs"))?;

        if !opts.mount {
            self.stop_exports(&id, Busy::Fail).map_err(at("close"))?;
            self.store.step_done(rec, "close").map_err(at("close"))?;
        }
        self.store.finish(rec).map_err(at("ready"))
    }

    /// The steps of `create` for an overlay volume: the image, the overlay in it over the
    /// base (its keyslot and keys durable before anything depends on them), then mounted
    /// through the export (the base's file system: no `mkfs` is run), closed unless asked to
    /// stay.
    fn create_overlay_steps(
        &self,
        rec: &mut Record,
        opts: CreateOptions,
        key: &SecretBytes,
        kdf: &KdfPolicy,
    ) -> std::result::Result<(), (&'static str, Box<Error>)> {
        let at = |step: &'static str| move |e: Error| (step, Box::new(e));
        let id = rec.id.clone();
        let image_path = self.image(&id);
        let image = (|| -> Result<File> {
            let volumes = self.store.sub("volumes")?;
            let dir = volumes.create_dir(id.as_str(), 0o700)?;
            let image = dir.create_new("disk.img", 0o600)?;
            dir.sync()?;
            volumes.sync()?;
            Ok(image)
        })()
        .map_err(at("image"))?;
        self.store.step_done(rec, "image").map_err(at("image"))?;

        let made = (|| -> Result<overlay::Made> {
            let spec = rec.params.base.as_ref().expect("an overlay volume");
            let (base, _) = overlay::check_base(spec, overlay::BaseKey::None, self.limits)?;
            let params = kdf.params_for(key.expose(), false).map_err(|e| {
                Error::Invalid(format!("cannot choose the keyslot's key derivation: {e}"))
            })?;
            overlay::create_in_file(
                &image,
                &image_path,
                key.expose(),
                &base,
                None,
                &overlay::Create {
                    size: Some(rec.params.size),
                    cluster_size: None,
                    kdf: params,
                    label: Some(format!("sealvol volume {id}")),
                },
            )
        })()
        .map_err(at("format"))?;
        drop(image);
        rec.uuid = Some(made.uuid.clone());
        rec.header_area = Some(overlay::KEY_AREA);
        rec.checkpoint = Some(made.checkpoint.to_string());
        self.store.step_done(rec, "format").map_err(at("format"))?;

        // The step keeps the LUKS path's name (`mkfs`: the file system is mounted through
        // the export), so that crash points and sweeps see one list of steps.
        let (image, _, mnt) = self.paths_for_open(&id, false).map_err(at("mkfs"))?;
        self.export_mount(rec, &image, None, key, &mnt, None)
            .map_err(at("mkfs"))?;
        self.store.step_done(rec, "mkfs").map_err(at("mkfs"))?;
        if !opts.mount {
            let c = self.clear_host(&id, Busy::Fail).map_err(at("close"))?;
            if let Some(cp) = c.checkpoint {
                rec.checkpoint = Some(cp.to_string());
            }
            self.store.step_done(rec, "close").map_err(at("close"))?;
        }
        self.store.finish(rec).map_err(at("ready"))
    }

    // -----------------------------------------------------------------------------------
    // open / close

    /// Mounts volume `id` on its mount point with `key` (a no-op when a live export has it
    /// mounted). Returns whether it was mounted already, and the status.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the id does not exist or is not ready; [`Error::Planted`]
    /// when its files are not the ones sealvol made; [`Error::Step`] (its cause an
    /// [`Error::WrongKey`] for a key that opens nothing: then nothing changed).
    pub fn open(&self, id: &VolumeId, key: &SecretBytes) -> Result<(bool, Status)> {
        self.store.ready(id)?; // before the locks make any directory
        let _locks = self.store.lock(id)?;
        let r = self.store.ready(id)?;
        let st = self.status_of(&r);
        if st.served() {
            return Ok((true, st));
        }
        // A dead export or a stale mount is cleared first.
        self.stop_exports(id, Busy::Fail)?;
        // No export left, yet claimed: a VM's qemu reads it through its own LUKS driver.
        let image = self.image_file_id(id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "the image of volume {id} is missing; run `sealvol volume sweep`, or destroy and create it again"
            ))
        })?;
        if VolumeLock::is_held(&self.run, &runtime_id(image)) {
            return Err(Error::Invalid(format!(
                "volume {id} is in use by another process (a running VM reading it as its data disk: `sealvol vm list`); stop that VM first"
            )));
        }
        self.open_locked(&r, key)?;
        Ok((false, self.status_of(&r)))
    }

    fn open_locked(&self, r: &Record, key: &SecretBytes) -> Result<()> {
        let (image, header, mnt) = self.paths_for_open(&r.id, r.params.detached_header)?;
        self.export_mount(r, &image, header.as_deref(), key, &mnt, None)
            .map_err(|e| {
                self.store
                    .step_error("open", &r.id, "mount", e, "; nothing was changed")
            })
    }

    /// Unmounts volume `id` and stops its export (which wipes the key). Returns whether it
    /// was open.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the id does not exist or the file system is busy (nothing
    /// changed then).
    pub fn close(&self, id: &VolumeId) -> Result<bool> {
        self.store.ready(id)?;
        let _locks = self.store.lock(id)?;
        let mut r = self.store.ready(id)?;
        let c = self.clear_host(id, Busy::Fail)?;
        // An overlay volume: the state it stopped at is the oldest the next open accepts.
        if let (Some(_), Some(cp)) = (&r.params.base, c.checkpoint) {
            r.checkpoint = Some(cp.to_string());
            self.store.save(&r)?;
            tracing::info!(id = %id, checkpoint = %cp, "overlay volume closed");
        }
        Ok(c.open)
    }

    /// Replaces the key of volume `id`: a keyslot for `new_key` (its KDF by `kdf`) is
    /// written before the keyslot `key` opens is wiped, so a crash leaves one of the two
    /// keys working. A mounted volume stays mounted (its export holds the volume key, which
    /// does not change).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the id does not exist or is not ready; [`Error::Planted`]
    /// when its files are not the ones sealvol made; [`Error::WrongKey`] when `key` opens
    /// nothing (nothing written).
    pub fn change_key(
        &self,
        id: &VolumeId,
        key: &SecretBytes,
        new_key: &SecretBytes,
        kdf: &KdfPolicy,
    ) -> Result<crate::luks_file::KeyAdded> {
        self.store.ready(id)?;
        let _locks = self.store.lock(id)?;
        let r = self.store.ready(id)?;
        let (image, header) = self.checked_files(id, r.params.detached_header)?;
        let changed = crate::luks_file::LuksFile::new(image, header)
            .with_limits(self.limits)
            .change_key(key.expose(), new_key.expose(), kdf, None)?;
        tracing::info!(id = %id, keyslot = changed.keyslot, "volume key changed");
        Ok(changed)
    }

    /// Stops every export of `id`'s image and clears a mount on its mount point that has no
    /// live export. Returns whether anything was open.
    fn stop_exports(&self, id: &VolumeId, busy: Busy) -> Result<bool> {
        Ok(self.clear_host(id, busy)?.open)
    }

    /// Stops every export of `id`'s image, then clears what dead exports left: a mount on
    /// its mount point, loop devices on the image or on its FUSE file, a dead FUSE mount,
    /// runtime records, files and lock files (never those of a process that holds the
    /// volume's claim).
    fn clear_host(&self, id: &VolumeId, busy: Busy) -> Result<Cleared> {
        let image = self.image(id);
        let mut c = Cleared::default();
        while let Some(entry) = served::find(&self.run, &image) {
            let alive = served::alive(&self.run, &entry);
            let stopped = served::stop(&self.run, &entry, busy, STOP_TIMEOUT)?;
            c.lazy |= stopped.lazy;
            c.checkpoint = stopped.checkpoint.or(c.checkpoint);
            c.open = true;
            c.actions.push(if alive {
                format!("stopped export {}", entry.pid)
            } else {
                format!(
                    "closed export {} that had died (its mount and loop device)",
                    entry.pid
                )
            });
        }
        let mnt = self.mount_point(id);
        let is_dir = self
            .store
            .existing_sub("mnt")?
            .is_some_and(|m| m.kind(id.as_str()).ok().flatten() == Some(Kind::Dir));
        if is_dir && mount::mounted_at(&mnt) {
            tracing::warn!(mount = %mnt.display(), "mounted without a live export; unmounting lazily");
            mount::unmount_nofollow(&mnt, true)?;
            c.lazy = true;
            c.open = true;
            c.actions
                .push(format!("unmounted {} (no live export)", mnt.display()));
        }
        if let Some(rid) = self.image_runtime_id(id) {
            let done = served::clear_runtime(&self.run, &rid)?;
            c.open |= done.mounts;
            c.actions.extend(done.actions);
        }
        for dev in loopdev::find_by_backing(&image) {
            loopdev::detach(&dev, None)?;
            c.open = true;
            c.actions.push(format!(
                "detached {} (a loop device on the image)",
                dev.display()
            ));
        }
        Ok(c)
    }

    // -----------------------------------------------------------------------------------
    // destroy

    /// Destroys volume `id`: unmount (busy: bounded retry, then lazy), stop the export, wipe
    /// the header area and every other file of the id in place, delete the files, remove the
    /// record. An absent id is a success that says so. Only the volume's own files are
    /// wiped (see [`Destroyed::refused`]).
    ///
    /// # Errors
    /// [`Error::Step`] when a step fails; the record stays `destroying` and the next
    /// `destroy` or `sweep` finishes it.
    pub fn destroy(&self, id: &VolumeId) -> Result<Destroyed> {
        let absent = || Destroyed {
            id: id.clone(),
            already_absent: true,
            lazy_unmount: false,
            wiped: Vec::new(),
            refused: Vec::new(),
        };
        if self.store.existing()?.is_none() {
            return Ok(absent());
        }
        let _locks = self.store.lock(id)?;
        let rec = match self.load(id)? {
            Some(r) => r,
            None if !self.has_leftovers(id)? => {
                self.store.unlink_lock(id);
                return Ok(absent());
            }
            None => self.orphan_record(id),
        };
        let d = self
            .teardown(&rec)
            .map_err(|e| self.store.destroy_failed(id, e))?;
        self.store.unlink_lock(id);
        tracing::info!(id = %id, "volume destroyed");
        Ok(d)
    }

    /// A `destroying` record for files, mounts or exports of `id` that have no record, so
    /// that [`Manager::teardown`] removes them like any interrupted destroy.
    fn orphan_record(&self, id: &VolumeId) -> Record {
        let detached = self
            .vol_dir(id)
            .ok()
            .flatten()
            .is_some_and(|d| d.exists("header.img"));
        Record {
            id: id.clone(),
            phase: Phase::Destroying,
            params: Params {
                size: 0,
                fs: String::new(),
                detached_header: detached,
                luks_type: LuksType::default(),
                base: None,
            },
            steps: Vec::new(),
            uuid: None,
            header_area: None,
            created: now(),
            checkpoint: None,
        }
    }

    /// Whether anything of `id` is on the host (a dangling link counts: it is removed).
    fn has_leftovers(&self, id: &VolumeId) -> Result<bool> {
        Ok(self.store.names("volumes", id)?
            || self.store.names("mnt", id)?
            || served::find(&self.run, &self.image(id)).is_some())
    }

    /// Undoes or finishes: records `destroying`, then stops, wipes, deletes, unrecords.
    fn teardown(&self, rec: &Record) -> Result<Destroyed> {
        let id = &rec.id;
        // A `creating` record already means "undo" to a sweep, and on a full disk there may
        // be no room to write another: only a ready volume's record is rewritten.
        if rec.phase == Phase::Ready {
            self.store.destroying(&mut rec.clone())?;
        }
        self.store.crash("destroy:journal");
        let lazy = self.clear_host(id, Busy::RetryThenLazy(BUSY_WAIT))?.lazy;
        self.store.crash("destroy:unmount");

        // Keys first: the header area of the image, then every other file of the id whole,
        // each through a descriptor checked to be the volume's.
        let mut wiped = Vec::new();
        let mut refused = Vec::new();
        let mut note = |w: WipeOutcome| match w {
            WipeOutcome::Absent => {}
            WipeOutcome::Done(p, n) => wiped.push((p, n)),
            WipeOutcome::Refused(p, why) => refused.push((p, why)),
        };
        let root = self.state()?;
        let volumes = root.ensure_dir("volumes", 0o700)?;
        match volumes.kind(id.as_str())? {
            Some(Kind::Dir) => {
                let dir = volumes.open_dir(id.as_str())?.ok_or_else(|| {
                    Error::io(
                        format!("{} vanished", self.volume_dir(id).display()),
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?;
                let header_area = if rec.params.detached_header {
                    0
                } else {
                    rec.header_area.unwrap_or(DEFAULT_HEADER_AREA)
                };
                let uuid = rec.uuid.as_deref();
                note(wipe_checked(&dir, "disk.img", Some(header_area), uuid)?);
                for (name, kind) in dir.entries()? {
                    if name != "disk.img" && matches!(kind, Kind::File | Kind::Symlink) {
                        note(wipe_checked(&dir, &name, None, uuid)?);
                    }
                }
            }
            Some(k) => {
                let path = self.volume_dir(id);
                let why =
                    format!("{k:?} where the volume's directory belongs: removed, never followed");
                tracing::warn!(path = %path.display(), reason = %why, "not wiping");
                refused.push((path, why));
            }
            None => {}
        }
        self.store.crash("destroy:erase");

        // Then the data (links are removed, never followed; a mount below is an error).
        volumes.remove_tree(id.as_str())?;
        let mnt = root.ensure_dir("mnt", 0o700)?;
        mnt.remove_dir(id.as_str())?;
        volumes.sync()?;
        mnt.sync()?;
        self.store.crash("destroy:delete");
        self.store.remove_record(id)?;
        Ok(Destroyed {
            id: id.clone(),
            already_absent: false,
            lazy_unmount: lazy,
            wiped,
            refused,
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
        // An unsafe state directory is refused here too, not listed as empty.
        self.store.existing()?;
        let mut out = Vec::new();
        for id in self.store.ids() {
            if let Some(r) = self.load(&id)? {
                out.push(self.status_of(&r));
            }
        }
        Ok(out)
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
        if !st.served() {
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
    /// a live export of ready volumes (closed), and in the runtime directory the records,
    /// directories (FUSE file, log) and lock files of exports that died (never anything a
    /// process holding a volume's claim uses). Returns what it did; each action is logged.
    ///
    /// # Errors
    /// The first repair that fails (the rest are left for the next sweep).
    pub fn sweep(&self) -> Result<Vec<Action>> {
        self.store.sweep(self)
    }
}

impl Sweeper for Manager {
    type Record = Record;

    fn undo_create(&self, r: &Record) -> Result<String> {
        self.teardown(r)?;
        Ok(format!(
            "undid an interrupted create (steps done: {})",
            if r.steps.is_empty() {
                "none".into()
            } else {
                r.steps.join(", ")
            }
        ))
    }

    fn finish_destroy(&self, r: &Record) -> Result<String> {
        self.teardown(r)?;
        Ok("finished an interrupted destroy".into())
    }

    /// A live export keeps what it serves, and only loop devices on the image itself go;
    /// without one, whatever a dead export left is cleared.
    fn repair_ready(&self, r: Record) -> Result<Vec<String>> {
        let image = self.image(&r.id);
        let live = served::find(&self.run, &image).is_some_and(|e| served::alive(&self.run, &e));
        if !live {
            return Ok(self
                .clear_host(&r.id, Busy::RetryThenLazy(BUSY_WAIT))?
                .actions);
        }
        let mut out = Vec::new();
        for dev in loopdev::find_by_backing(&image) {
            loopdev::detach(&dev, None)?;
            out.push(format!(
                "detached {} (a loop device on the image)",
                dev.display()
            ));
        }
        Ok(out)
    }

    fn clear_leftovers(&self, id: &VolumeId) -> Result<Option<String>> {
        if !self.has_leftovers(id)? {
            return Ok(None);
        }
        self.teardown(&self.orphan_record(id))?;
        Ok(Some(
            "removed files, mounts and exports that had no record".into(),
        ))
    }

    /// Ids of the exports on images in this state directory.
    fn ids_on_host(&self) -> Vec<VolumeId> {
        let volumes = self.store.path("volumes");
        self.run
            .list()
            .into_iter()
            .filter_map(|e| {
                let rest = e.volume.strip_prefix(&volumes).ok()?;
                VolumeId::parse(&rest.iter().next()?.to_string_lossy()).ok()
            })
            .collect()
    }

    /// In the runtime directory: the records, directories (FUSE file, log) and lock files
    /// of exports that died.
    fn sweep_more(&self) -> Result<Vec<Action>> {
        Ok(served::sweep_runtime(&self.run)?
            .into_iter()
            .map(|(id, action)| Action { id, action })
            .collect())
    }
}

/// The identity of the file `name` in `dir` when it is a regular file of one link;
/// `None` when absent.
///
/// # Errors
/// [`Error::Planted`] for a symbolic link, a hard link or another kind of file.
fn checked_file(dir: &SafeDir, name: &str) -> Result<Option<FileId>> {
    let Some(st) = dir.stat(name)? else {
        return Ok(None);
    };
    let planted = |found: String| {
        Error::Planted {
        path: dir.join(name),
        found,
        action: "sealvol uses only the files it made there and left it untouched; remove it (or `sealvol volume destroy` the volume)".into(),
    }
    };
    match Kind::of_mode(st.st_mode) {
        Kind::File if st.st_nlink == 1 => Ok(Some(FileId::of(&st))),
        Kind::File => Err(planted(format!("a hard link ({} links)", st.st_nlink))),
        Kind::Symlink => Err(planted("a symbolic link".into())),
        k => Err(planted(format!("not a regular file ({k:?})"))),
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
            base: None,
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
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size(" 1t ").unwrap(), 1 << 40);
        for bad in ["10X", "-1", "", "G", "99999999999T", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
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
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert_eq!(wipe(&mut f, &p, Some(1 << 19)).unwrap(), 1 << 19);
        let b = std::fs::read(&p).unwrap();
        assert!(b[..1 << 19].iter().all(|&x| x == 0));
        assert!(b[b.len() - 4096..].iter().all(|&x| x == 0xbb));
        wipe(&mut f, &p, None).unwrap();
        assert!(std::fs::read(&p).unwrap().iter().all(|&x| x == 0));
    }

    /// A LUKS header with `uuid` at the LUKS1/LUKS2 offset, then data.
    fn luks_like(uuid: &str) -> Vec<u8> {
        let mut b = vec![0x5a; 8192];
        b[..6].copy_from_slice(LUKS_MAGIC);
        b[6..8].copy_from_slice(&[0, 2]);
        b[LUKS_UUID_AT..LUKS_UUID_AT + 40].fill(0);
        b[LUKS_UUID_AT..LUKS_UUID_AT + uuid.len()].copy_from_slice(uuid.as_bytes());
        b
    }

    #[test]
    fn checked_wipes_touch_only_the_volume_s_own_file() {
        let t = tempfile::tempdir().unwrap();
        let dir = SafeDir::open_root(&t.path().join("v")).unwrap();
        let uuid = "0b5a3c2e-7d41-4f6e-9a0b-1c2d3e4f5a6b";
        let canary = t.path().join("canary");
        std::fs::write(&canary, luks_like(uuid)).unwrap();
        // A hard link to a file outside (even one with the right UUID) is never written.
        std::fs::hard_link(&canary, dir.join("disk.img")).unwrap();
        let w = wipe_checked(&dir, "disk.img", None, Some(uuid)).unwrap();
        assert!(matches!(w, WipeOutcome::Refused(..)), "{w:?}");
        std::os::unix::fs::symlink(&canary, dir.join("header.img")).unwrap();
        let w = wipe_checked(&dir, "header.img", None, Some(uuid)).unwrap();
        assert!(matches!(w, WipeOutcome::Refused(..)), "{w:?}");
        assert_eq!(std::fs::read(&canary).unwrap(), luks_like(uuid));
        assert!(!dir.exists("disk.img") && !dir.exists("header.img"));
        // Another volume's header: refused; the volume's own: wiped.
        std::fs::write(dir.join("disk.img"), luks_like("other-uuid")).unwrap();
        let w = wipe_checked(&dir, "disk.img", Some(4096), Some(uuid)).unwrap();
        assert!(
            matches!(&w, WipeOutcome::Refused(_, why) if why.contains("other-uuid")),
            "{w:?}"
        );
        std::fs::write(dir.join("disk.img"), luks_like(&uuid.to_uppercase())).unwrap();
        let w = wipe_checked(&dir, "disk.img", Some(4096), Some(uuid)).unwrap();
        assert!(matches!(w, WipeOutcome::Done(_, 4096)), "{w:?}");
        let b = std::fs::read(dir.join("disk.img")).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0) && b[4096] == 0x5a);
        // Without the magic (a wipe was interrupted), the UUID cannot be checked: wiped.
        let w = wipe_checked(&dir, "disk.img", None, Some("other")).unwrap();
        assert!(matches!(w, WipeOutcome::Done(_, 8192)), "{w:?}");
        assert!(matches!(
            wipe_checked(&dir, "none", None, None).unwrap(),
            WipeOutcome::Absent
        ));
    }

    #[test]
    fn locks_serialize_one_id_and_survive_removal() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(dir.path(), StateDir::new(dir.path().join("run")));
        m.store.ensure_dirs().unwrap();
        let id = VolumeId::parse("a").unwrap();
        let held = m.store.lock_id(&id).unwrap();
        let m2 = m.clone();
        let id2 = id.clone();
        let t = std::thread::spawn(move || {
            let _l = m2.store.lock_id(&id2).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished());
        m.store.unlink_lock(&id);
        drop(held);
        t.join().unwrap();
        // Another id is never blocked.
        let _a = m.store.lock_id(&id).unwrap();
        let _b = m.store.lock_id(&VolumeId::parse("b").unwrap()).unwrap();
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
