//! Overlay files: the encrypted copy-on-write layers of `sealvol-overlay` as files on the
//! host, and every verb on them as one typed call (`sealvol overlay …`).
//!
//! The overlay crate never opens a path; this module does, and decides how files are
//! found:
//!
//! - **Files.** An overlay is one regular file. A new one is made exclusively (`O_EXCL`,
//!   mode 0600) and deleted again when its creation fails, so a failed `create` leaves
//!   nothing behind (the crate's create is not atomic by itself).
//! - **Locators.** A layer above a frozen one names it by a *locator*: the frozen file's
//!   name when both are in one directory, else its absolute path. A relative locator is
//!   resolved against the directory of the layer that stored it (the one right above), so a
//!   directory of layers can be moved as a whole. [`chain`] lists the files of a chain.
//! - **Bases** ([`BaseSpec`]): what an overlay reads where it maps nothing: nothing (zeros),
//!   a plain image, a dm-verity image (every read verified against the trusted root hash,
//!   the signature over it checked first), or a LUKS volume opened read-only with its own
//!   key. The base's identity (the verity root hash, the LUKS UUID; nothing for a plain
//!   image) is recorded at creation and must be presented again at every open.
//! - **Claims.** A verb that writes an overlay holds its claim ([`VolumeLock`], the one an
//!   export holds while it serves), so an overlay is never written by two processes.
//! - **Keys.** Every verb takes the consumer's key as bytes; the embedded LUKS2 header's
//!   keyslots are managed by the [`crate::luks_file`] verbs on the overlay file.
//!
//! What it does not do: no format (the crate), no serving (see [`crate::export`], whose
//! [`crate::export::SourceSpec::Overlay`] serves an overlay), no printing.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sealvol_block::{BlockDevice, CryptDevice, FileDevice, FileOptions};
use sealvol_crypto::SecretBytes;
use sealvol_luks::{DataSegment, KdfLimits, KdfParams};
pub use sealvol_overlay::{Checkpoint, FlattenReport, Progress, RetireReport, Status, Unverified};
use sealvol_overlay::{CloneOptions, CreateOptions, LowerLayer, OpenOptions, OverlayDevice, Store};
use serde::{Deserialize, Serialize};

use crate::export::VeritySpec;
use crate::lock::VolumeLock;
use crate::luks_file::{Access, LuksFile};
use crate::state::{volume_id, StateDir};
use crate::{Error, Result};

/// The LUKS2 subsystem the embedded header of an overlay names.
pub const SUBSYSTEM: &str = "sealvol-overlay";

/// Bytes at the start of an overlay file that hold every key of the layer: the embedded
/// LUKS2 header (keyslots) and both root slots (the wrapped master keys). Wiping them
/// crypto-erases the layer.
pub const KEY_AREA: u64 = sealvol_overlay::format::DATA_START;

/// What an overlay reads where it maps nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BaseSpec {
    /// No base: unwritten clusters read as zeros (the overlay needs a size).
    #[default]
    None,
    /// A plain image file, only ever read.
    Image {
        /// The image.
        path: PathBuf,
    },
    /// A dm-verity image: every read verified against the trusted root hash.
    Verity {
        /// The image.
        image: PathBuf,
        /// Its tree and the root hash (and signature) the caller trusts.
        verity: VeritySpec,
    },
    /// A LUKS volume opened read-only with its own key.
    Luks {
        /// The volume (its data file when the header is detached).
        volume: PathBuf,
        /// The detached header, if any.
        header: Option<PathBuf>,
    },
}

impl BaseSpec {
    /// Whether opening the base needs a key of its own (a LUKS base).
    pub fn needs_key(&self) -> bool {
        matches!(self, BaseSpec::Luks { .. })
    }

    /// The base's main file, if any (for messages and records).
    pub fn path(&self) -> Option<&Path> {
        match self {
            BaseSpec::None => None,
            BaseSpec::Image { path } => Some(path),
            BaseSpec::Verity { image, .. } => Some(image),
            BaseSpec::Luks { volume, .. } => Some(volume),
        }
    }

    /// A volume's base from the parts a container engine's options or an API body give
    /// (`image`; `hash`, `hash_offset` and `root` for a dm-verity base): `None` when no part
    /// is given.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a relative path or a verity base given only in part.
    pub fn from_parts(
        image: Option<PathBuf>,
        hash: Option<PathBuf>,
        hash_offset: Option<u64>,
        root: Option<String>,
    ) -> Result<Option<BaseSpec>> {
        for (what, p) in [("image", &image), ("hash tree", &hash)] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return Err(Error::Invalid(format!(
                    "the base's {what} {:?} must be an absolute path",
                    p.to_string_lossy().chars().take(256).collect::<String>()
                )));
            }
        }
        match (image, hash, root) {
            (None, None, None) if hash_offset.is_none() => Ok(None),
            (Some(path), None, None) if hash_offset.is_none() => Ok(Some(BaseSpec::Image { path })),
            (Some(image), Some(hash), Some(root)) => Ok(Some(BaseSpec::Verity {
                image,
                verity: VeritySpec {
                    hash,
                    hash_offset: hash_offset.unwrap_or(0),
                    root,
                    signature: None,
                },
            })),
            _ => Err(Error::Invalid(
                "a verity base needs all of its image, hash tree and root hash (and the tree's offset when it is not at 0); a plain base only its image".into(),
            )),
        }
    }
}

/// A base checked by [`check_base`]: canonical paths, the LUKS data segment, the identity
/// an overlay records. Holds no key.
#[derive(Clone, Debug)]
pub struct Base {
    spec: BaseSpec,
    segment: Option<DataSegment>,
    root: Option<Vec<u8>>,
    tag: [u8; 32],
}

impl Base {
    /// The spec with canonical paths (a verity signature, checked already, left out).
    pub fn spec(&self) -> &BaseSpec {
        &self.spec
    }

    /// The identity an overlay over this base records at creation and checks at every open:
    /// the verity root hash (its first 32 bytes), the LUKS UUID, or zeros for a plain image
    /// and for no base.
    pub fn tag(&self) -> [u8; 32] {
        self.tag
    }

    /// The base as a read-only block device; a LUKS base with its volume key (which then
    /// lives only inside the device's ciphers).
    ///
    /// # Errors
    /// [`Error::Invalid`] without the volume key of a LUKS base; the device layers' errors.
    pub fn device(&self, volume_key: Option<SecretBytes>) -> Result<Arc<dyn BlockDevice>> {
        match &self.spec {
            BaseSpec::None => Ok(Arc::new(sealvol_block::MemDevice::new(0).into_read_only())),
            BaseSpec::Image { path } => Ok(Arc::new(FileDevice::open(
                path,
                FileOptions {
                    read_only: true,
                    direct: false,
                },
            )?)),
            BaseSpec::Verity { image, verity } => crate::export::verity_device(
                image,
                &verity.hash,
                verity.hash_offset,
                self.root.as_deref().unwrap_or_default(),
            ),
            BaseSpec::Luks { volume, .. } => {
                let key = volume_key.ok_or_else(|| {
                    Error::Invalid(format!(
                        "the LUKS base {} needs its key (--base-key-file)",
                        volume.display()
                    ))
                })?;
                let segment = self.segment.as_ref().ok_or_else(|| {
                    Error::Invalid("the LUKS base was not checked before use".into())
                })?;
                let file = FileDevice::open(
                    volume,
                    FileOptions {
                        read_only: true,
                        direct: false,
                    },
                )?;
                let dev = CryptDevice::new(file, segment, &key)?.into_read_only();
                drop(key);
                Ok(Arc::new(dev))
            }
        }
    }
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|_| {
        Error::Invalid(format!(
            "the {what} {} does not exist; check the path",
            path.display()
        ))
    })
}

/// Where a base's key comes from in [`check_base`].
#[derive(Clone, Copy, Debug)]
pub enum BaseKey<'a> {
    /// No key (every base but LUKS).
    None,
    /// The LUKS base's passphrase or key: its keyslot is run (under the KDF limits).
    Key(&'a [u8]),
    /// The LUKS base's volume key, found earlier (a background export is handed it):
    /// checked against the header's digest.
    VolumeKey(&'a SecretBytes),
}

/// Checks `spec` before anything uses it: the files exist; for verity the superblock, the
/// signature over the root hash (when given) and the first block against the root; for
/// LUKS the header (under `limits`), its data segment and the key. Returns the checked base
/// and, for LUKS, its volume key.
///
/// # Errors
/// [`Error::Invalid`] for missing files or a missing key; [`Error::NotVerified`] for a
/// verity root or signature that does not verify; [`Error::WrongKey`] for a LUKS key that
/// opens nothing; the header's refusals.
pub fn check_base(
    spec: &BaseSpec,
    key: BaseKey<'_>,
    limits: KdfLimits,
) -> Result<(Base, Option<SecretBytes>)> {
    check(spec, key, limits, true)
}

/// [`check_base`] of a spec checked before (what a background export is given): the files
/// and the LUKS volume key it was handed are checked again; a verity root is parsed but its
/// signature and first block are not checked again (every read is verified anyway).
///
/// # Errors
/// As [`check_base`].
pub fn recheck_base(
    spec: &BaseSpec,
    volume_key: Option<&SecretBytes>,
) -> Result<(Base, Option<SecretBytes>)> {
    let key = volume_key.map_or(BaseKey::None, BaseKey::VolumeKey);
    check(spec, key, KdfLimits::default(), false)
}

fn check(
    spec: &BaseSpec,
    key: BaseKey<'_>,
    limits: KdfLimits,
    fresh: bool,
) -> Result<(Base, Option<SecretBytes>)> {
    match spec {
        BaseSpec::None => Ok((
            Base {
                spec: BaseSpec::None,
                segment: None,
                root: None,
                tag: [0; 32],
            },
            None,
        )),
        BaseSpec::Image { path } => {
            let path = canonical(path, "base image")?;
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return Err(Error::Invalid(format!(
                    "the base {} is not a regular file",
                    path.display()
                )));
            }
            Ok((
                Base {
                    spec: BaseSpec::Image { path },
                    segment: None,
                    root: None,
                    tag: [0; 32],
                },
                None,
            ))
        }
        BaseSpec::Verity { image, verity } => {
            let image = canonical(image, "base image")?;
            let hash = canonical(&verity.hash, "base hash file")?;
            let v = VeritySpec {
                hash,
                ..verity.clone()
            };
            let root = if fresh {
                crate::export::check_verity(&image, &v.hash, &v)?
            } else {
                crate::export::parse_verity_root(&v)?
            };
            let mut tag = [0u8; 32];
            let n = root.len().min(32);
            tag[..n].copy_from_slice(&root[..n]);
            Ok((
                Base {
                    spec: BaseSpec::Verity {
                        image,
                        verity: VeritySpec {
                            signature: None,
                            ..v
                        },
                    },
                    segment: None,
                    root: Some(root),
                    tag,
                },
                None,
            ))
        }
        BaseSpec::Luks { volume, header } => {
            let volume = canonical(volume, "base volume")?;
            let header = header
                .as_deref()
                .map(|h| canonical(h, "base header"))
                .transpose()?;
            let mut open = LuksFile::new(&volume, header.clone()).open(Access::Read, limits)?;
            let segment = open.data_segment()?;
            open.data_len(&segment)?;
            let vk = match key {
                BaseKey::None => {
                    return Err(Error::Invalid(format!(
                        "the base {} is a LUKS volume: give its key (--base-key-file)",
                        volume.display()
                    )))
                }
                BaseKey::Key(k) => open.unlock(k, None)?.volume_key,
                BaseKey::VolumeKey(vk) => {
                    if !open.volume().verify_volume_key(vk)? {
                        return Err(Error::WrongKey(format!(
                            "the key handed over does not open the base {} (was its header replaced?)",
                            volume.display()
                        )));
                    }
                    SecretBytes::from_slice(vk.expose())
                }
            };
            let mut tag = [0u8; 32];
            tag[..5].copy_from_slice(b"luks:");
            let uuid = open.volume().uuid().replace('-', "");
            let n = uuid.len().min(27);
            tag[5..5 + n].copy_from_slice(&uuid.as_bytes()[..n]);
            Ok((
                Base {
                    spec: BaseSpec::Luks { volume, header },
                    segment: Some(segment),
                    root: None,
                    tag,
                },
                Some(vk),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files, locators, chains

/// Opens an overlay file as a store (read-write when `write`).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn open_store(path: &Path, write: bool) -> Result<Arc<dyn Store>> {
    let f = FsOpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| {
            Error::io(
                format!(
                    "cannot open the overlay {}{}",
                    path.display(),
                    if write { " for writing" } else { "" }
                ),
                e,
            )
        })?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(Arc::new(f))
}

/// A new, empty overlay file at `path` (made exclusively, mode 0600), removed again by
/// [`NewFile::keep`] not being called.
struct NewFile {
    path: PathBuf,
    file: Option<File>,
    kept: bool,
}

impl NewFile {
    fn create(path: &Path) -> Result<Self> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Invalid(format!(
                        "{} exists already; a new overlay needs a new file (remove it or choose another name)",
                        path.display()
                    ))
                } else {
                    Error::io(format!("cannot create {}", path.display()), e)
                }
            })?;
        Ok(NewFile {
            path: path.to_path_buf(),
            file: Some(file),
            kept: false,
        })
    }

    fn store(&self) -> Result<Arc<dyn Store>> {
        let f = self
            .file
            .as_ref()
            .expect("open until kept")
            .try_clone()
            .map_err(|e| Error::io(format!("cannot use {}", self.path.display()), e))?;
        Ok(Arc::new(f))
    }

    /// Makes it durable (and its directory entry) and keeps it.
    fn keep(mut self) -> Result<PathBuf> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| Error::io(format!("cannot sync {}", self.path.display()), e))?;
        }
        sync_dir(&self.path)?;
        self.kept = true;
        Ok(self.path.clone())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent_of(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync the directory {}", dir.display()), e))
}

/// The locator a layer at `top` stores for the frozen layer at `lower`: its file name when
/// both are in one directory, else its absolute path.
///
/// # Errors
/// [`Error::Invalid`] for a path that is not UTF-8 or longer than a locator holds.
pub fn locator_for(lower: &Path, top: &Path) -> Result<Vec<u8>> {
    let lower = canonical(lower, "lower layer")?;
    let top_dir = canonical(&parent_of(top), "directory")?;
    let loc = if lower.parent() == Some(top_dir.as_path()) {
        PathBuf::from(lower.file_name().unwrap_or_default())
    } else {
        lower.clone()
    };
    let text = loc.to_str().ok_or_else(|| {
        Error::Invalid(format!(
            "{} is not a UTF-8 path; rename the layer",
            lower.display()
        ))
    })?;
    if text.len() > sealvol_overlay::format::MAX_LOCATOR {
        return Err(Error::Invalid(format!(
            "the path {text} is longer than the {} bytes a layer can name; keep the layers in one directory",
            sealvol_overlay::format::MAX_LOCATOR
        )));
    }
    Ok(text.as_bytes().to_vec())
}

fn resolve_locator(locator: &[u8], above: &Path) -> PathBuf {
    let loc = Path::new(std::str::from_utf8(locator).unwrap_or(""));
    if loc.is_absolute() {
        loc.to_path_buf()
    } else {
        parent_of(above).join(loc)
    }
}

/// The files of the chain below the overlay at `top` (0 = right below), from its locators
/// as its root slots name them (unauthenticated: an open checks every layer against the
/// root hash the top pinned).
///
/// # Errors
/// [`Error::Overlay`] when `top` holds no overlay root.
pub fn chain(top: &Path) -> Result<Vec<PathBuf>> {
    let p = peek(top)?;
    Ok(chain_of(top, &p.lower))
}

fn chain_of(top: &Path, lower: &[LowerLayer]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for l in lower {
        let above = out.last().map_or(top, |p| p.as_path()).to_path_buf();
        out.push(resolve_locator(&l.locator, &above));
    }
    out
}

/// Opens the lower layers of `top` read-only, where its chain says they are.
fn resolver(
    top: &Path,
) -> Result<impl FnMut(&LowerLayer) -> sealvol_overlay::Result<Arc<dyn Store>>> {
    let paths = chain(top)?;
    let top = top.to_path_buf();
    Ok(move |l: &LowerLayer| {
        // The layer above as the chain names it; the last part from the verified record.
        let above = if l.index == 0 {
            top.clone()
        } else {
            paths
                .get(l.index - 1)
                .cloned()
                .unwrap_or_else(|| top.clone())
        };
        let path = resolve_locator(&l.locator, &above);
        let f = File::open(&path).map_err(|e| sealvol_overlay::Error::Io {
            context: format!(
                "lower layer {} ({}) is named {:?}, which does not open as {}",
                l.index,
                l.uuid,
                String::from_utf8_lossy(&l.locator),
                path.display()
            ),
            source: e,
        })?;
        Ok(Arc::new(f) as Arc<dyn Store>)
    })
}

/// What the root slots of the overlay at `path` say, before any key ([`Unverified`]).
///
/// # Errors
/// [`Error::Io`]; [`Error::Overlay`] when the file holds no overlay root.
pub fn peek(path: &Path) -> Result<Unverified> {
    let store = open_store(path, false)?;
    sealvol_overlay::peek(&*store).map_err(|e| Error::overlay(path, e))
}

/// Whether the file at `path` starts with an overlay's embedded LUKS2 header (subsystem
/// [`SUBSYSTEM`]). Reads only the header; `false` for anything else.
pub fn is_overlay(path: &Path) -> bool {
    let Ok(store) = open_store(path, false) else {
        return false;
    };
    sealvol_overlay::embedded_header(store).is_ok_and(|v| v.header().subsystem() == SUBSYSTEM)
}

// ---------------------------------------------------------------------------------------------
// Opening

/// A base that is never read: management verbs (rekey, retire, snapshot, clone, flatten,
/// status) read no byte of the base, and need not be told where it is.
struct Unread {
    size: u64,
}

impl BlockDevice for Unread {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> sealvol_block::Result<()> {
        Err(sealvol_block::Error::Io {
            context: "the overlay's base".into(),
            source: std::io::Error::other("the base was not given to this verb"),
        })
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> sealvol_block::Result<()> {
        Err(sealvol_block::Error::ReadOnly {
            what: "write to the base",
            why: "a base is only read",
        })
    }
    fn flush(&self) -> sealvol_block::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> sealvol_block::Result<()> {
        self.write_at(&[], 0)
    }
}

/// The base an overlay is opened over.
pub enum OpenBase {
    /// The base as a device with its identity ([`Base::device`], [`Base::tag`]).
    Device(Arc<dyn BlockDevice>, [u8; 32]),
    /// Not read by this verb: a stand-in of the recorded size that fails every read.
    Unread,
}

/// How [`open`] opens.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenHow {
    /// Refuse writes, commit nothing (the file is opened read-only).
    pub read_only: bool,
    /// Refuse any state older than this checkpoint.
    pub expect: Option<Checkpoint>,
    /// Bounds on the keyslot's KDF.
    pub limits: KdfLimits,
}

/// An opened overlay and its claim.
pub struct Opened {
    /// The overlay.
    pub device: Arc<OverlayDevice>,
    /// Its file (canonical path).
    pub path: PathBuf,
    _claim: Option<VolumeLock>,
}

/// Opens the overlay at `path` with `key` over `base`. With `claim`, and when it may write,
/// it holds the overlay's claim in that runtime directory (so no export and no other verb
/// writes it meanwhile; an export holds the claim itself and passes `None`).
///
/// # Errors
/// [`Error::AlreadyOpen`] when an export serves it; [`Error::WrongKey`]; [`Error::Overlay`]
/// (a rollback against `how.expect`, tampering, a base that is not the overlay's, a lower
/// layer that is missing or not the pinned one ...).
pub fn open(
    claim: Option<&StateDir>,
    path: &Path,
    key: LayerKey<'_>,
    base: OpenBase,
    how: OpenHow,
) -> Result<Opened> {
    let path = canonical(path, "overlay")?;
    let claim = match claim {
        Some(run) if !how.read_only => Some(VolumeLock::acquire(run, &volume_id(&path)?, &path)?),
        _ => None,
    };
    let store = open_store(&path, !how.read_only)?;
    let (base, tag) = match base {
        OpenBase::Device(d, t) => (d, Some(t)),
        OpenBase::Unread => {
            let p = sealvol_overlay::peek(&*store).map_err(|e| Error::overlay(&path, e))?;
            (
                Arc::new(Unread { size: p.base_size }) as Arc<dyn BlockDevice>,
                None,
            )
        }
    };
    let opts = OpenOptions {
        kdf_limits: how.limits,
        expect_checkpoint: how.expect,
        read_only: how.read_only,
        base_tag: tag,
    };
    let mut resolve = resolver(&path)?;
    let dev = match key {
        LayerKey::Key(k) => OverlayDevice::open(store, k, base, &opts, &mut resolve),
        LayerKey::LayerKey(k) => OverlayDevice::open_unlocked(store, k, base, &opts, &mut resolve),
    }
    .map_err(|e| Error::overlay(&path, e))?;
    Ok(Opened {
        device: Arc::new(dev),
        path,
        _claim: claim,
    })
}

/// The key an overlay is opened with.
#[derive(Clone, Copy, Debug)]
pub enum LayerKey<'a> {
    /// A consumer's key: the keyslot it opens is run.
    Key(&'a [u8]),
    /// The layer key itself ([`sealvol_overlay::unlock_layer_key`]), checked against the
    /// header's digest.
    LayerKey(&'a SecretBytes),
}

/// Runs the keyslot `key` opens in the overlay at `path` and returns the layer key (what a
/// background export is handed).
///
/// # Errors
/// [`Error::WrongKey`]; [`Error::Overlay`] for a damaged header or one over `limits`.
pub fn unlock(path: &Path, key: &[u8], limits: KdfLimits) -> Result<SecretBytes> {
    let store = open_store(path, false)?;
    sealvol_overlay::unlock_layer_key(&store, key, limits).map_err(|e| Error::overlay(path, e))
}

// ---------------------------------------------------------------------------------------------
// The verbs

/// What [`create`] is asked for.
#[derive(Clone, Debug)]
pub struct Create {
    /// Virtual size (default: the base's size; needed without a base).
    pub size: Option<u64>,
    /// Cluster size (default 4 KiB).
    pub cluster_size: Option<u32>,
    /// The keyslot's KDF.
    pub kdf: KdfParams,
    /// LUKS2 label of the embedded header.
    pub label: Option<String>,
}

/// What [`create`], [`snapshot`] and [`clone`] made.
#[derive(Clone, Debug, Serialize)]
pub struct Made {
    /// The new overlay file.
    pub path: PathBuf,
    /// Its UUID.
    pub uuid: String,
    /// Its first checkpoint.
    pub checkpoint: Checkpoint,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// The files of the layers below it (0 = right below).
    pub lower: Vec<PathBuf>,
}

fn made(path: PathBuf, d: &OverlayDevice) -> Made {
    let s = d.status();
    Made {
        lower: chain_of(&path, &d.lower_layers()),
        path,
        uuid: s.uuid,
        checkpoint: s.checkpoint,
        virtual_size: s.virtual_size,
        cluster_size: s.cluster_size,
    }
}

/// Creates a new overlay at `path` (a new file) over `base` (a checked base and its LUKS
/// volume key), with one keyslot for `key`. Nothing is left at `path` when it fails.
///
/// # Errors
/// [`Error::Invalid`] for an existing file or bad options; [`Error::Overlay`].
pub fn create(
    path: &Path,
    key: &[u8],
    base: &Base,
    base_key: Option<SecretBytes>,
    what: &Create,
) -> Result<Made> {
    if matches!(base.spec, BaseSpec::None) && what.size.is_none() {
        return Err(Error::Invalid(
            "an overlay without a base needs a size (--size)".into(),
        ));
    }
    let dev = base.device(base_key)?;
    let file = NewFile::create(path)?;
    let ov = create_in(file.store()?, path, key, dev, base.tag, what)?;
    let path = file.keep()?;
    let path = canonical(&path, "overlay")?;
    tracing::info!(overlay = %path.display(), uuid = %ov.uuid(), "overlay created");
    Ok(made(path, &ov))
}

/// [`create`] in the new, empty file `file` that the caller made (and removes on failure),
/// named `path` in messages; the file is synced on return.
///
/// # Errors
/// As [`create`].
pub fn create_in_file(
    file: &File,
    path: &Path,
    key: &[u8],
    base: &Base,
    base_key: Option<SecretBytes>,
    what: &Create,
) -> Result<Made> {
    let dev = base.device(base_key)?;
    let f = file
        .try_clone()
        .map_err(|e| Error::io(format!("cannot use {}", path.display()), e))?;
    let ov = create_in(Arc::new(f), path, key, dev, base.tag, what)?;
    file.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", path.display()), e))?;
    Ok(made(path.to_path_buf(), &ov))
}

fn create_in(
    store: Arc<dyn Store>,
    path: &Path,
    key: &[u8],
    base: Arc<dyn BlockDevice>,
    tag: [u8; 32],
    what: &Create,
) -> Result<OverlayDevice> {
    if what.size.is_none() && base.size() == 0 {
        return Err(Error::Invalid(
            "an overlay without a base needs a size (--size)".into(),
        ));
    }
    let opts = CreateOptions {
        virtual_size: what.size,
        cluster_size: what
            .cluster_size
            .unwrap_or(CreateOptions::default().cluster_size),
        kdf: what.kdf,
        base_tag: tag,
        label: what.label.clone(),
    };
    OverlayDevice::create(store, key, base, &opts).map_err(|e| Error::overlay(path, e))
}

/// What [`rekey`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Rekeyed {
    /// The new generation, which every write uses from now on.
    pub generation: u32,
    /// The checkpoint after it.
    pub checkpoint: Checkpoint,
}

/// Starts a new key generation in the overlay at `path` (durable on return).
///
/// # Errors
/// As [`open`]; [`Error::Overlay`] (a frozen layer, too many generations).
pub fn rekey(run: &StateDir, path: &Path, key: &[u8], how: OpenHow) -> Result<Rekeyed> {
    let o = open(Some(run), path, LayerKey::Key(key), OpenBase::Unread, how)?;
    let generation = o.device.rekey().map_err(|e| Error::overlay(path, e))?;
    Ok(Rekeyed {
        generation,
        checkpoint: o.device.checkpoint(),
    })
}

/// Re-encrypts generation `gen` of the overlay at `path` under the current one and erases
/// its key (resumable: after a crash, the same call goes on). `progress` sees every batch.
///
/// # Errors
/// As [`open`]; [`Error::Overlay`] (no such generation, the current one, another retire in
/// progress, a cluster that does not authenticate).
pub fn retire(
    run: &StateDir,
    path: &Path,
    key: &[u8],
    gen: u32,
    how: OpenHow,
    progress: &mut dyn FnMut(Progress),
) -> Result<RetireReport> {
    let o = open(Some(run), path, LayerKey::Key(key), OpenBase::Unread, how)?;
    o.device
        .retire(gen, progress)
        .map_err(|e| Error::overlay(path, e))
}

/// Folds the chain below the overlay at `path` into it (resumable).
///
/// # Errors
/// As [`open`]; [`Error::Overlay`].
pub fn flatten(
    run: &StateDir,
    path: &Path,
    key: &[u8],
    how: OpenHow,
    progress: &mut dyn FnMut(Progress),
) -> Result<FlattenReport> {
    let o = open(Some(run), path, LayerKey::Key(key), OpenBase::Unread, how)?;
    o.device
        .flatten(progress)
        .map_err(|e| Error::overlay(path, e))
}

/// The state of the overlay at `path`: sizes, bytes per generation, the chain, the files
/// of the chain.
///
/// # Errors
/// As [`open`] (read-only: an overlay an export serves can be looked at).
pub fn status(
    run: &StateDir,
    path: &Path,
    key: &[u8],
    how: OpenHow,
) -> Result<(Status, Vec<PathBuf>)> {
    let how = OpenHow {
        read_only: true,
        ..how
    };
    let o = open(Some(run), path, LayerKey::Key(key), OpenBase::Unread, how)?;
    let files = chain_of(&o.path, &o.device.lower_layers());
    Ok((o.device.status(), files))
}

/// The last durable checkpoint of the overlay at `path`, checked with `key` (its root's MAC).
///
/// # Errors
/// As [`status`].
pub fn checkpoint(run: &StateDir, path: &Path, key: &[u8], how: OpenHow) -> Result<Checkpoint> {
    Ok(status(run, path, key, how)?.0.checkpoint)
}

/// What [`snapshot`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshotted {
    /// The frozen layer (the overlay's state at the snapshot), now at the snapshot's path.
    pub frozen: PathBuf,
    /// Its final checkpoint (what the new layer pins).
    pub frozen_checkpoint: Checkpoint,
    /// The new writable layer, at the overlay's path.
    pub top: Made,
}

/// Freezes the overlay at `path` as `snapshot` (a new name in the same directory) and goes
/// on in a new layer at `path` over it, with the same keyslots. Crash-safe: until the new
/// layer replaces `path`, `path` and `snapshot` name the same file, and calling `snapshot`
/// again finishes.
///
/// # Errors
/// [`Error::Invalid`] for a snapshot path in another directory or that exists (and is not
/// the overlay itself); as [`open`].
pub fn snapshot(
    run: &StateDir,
    path: &Path,
    snapshot: &Path,
    key: &[u8],
    how: OpenHow,
) -> Result<Snapshotted> {
    let path = canonical(path, "overlay")?;
    let dir = parent_of(&path);
    let name = snapshot
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} is not a file name", snapshot.display())))?;
    let snap_dir = canonical(&parent_of(snapshot), "directory")?;
    if snap_dir != dir {
        return Err(Error::Invalid(format!(
            "the snapshot must be in the overlay's directory {} (its own lower layers are named relative to it); give a name there",
            dir.display()
        )));
    }
    let snap = dir.join(name);
    let claim = VolumeLock::acquire(run, &volume_id(&path)?, &path)?;
    let same = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    };
    // Both names for the one file first: from here a crash leaves the overlay whole at
    // `path` (and a second name, or a frozen layer that a second call finishes from).
    match std::fs::hard_link(&path, &snap) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && same(&path, &snap) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Invalid(format!(
                "{} exists already; give the snapshot a new name",
                snap.display()
            )))
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot name the snapshot {}", snap.display()),
                e,
            ))
        }
    }
    sync_dir(&snap)?;
    let new_path = dir.join(format!(
        ".{}.new-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&new_path);
    let file = NewFile::create(&new_path)?;
    let locator = locator_for(&snap, &path)?;
    let store = open_store(&path, true)?;
    let mut resolve = resolver(&path)?;
    let opts = OpenOptions {
        kdf_limits: how.limits,
        expect_checkpoint: how.expect,
        read_only: false,
        base_tag: None,
    };
    let p = sealvol_overlay::peek(&*store).map_err(|e| Error::overlay(&path, e))?;
    let base = Arc::new(Unread { size: p.base_size }) as Arc<dyn BlockDevice>;
    let cur = Arc::new(
        OverlayDevice::open(store, key, base, &opts, &mut resolve)
            .map_err(|e| Error::overlay(&path, e))?,
    );
    let top = cur
        .snapshot(file.store()?, &locator)
        .map_err(|e| Error::overlay(&path, e))?;
    let frozen_checkpoint = cur.checkpoint();
    drop(cur);
    file.keep()?;
    // The new layer takes the overlay's name; the frozen one keeps the snapshot's.
    std::fs::rename(&new_path, &path).map_err(|e| {
        Error::io(
            format!(
                "cannot move the new layer {} to {}",
                new_path.display(),
                path.display()
            ),
            e,
        )
    })?;
    sync_dir(&path)?;
    drop(claim);
    tracing::info!(overlay = %path.display(), snapshot = %snap.display(), "snapshot taken");
    Ok(Snapshotted {
        frozen: snap,
        frozen_checkpoint,
        top: made(path, &top),
    })
}

/// Makes a clone at `new` (a new file) over the frozen overlay `source` (opened with
/// `key`): its own keyslot for `new_key` (KDF `kdf`) and a new, unrelated master key for
/// its writes. Nothing is left at `new` when it fails.
///
/// # Errors
/// [`Error::Invalid`] for an existing `new`; [`Error::Overlay`] (a source that is not
/// frozen: snapshot it first).
pub fn clone(
    run: &StateDir,
    source: &Path,
    new: &Path,
    key: &[u8],
    new_key: &[u8],
    kdf: KdfParams,
    how: OpenHow,
) -> Result<Made> {
    let how = OpenHow {
        read_only: true,
        ..how
    };
    let src = open(Some(run), source, LayerKey::Key(key), OpenBase::Unread, how)?;
    if !src.device.is_frozen() {
        return Err(Error::Invalid(format!(
            "{} is not frozen: a clone stands on a snapshot; take one with `sealvol overlay snapshot` and clone that",
            src.path.display()
        )));
    }
    let file = NewFile::create(new)?;
    let locator = locator_for(&src.path, new)?;
    let c = src
        .device
        .clone_to(
            file.store()?,
            new_key,
            &locator,
            &CloneOptions { kdf, label: None },
        )
        .map_err(|e| Error::overlay(new, e))?;
    let path = file.keep()?;
    let path = canonical(&path, "clone")?;
    tracing::info!(clone = %path.display(), source = %src.path.display(), "overlay cloned");
    Ok(made(path, &c))
}

/// The embedded LUKS2 header of the overlay at `path` as a [`LuksFile`], for the keyslot
/// verbs (add, change, remove a key); the layer key, and so the data, stays as it is.
///
/// # Errors
/// [`Error::Invalid`] when `path` is not an overlay.
pub fn keyslots(path: &Path) -> Result<LuksFile> {
    if !is_overlay(path) {
        return Err(Error::Invalid(format!(
            "{} is not a sealvol overlay (`sealvol overlay create` makes one); for a LUKS volume use `sealvol add-key`",
            path.display()
        )));
    }
    Ok(LuksFile::new(path, None))
}

/// The checkpoint the live export of the overlay at `path` recorded at its last flush, and
/// its process; `None` when no live export serves it.
pub fn served_checkpoint(run: &StateDir, path: &Path) -> Option<(Checkpoint, u32)> {
    let path = std::fs::canonicalize(path).ok()?;
    let entry = crate::export::served::find(run, &path)?;
    if !crate::export::served::alive(run, &entry) {
        return None;
    }
    Some((run.checkpoint(&entry.id)?, entry.pid))
}

// ---------------------------------------------------------------------------------------------
// The checkpoint an export publishes

/// The name of the file in an export's runtime directory that holds the overlay's last
/// durable checkpoint (`COUNTER:HEX`, no secret): written after every flush that moved it,
/// and once more when the export stops.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// An overlay as an export serves it: every flush commits, and a checkpoint that moved is
/// written to the export's runtime directory.
pub(crate) struct Published {
    pub(crate) overlay: Arc<OverlayDevice>,
    run: StateDir,
    id: String,
    last: Mutex<Checkpoint>,
}

impl Published {
    pub(crate) fn new(overlay: Arc<OverlayDevice>, run: &StateDir, id: &str) -> Self {
        let last = overlay.checkpoint();
        Published {
            overlay,
            run: run.clone(),
            id: id.to_string(),
            last: Mutex::new(last),
        }
    }

    /// Writes the checkpoint when it moved (or when `always`).
    pub(crate) fn publish(&self, always: bool) {
        let cp = self.overlay.checkpoint();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if cp != *last || always {
            match self.run.save_checkpoint(&self.id, &cp) {
                Ok(()) => *last = cp,
                Err(e) => tracing::warn!(error = %e, "cannot record the overlay's checkpoint"),
            }
        }
    }
}

impl BlockDevice for Published {
    fn size(&self) -> u64 {
        self.overlay.size()
    }
    fn read_only(&self) -> bool {
        self.overlay.read_only()
    }
    fn block_size(&self) -> u32 {
        self.overlay.block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> sealvol_block::Result<()> {
        self.overlay.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> sealvol_block::Result<()> {
        self.overlay.write_at(buf, offset)
    }
    fn flush(&self) -> sealvol_block::Result<()> {
        self.overlay.flush()?;
        self.publish(false);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> sealvol_block::Result<()> {
        self.overlay.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> sealvol_block::Result<()> {
        self.overlay.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_name_a_neighbour_by_file_name_and_others_by_absolute_path() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.ov");
        std::fs::write(&a, b"x").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let top = t.path().join("top.ov");
        assert_eq!(locator_for(&a, &top).unwrap(), b"a.ov");
        let other = t.path().join("sub/top.ov");
        let abs = locator_for(&a, &other).unwrap();
        assert_eq!(
            abs,
            std::fs::canonicalize(&a)
                .unwrap()
                .to_str()
                .unwrap()
                .as_bytes()
        );
        // Resolved against the layer right above: a chain two directories deep.
        let lower = |loc: &[u8], i: usize| LowerLayer {
            index: i,
            uuid: String::new(),
            checkpoint: Checkpoint {
                counter: 1,
                root: [0; 32],
            },
            locator: loc.to_vec(),
        };
        let chain = chain_of(
            &other,
            &[lower(&abs, 0), lower(b"b.ov", 1), lower(b"/x/c.ov", 2)],
        );
        assert_eq!(
            chain,
            vec![
                std::fs::canonicalize(&a).unwrap(),
                std::fs::canonicalize(t.path()).unwrap().join("b.ov"),
                PathBuf::from("/x/c.ov")
            ]
        );
        assert!(locator_for(&t.path().join("missing"), &top).is_err());
    }

    #[test]
    fn a_failed_create_leaves_no_file_and_an_existing_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("o.ov");
        let (base, _) = check_base(&BaseSpec::None, BaseKey::None, KdfLimits::default()).unwrap();
        let what = Create {
            size: None,
            cluster_size: None,
            kdf: KdfParams::pbkdf2_min(),
            label: None,
        };
        let e = create(&p, b"k", &base, None, &what).unwrap_err();
        assert!(e.to_string().contains("--size"), "{e}");
        let bad = Create {
            size: Some(1 << 20),
            cluster_size: Some(3000),
            ..what.clone()
        };
        let e = create(&p, b"k", &base, None, &bad).unwrap_err();
        assert!(e.to_string().contains("cluster size"), "{e}");
        assert!(!p.exists(), "a failed create leaves nothing");
        let ok = Create {
            size: Some(1 << 20),
            ..what
        };
        let m = create(&p, b"k", &base, None, &ok).unwrap();
        assert_eq!(m.virtual_size, 1 << 20);
        assert!(is_overlay(&p));
        let e = create(&p, b"k", &base, None, &ok).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        assert!(is_overlay(&p), "the existing overlay is untouched");
        assert!(!is_overlay(Path::new("/proc/self/status")));
    }
}
