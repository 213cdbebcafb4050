//! Opening and serving a volume: the one way a volume file and a key become a mounted file
//! system or an NBD export, in this process or in a background one.
//!
//! 1. [`prepare`] checks everything it can before anything starts: the paths, that no export
//!    holds the volume, the header (under the caller's [`KdfLimits`]), that the data segment
//!    lies outside an attached header and fits the file, and finally the key, through
//!    [`LuksFile`] (a wrong key is [`Error::WrongKey`] and nothing was started); or, for a
//!    dm-verity image, the superblock, the signature over the root hash and the first block
//!    against the trusted root ([`Error::NotVerified`]). It gives a [`Plan`] (what to serve,
//!    no key) and the volume key.
//! 2. [`device`] builds the block device stack: [`FileDevice`] under [`CryptDevice`] (the
//!    key lives only inside its ciphers from then on), or a [`VerityDevice`].
//! 3. Serving ([`Serve`]): FUSE file → loop device → (`mkfs`) → mount, or NBD on a unix
//!    socket or a loopback TCP port with TLS. Either in this process ([`Mode::Here`]: until
//!    SIGTERM or SIGINT, `open --foreground`, `serve nbd`) or in a background process
//!    ([`Mode::Child`]) started through one readiness handshake for both kinds: the parent
//!    hands the volume key over an inherited pipe (never argv, the environment or a file)
//!    and reads one message back: ready (with what was set up), wrong key, or an error with
//!    its message ([`child`]).
//! 4. Each export records itself in the runtime directory ([`StateDir`]) and holds the
//!    volume's claim ([`VolumeLock`]) while it serves; [`close`] (and the volume and VM
//!    managers, through [`served::stop`]) stops it: unmount, detach, SIGTERM, which wipes
//!    the key.
//!
//! What it does not do: no formats (`sealvol-luks`, `sealvol-verity`), no protocol
//! (`sealvol-export`), no command line: a program that embeds it (the `sealvol` binary, a
//! daemon) handles the hidden [`child::VERB`] by calling [`child::main`].
//!
//! ```no_run
//! use sealvol_host::export::{self, KeyInput, Launcher, MountSpec, Mode, OpenSpec, Serve};
//! use sealvol_host::state::StateDir;
//! let key = sealvol_crypto::SecretBytes::from_slice(b"the key");
//! let run = StateDir::new("/run/sealvol");
//! let spec = OpenSpec::luks("/srv/vol.img", None);
//! let serve = Serve::Mount(MountSpec { mount_point: "/mnt/work".into(), mkfs: None });
//! let launcher = Launcher::default();
//! let ready = export::export(
//!     &run,
//!     &spec,
//!     KeyInput::Bytes(&key),
//!     Default::default(),
//!     &serve,
//!     Mode::Child { launcher: &launcher, log: None },
//! )?;
//! println!("served by process {}", ready.pid());
//! # Ok::<(), sealvol_host::Error>(())
//! ```

pub mod child;
mod serve;
pub mod served;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealvol_block::{BlockDevice, CryptDevice, FileDevice, FileOptions, VerityDevice};
use sealvol_crypto::SecretBytes;
use sealvol_luks::{DataSegment, KdfLimits};
use sealvol_overlay::Checkpoint;
use serde::{Deserialize, Serialize};

use self::served::{Busy, Stopped};
use crate::keys::KeySource;
use crate::lock::VolumeLock;
use crate::luks_file::{Access, LuksFile};
pub use crate::overlay::BaseSpec;
use crate::overlay::{check_base, Base, BaseKey, LayerKey, OpenBase, OpenHow, Published};
use crate::state::{volume_id, Entry, StateDir};
use crate::{mount, Error, Result};

pub use child::Launcher;

/// What to open: a LUKS volume or a dm-verity image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSpec {
    /// The LUKS volume file (its data file when the header is detached), or the verity image.
    pub volume: PathBuf,
    /// Open read-only: nothing is written to the volume (always so for verity).
    pub read_only: bool,
    /// How the plaintext is made from the volume file.
    pub source: SourceSpec,
}

/// How the plaintext is made from the volume file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A LUKS1 or LUKS2 volume, decrypted with its key.
    Luks {
        /// The detached header file; `None`: the header is at the start of the volume.
        header: Option<PathBuf>,
    },
    /// A dm-verity image: reads verified against a trusted root hash.
    Verity(VeritySpec),
    /// An encrypted copy-on-write overlay (`sealvol-overlay`) over its base; the volume file
    /// is the overlay's top layer (lower layers are found by its locators).
    Overlay(OverlaySpec),
}

/// An overlay's base and the state it must not be older than.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// What the overlay reads where it maps nothing.
    pub base: BaseSpec,
    /// Refuse any state older than this checkpoint (`COUNTER:HEX`, as `sealvol overlay
    /// checkpoint` prints it): a rollback to a saved copy is a clean "no".
    pub expect_checkpoint: Option<String>,
}

/// A dm-verity image's tree and the root hash the caller trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeritySpec {
    /// The hash device, with its superblock (the image itself when the tree is appended).
    pub hash: PathBuf,
    /// Byte offset of the superblock and tree in the hash device.
    pub hash_offset: u64,
    /// The trusted root hash, in hex.
    pub root: String,
    /// A detached signature over the root hash and parameters to check first.
    pub signature: Option<RootSignature>,
}

/// A publisher's detached ed25519 signature over a verity root hash (`sealvol verity sign`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSignature {
    /// The signature file.
    pub signature: PathBuf,
    /// The publisher's public key (PEM or raw 32 bytes).
    pub public_key: PathBuf,
}

impl OpenSpec {
    /// A LUKS volume opened read-write, its header in `header` when detached.
    pub fn luks(volume: impl Into<PathBuf>, header: Option<PathBuf>) -> Self {
        OpenSpec {
            volume: volume.into(),
            read_only: false,
            source: SourceSpec::Luks { header },
        }
    }
}

impl OpenSpec {
    /// `volume` as `open` and `serve nbd` are given it: an overlay when a base or an expected
    /// checkpoint is given or the file is an overlay (without a base: the overlay's own
    /// zeros, when it was made without one), else a LUKS volume (its header in `header`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a detached header with an overlay, an expected checkpoint for
    /// a LUKS volume, or an overlay made over a base that is not given.
    pub fn for_volume(
        volume: impl Into<PathBuf>,
        header: Option<PathBuf>,
        read_only: bool,
        base: Option<BaseSpec>,
        expect_checkpoint: Option<String>,
    ) -> Result<Self> {
        let volume = volume.into();
        let overlay =
            base.is_some() || expect_checkpoint.is_some() || crate::overlay::is_overlay(&volume);
        if !overlay {
            return Ok(OpenSpec {
                volume,
                read_only,
                source: SourceSpec::Luks { header },
            });
        }
        if header.is_some() {
            return Err(Error::Invalid(
                "--header is for LUKS volumes; an overlay keeps its keyslots in its own file"
                    .into(),
            ));
        }
        let base = match base {
            Some(b) => b,
            None => {
                let p = crate::overlay::peek(&volume)?;
                if p.base_size != 0 {
                    return Err(Error::Invalid(format!(
                        "{} is an overlay made over a base of {} bytes: give it with --base IMAGE (with --base-hash and --base-root for a verity base, --base-luks for a LUKS one)",
                        volume.display(),
                        p.base_size
                    )));
                }
                BaseSpec::None
            }
        };
        Ok(OpenSpec {
            volume,
            read_only,
            source: SourceSpec::Overlay(OverlaySpec {
                base,
                expect_checkpoint,
            }),
        })
    }
}

/// Where [`prepare`] gets the key that unlocks a LUKS volume or an overlay (ignored for
/// verity). A source is read only once everything else has been checked.
#[derive(Clone, Copy, Debug)]
pub enum KeyInput<'a> {
    /// No key (a verity image).
    None,
    /// Read the key from here.
    Source(&'a KeySource),
    /// The key itself.
    Bytes(&'a SecretBytes),
    /// Two keys: an overlay's (the first), and its LUKS base's (the second).
    WithBase(&'a KeyInput<'a>, &'a KeyInput<'a>),
}

impl KeyInput<'_> {
    /// The volume's (or overlay's) own key.
    fn main(&self) -> KeyInput<'_> {
        match self {
            KeyInput::WithBase(k, _) => k.main(),
            k => *k,
        }
    }

    /// An overlay's base's key.
    fn base(&self) -> KeyInput<'_> {
        match self {
            KeyInput::WithBase(_, b) => b.main(),
            _ => KeyInput::None,
        }
    }

    /// Reads the key (a source is read now); `None` when there is none.
    fn read(&self) -> Result<Option<SecretBytes>> {
        match self.main() {
            KeyInput::None | KeyInput::WithBase(..) => Ok(None),
            KeyInput::Source(s) => Ok(Some(s.read()?)),
            KeyInput::Bytes(k) => Ok(Some(SecretBytes::from_slice(k.expose()))),
        }
    }
}

/// What an export serves: everything but the key.
#[derive(Clone, Debug)]
pub struct Plan {
    volume: PathBuf,
    header: Option<PathBuf>,
    id: String,
    source: Source,
    read_only: bool,
}

/// How the plaintext is made, checked.
#[derive(Clone, Debug)]
enum Source {
    /// A LUKS data segment, decrypted with the volume key.
    Luks(DataSegment),
    /// A dm-verity image: verified reads against a trusted root hash.
    Verity {
        hash: PathBuf,
        hash_offset: u64,
        root: Vec<u8>,
    },
    /// An overlay over its checked base, opened with its layer key.
    Overlay {
        base: Box<Base>,
        expect: Option<Checkpoint>,
    },
}

impl Plan {
    /// The volume file (canonical path).
    pub fn volume(&self) -> &Path {
        &self.volume
    }

    /// The detached header (canonical path), if any.
    pub fn header(&self) -> Option<&Path> {
        self.header.as_deref()
    }

    /// The runtime id of the volume file (`vol-<dev>-<ino>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Served read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether this is a dm-verity image.
    pub fn is_verity(&self) -> bool {
        matches!(self.source, Source::Verity { .. })
    }

    /// Whether this is an overlay.
    pub fn is_overlay(&self) -> bool {
        matches!(self.source, Source::Overlay { .. })
    }

    /// The open spec that re-makes this plan (what a background export is given).
    pub fn spec(&self) -> OpenSpec {
        OpenSpec {
            volume: self.volume.clone(),
            read_only: self.read_only,
            source: match &self.source {
                Source::Luks(_) => SourceSpec::Luks {
                    header: self.header.clone(),
                },
                Source::Verity {
                    hash,
                    hash_offset,
                    root,
                } => SourceSpec::Verity(VeritySpec {
                    hash: hash.clone(),
                    hash_offset: *hash_offset,
                    root: hex::encode(root),
                    signature: None,
                }),
                Source::Overlay { base, expect } => SourceSpec::Overlay(OverlaySpec {
                    base: base.spec().clone(),
                    expect_checkpoint: expect.map(|c| c.to_string()),
                }),
            },
        }
    }
}

/// A plan and the volume key that serves it (`None` for verity).
#[derive(Debug)]
pub struct Prepared {
    /// What to serve.
    pub plan: Plan,
    /// The volume key (zeroized on drop); an overlay's layer key.
    pub volume_key: Option<SecretBytes>,
    /// An overlay's LUKS base's volume key.
    pub base_key: Option<SecretBytes>,
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|_| {
        Error::Invalid(format!(
            "the {what} {} does not exist; check the path",
            path.display()
        ))
    })
}

/// Checks `spec` and unlocks it: returns the plan and the volume key. Starts nothing and
/// changes nothing.
///
/// # Errors
/// [`Error::Invalid`] for missing files; [`Error::AlreadyOpen`] when an export holds the
/// volume; the header's refusals ([`Error::NotAHeader`], [`Error::Luks`]: over the KDF
/// limits, data inside an attached header, a volume that may only be read and is not opened
/// read-only); [`Error::WrongKey`]; for verity [`Error::NotVerified`] when the signature or
/// the root hash does not verify.
pub fn prepare(
    run: &StateDir,
    spec: &OpenSpec,
    key: KeyInput<'_>,
    limits: KdfLimits,
) -> Result<Prepared> {
    let volume = canonical(&spec.volume, "volume")?;
    match &spec.source {
        SourceSpec::Luks { header } => {
            let header = header
                .as_deref()
                .map(|h| canonical(h, "header file"))
                .transpose()?;
            let id = volume_id(&volume)?;
            // Refuse a volume that is served already before asking for the key.
            drop(VolumeLock::acquire(run, &id, &volume)?);
            if header.is_none() && crate::overlay::is_overlay(&volume) {
                return Err(Error::Invalid(format!(
                    "{} is a sealvol overlay, not a LUKS volume: open it as an overlay (`sealvol open` finds out itself; give --base IMAGE when it was made over a base)",
                    volume.display()
                )));
            }
            let files = LuksFile::new(&volume, header.clone());
            let mut open = files.open(Access::Read, limits)?;
            if let Some(warning) = open.damaged_copy() {
                tracing::warn!("{warning}");
            }
            if !spec.read_only {
                open.check_writable()
                    .map_err(|e| Error::Invalid(format!("{e}; open it read-only (--read-only)")))?;
            }
            let segment = open.data_segment()?;
            open.data_len(&segment)?;
            let key = key.read()?.ok_or_else(|| {
                Error::Invalid(format!(
                    "{} is a LUKS volume: its key is needed to open it",
                    volume.display()
                ))
            })?;
            let unlocked = open.unlock(key.expose(), None)?;
            drop(key);
            Ok(Prepared {
                plan: Plan {
                    volume,
                    header,
                    id,
                    source: Source::Luks(segment),
                    read_only: spec.read_only,
                },
                volume_key: Some(unlocked.volume_key),
                base_key: None,
            })
        }
        SourceSpec::Verity(v) => {
            let hash = canonical(&v.hash, "hash file")?;
            let id = volume_id(&volume)?;
            drop(VolumeLock::acquire(run, &id, &volume)?);
            let root = check_verity(&volume, &hash, v)?;
            Ok(Prepared {
                plan: Plan {
                    volume,
                    header: None,
                    id,
                    source: Source::Verity {
                        hash,
                        hash_offset: v.hash_offset,
                        root,
                    },
                    read_only: true,
                },
                volume_key: None,
                base_key: None,
            })
        }
        SourceSpec::Overlay(o) => prepare_overlay(run, spec, volume, o, key, limits),
    }
}

/// Parses an expected checkpoint (`COUNTER:HEX`).
fn parse_expect(text: Option<&str>) -> Result<Option<Checkpoint>> {
    text.map(|t| {
        t.parse::<Checkpoint>()
            .map_err(|e| Error::Invalid(format!("--expect-checkpoint: {e}")))
    })
    .transpose()
}

/// [`prepare`] of an overlay: the base checked (and a LUKS base unlocked), the keyslot run,
/// then the whole overlay opened read-only once (root MAC, the expected checkpoint, the
/// base's identity, the chain below), so that every "no" comes before anything starts.
fn prepare_overlay(
    run: &StateDir,
    spec: &OpenSpec,
    volume: PathBuf,
    o: &OverlaySpec,
    key: KeyInput<'_>,
    limits: KdfLimits,
) -> Result<Prepared> {
    let id = volume_id(&volume)?;
    drop(VolumeLock::acquire(run, &id, &volume)?);
    if !crate::overlay::is_overlay(&volume) {
        return Err(Error::Invalid(format!(
            "{} is not a sealvol overlay (its header does not name the subsystem {}); open a LUKS volume without --base",
            volume.display(),
            crate::overlay::SUBSYSTEM
        )));
    }
    let expect = parse_expect(o.expect_checkpoint.as_deref())?;
    let base_key = key.base().read()?;
    let (base, base_vk) = check_base(
        &o.base,
        base_key
            .as_ref()
            .map_or(BaseKey::None, |k| BaseKey::Key(k.expose())),
        limits,
    )?;
    drop(base_key);
    let key = key.read()?.ok_or_else(|| {
        Error::Invalid(format!(
            "{} is an overlay: its key is needed to open it",
            volume.display()
        ))
    })?;
    let layer_key = crate::overlay::unlock(&volume, key.expose(), limits)?;
    drop(key);
    let dev = base.device(
        base_vk
            .as_ref()
            .map(|k| SecretBytes::from_slice(k.expose())),
    )?;
    let opened = crate::overlay::open(
        None,
        &volume,
        LayerKey::LayerKey(&layer_key),
        OpenBase::Device(dev, base.tag()),
        OpenHow {
            read_only: true,
            expect,
            limits,
        },
    )?;
    if !spec.read_only && opened.device.is_frozen() {
        return Err(Error::Invalid(format!(
            "{} is a frozen snapshot: open it read-only (--read-only), or clone it (`sealvol overlay clone`) and open the clone",
            volume.display()
        )));
    }
    drop(opened);
    Ok(Prepared {
        plan: Plan {
            volume,
            header: None,
            id,
            source: Source::Overlay {
                base: Box::new(base),
                expect,
            },
            read_only: spec.read_only,
        },
        volume_key: Some(layer_key),
        base_key: base_vk,
    })
}

/// Reads the superblock, parses the root hash, checks the signature (when given) and the
/// first block against the root; returns the root.
pub(crate) fn check_verity(image: &Path, hash: &Path, v: &VeritySpec) -> Result<Vec<u8>> {
    let mut hash_file = File::open(hash)
        .map_err(|e| Error::io(format!("cannot open the hash file {}", hash.display()), e))?;
    let sb = read_superblock(&mut hash_file, hash, v.hash_offset)?;
    let root = sealvol_verity::parse_root_hash(&sb.params, &v.root)?;
    if let Some(s) = &v.signature {
        let read = |p: &Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| Error::io(format!("cannot read the {what} {}", p.display()), e))
        };
        let key_bytes = read(&s.public_key, "public key")?;
        let key = sealvol_verity::VerifyingKey::from_key_file(&key_bytes).map_err(|e| {
            Error::Invalid(format!("{} is not usable: {e}", s.public_key.display()))
        })?;
        let sig = read(&s.signature, "signature")?;
        if let Err(e) = key.verify(&sb.params, &root, &sig) {
            return Err(Error::NotVerified(format!(
                "signature {} refused: {e}; nothing mounted",
                s.signature.display()
            )));
        }
    }
    // The root check up front: the first block verifies only under the right root hash.
    let dev = verity_device(image, hash, v.hash_offset, &root)?;
    let mut first = vec![0u8; dev.block_size() as usize];
    if let Err(e) = dev.read_at(&mut first, 0) {
        return Err(Error::NotVerified(format!(
            "{} does not verify against root hash {}: {e}; nothing mounted",
            image.display(),
            v.root.trim()
        )));
    }
    Ok(root)
}

fn read_superblock(
    hash_file: &mut File,
    hash: &Path,
    offset: u64,
) -> Result<sealvol_verity::Superblock> {
    sealvol_verity::read_superblock(hash_file, offset).map_err(|e| {
        Error::Invalid(format!(
            "cannot read the verity superblock of {} at offset {offset}: {e}",
            hash.display()
        ))
    })
}

/// The root hash of `v` parsed under its superblock's parameters (no check of the data:
/// for a spec checked before).
pub(crate) fn parse_verity_root(v: &VeritySpec) -> Result<Vec<u8>> {
    let mut f = File::open(&v.hash)
        .map_err(|e| Error::io(format!("cannot open the hash file {}", v.hash.display()), e))?;
    let sb = read_superblock(&mut f, &v.hash, v.hash_offset)?;
    Ok(sealvol_verity::parse_root_hash(&sb.params, &v.root)?)
}

/// The plan again in a background export, from its spec, with the volume key it was handed:
/// the same files, the key checked against the header now (a mismatch, say a header
/// replaced since the parent unlocked it, is [`Error::WrongKey`]).
fn replan(
    spec: &OpenSpec,
    volume_key: Option<&SecretBytes>,
    base_key: Option<&SecretBytes>,
) -> Result<Plan> {
    let volume = canonical(&spec.volume, "volume")?;
    let id = volume_id(&volume)?;
    match &spec.source {
        SourceSpec::Luks { header } => {
            let header = header
                .as_deref()
                .map(|h| canonical(h, "header file"))
                .transpose()?;
            let open =
                LuksFile::new(&volume, header.clone()).open(Access::Read, KdfLimits::default())?;
            let segment = open.data_segment()?;
            let key = volume_key
                .ok_or_else(|| Error::Invalid("no volume key was handed to the export".into()))?;
            if !open.volume().verify_volume_key(key)? {
                return Err(Error::WrongKey(format!(
                    "the key handed to the export does not open {} (was its header replaced?)",
                    volume.display()
                )));
            }
            Ok(Plan {
                volume,
                header,
                id,
                source: Source::Luks(segment),
                read_only: spec.read_only,
            })
        }
        SourceSpec::Verity(v) => {
            let hash = canonical(&v.hash, "hash file")?;
            let mut f = File::open(&hash).map_err(|e| {
                Error::io(format!("cannot open the hash file {}", hash.display()), e)
            })?;
            let sb = read_superblock(&mut f, &hash, v.hash_offset)?;
            let root = sealvol_verity::parse_root_hash(&sb.params, &v.root)?;
            Ok(Plan {
                volume,
                header: None,
                id,
                source: Source::Verity {
                    hash,
                    hash_offset: v.hash_offset,
                    root,
                },
                read_only: true,
            })
        }
        SourceSpec::Overlay(o) => {
            // The layer key is checked against the overlay's header when the device is made.
            let (base, _) = crate::overlay::recheck_base(&o.base, base_key)?;
            Ok(Plan {
                volume,
                header: None,
                id,
                source: Source::Overlay {
                    base: Box::new(base),
                    expect: parse_expect(o.expect_checkpoint.as_deref())?,
                },
                read_only: spec.read_only,
            })
        }
    }
}

/// A plan's block device, and the overlay in it (to commit and report at the end).
pub struct Built {
    /// What is served.
    pub device: Arc<dyn BlockDevice>,
    overlay: Option<Arc<Published>>,
}

impl Built {
    /// Commits an overlay's last writes and returns its checkpoint; with `record`, writes it
    /// to the runtime directory too (for `close`). `None` for other volumes.
    fn finish(&self, record: bool) -> Option<Checkpoint> {
        let p = self.overlay.as_ref()?;
        if let Err(e) = p.overlay.commit() {
            tracing::error!(error = %e, "the overlay's last commit failed; it holds its last durable state");
        }
        if record {
            p.publish(true);
        }
        Some(p.overlay.checkpoint())
    }

    /// An overlay's checkpoint now.
    fn checkpoint(&self) -> Option<Checkpoint> {
        self.overlay.as_ref().map(|p| p.overlay.checkpoint())
    }
}

/// The plan's device stack, from what [`prepare`] gave: the decrypted volume, holding the
/// key only inside its ciphers (the key is wiped here); the verified image; or the overlay
/// over its base (its checkpoint recorded in `run` after every flush that moved it).
///
/// # Errors
/// [`Error::Invalid`] without a key for a LUKS plan or an overlay; the device layers'
/// errors; an overlay's refusals.
pub fn device(run: &StateDir, prepared: Prepared) -> Result<Built> {
    let Prepared {
        plan,
        volume_key: key,
        base_key,
    } = prepared;
    if let Source::Overlay { base, expect } = &plan.source {
        let key = key.ok_or_else(|| {
            Error::Invalid(format!(
                "no layer key for the overlay {}",
                plan.volume.display()
            ))
        })?;
        let dev = base.device(base_key)?;
        let opened = crate::overlay::open(
            None,
            &plan.volume,
            LayerKey::LayerKey(&key),
            OpenBase::Device(dev, base.tag()),
            OpenHow {
                read_only: plan.read_only,
                expect: *expect,
                limits: KdfLimits::default(),
            },
        )?;
        drop(key);
        let p = Arc::new(Published::new(opened.device, run, &plan.id));
        p.publish(true);
        return Ok(Built {
            device: p.clone(),
            overlay: Some(p),
        });
    }
    Ok(Built {
        device: luks_or_verity(&plan, key)?,
        overlay: None,
    })
}

fn luks_or_verity(plan: &Plan, key: Option<SecretBytes>) -> Result<Arc<dyn BlockDevice>> {
    match &plan.source {
        Source::Luks(segment) => {
            let key = key.ok_or_else(|| {
                Error::Invalid(format!(
                    "no volume key for the LUKS volume {}",
                    plan.volume.display()
                ))
            })?;
            let file = FileDevice::open(
                &plan.volume,
                FileOptions {
                    read_only: plan.read_only,
                    direct: false,
                },
            )?;
            let dev = CryptDevice::new(file, segment, &key)?;
            drop(key); // wiped; the ciphers hold their own copies
            Ok(Arc::new(dev))
        }
        Source::Verity {
            hash,
            hash_offset,
            root,
        } => verity_device(&plan.volume, hash, *hash_offset, root),
        Source::Overlay { .. } => unreachable!("overlays are built by device()"),
    }
}

/// A verified view of `image` whose tree (with superblock) is on `hash` at `offset`.
pub(crate) fn verity_device(
    image: &Path,
    hash: &Path,
    offset: u64,
    root: &[u8],
) -> Result<Arc<dyn BlockDevice>> {
    let data = File::open(image)
        .map_err(|e| Error::io(format!("cannot open the image {}", image.display()), e))?;
    let mut hash_file = File::open(hash).map_err(|e| {
        Error::io(
            format!(
                "the hash file {} does not exist; check the path",
                hash.display()
            ),
            e,
        )
    })?;
    let sb = read_superblock(&mut hash_file, hash, offset)?;
    let reader = sealvol_verity::VerityReader::new(
        data,
        hash_file,
        sb.params,
        sealvol_verity::HashArea::with_superblock(offset),
        root,
    )?;
    Ok(Arc::new(VerityDevice::new(reader)))
}

// ---------------------------------------------------------------------------------------------
// What to serve, and what was set up

/// How to serve the plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serve {
    /// FUSE file → loop device → (`mkfs`) → mount.
    Mount(MountSpec),
    /// An NBD server.
    Nbd(NbdSpec),
}

/// Where to mount, and whether to make a file system first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// An existing, empty directory nothing is mounted on.
    pub mount_point: PathBuf,
    /// Make a new file system of this type first (ext4, ext3, ext2, xfs, btrfs): it
    /// replaces whatever the volume held.
    pub mkfs: Option<String>,
}

/// Where an NBD server listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NbdEndpoint {
    /// A unix socket (made 0600; a stale socket is replaced, anything else refused).
    Socket(PathBuf),
    /// A loopback TCP address (port 0 picks one); needs TLS or `insecure_plaintext`.
    Tcp(SocketAddr),
}

/// An NBD server's endpoint, credentials and limits (see `sealvol_export::nbd::NbdOptions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdSpec {
    /// Where it listens.
    pub endpoint: NbdEndpoint,
    /// TLS only, with the x509 credentials in this directory (qemu's tls-creds-x509 layout).
    pub tls_creds: Option<PathBuf>,
    /// Serve TCP without TLS (every local user can then read and write the plaintext).
    pub insecure_plaintext: bool,
    /// The export name (the empty name is accepted too).
    pub name: String,
    /// Clients at once.
    pub max_connections: u32,
    /// Time a client has for the whole handshake.
    pub handshake_limit: Duration,
    /// Time a client has to read a reply or finish a request it began.
    pub send_timeout: Duration,
    /// Bytes held for requests in flight across all clients.
    pub max_in_flight: u64,
}

impl NbdSpec {
    /// A server on the unix socket `path` with the default limits.
    pub fn socket(path: impl Into<PathBuf>) -> Self {
        let d = sealvol_export::nbd::NbdOptions::default();
        NbdSpec {
            endpoint: NbdEndpoint::Socket(path.into()),
            tls_creds: None,
            insecure_plaintext: false,
            name: d.name,
            max_connections: u32::try_from(d.max_connections).unwrap_or(u32::MAX),
            handshake_limit: d.handshake_timeout,
            send_timeout: d.send_timeout,
            max_in_flight: d.max_in_flight as u64,
        }
    }

    /// The URI qemu connects to.
    fn uri(&self, endpoint: &str) -> String {
        match &self.endpoint {
            NbdEndpoint::Socket(p) => format!("nbd+unix:///{}?socket={}", self.name, p.display()),
            NbdEndpoint::Tcp(_) => format!("nbd://{endpoint}/{}", self.name),
        }
    }
}

/// What a started export set up (a background export's readiness message carries it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Ready {
    /// A mounted file system.
    Mounted(Mounted),
    /// An NBD server.
    Nbd(NbdServing),
}

impl Ready {
    /// The process that serves.
    pub fn pid(&self) -> u32 {
        match self {
            Ready::Mounted(m) => m.pid,
            Ready::Nbd(n) => n.pid,
        }
    }
}

/// A volume served as FUSE file → loop device → mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mounted {
    /// The volume file.
    pub volume: PathBuf,
    /// Where its file system is mounted.
    pub mount_point: PathBuf,
    /// The loop device on the FUSE file.
    pub loop_device: PathBuf,
    /// The FUSE file exporting the plaintext.
    pub fuse_file: PathBuf,
    /// The export process.
    pub pid: u32,
    /// Mounted read-only.
    pub read_only: bool,
    /// Plaintext bytes.
    pub size: u64,
    /// The file system made first, if any.
    pub mkfs: Option<String>,
    /// An overlay's checkpoint: when it was opened (in the report of a start), or when it
    /// stopped (what an export in this process returns at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// A volume served over NBD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdServing {
    /// The volume file.
    pub volume: PathBuf,
    /// The socket path or `host:port`.
    pub endpoint: String,
    /// The URI qemu connects to.
    pub uri: String,
    /// TLS only.
    pub tls: bool,
    /// The export process.
    pub pid: u32,
    /// Served read-only.
    pub read_only: bool,
    /// An overlay's checkpoint (as in [`Mounted::checkpoint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// Where the export runs.
pub enum Mode<'a> {
    /// In this process, until SIGTERM or SIGINT (installed as it starts serving; SIGHUP is
    /// ignored): `ready` is called once with what was set up.
    Here(&'a mut dyn FnMut(&Ready)),
    /// In a background process of `launcher`'s executable, logging to `log` (a file the
    /// caller made; default: `export.log` in the volume's runtime directory); returns once
    /// it serves.
    Child {
        /// The executable and how it is run.
        launcher: &'a Launcher,
        /// The log: its path (for messages) and the open file.
        log: Option<(&'a Path, &'a File)>,
    },
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Here(_) => f.write_str("Here"),
            Mode::Child { launcher, log } => f
                .debug_struct("Child")
                .field("launcher", launcher)
                .field("log", &log.map(|(p, _)| p))
                .finish(),
        }
    }
}

/// Checks what `serve` needs that can be checked before the key: the mount point (an
/// empty directory nothing is mounted on, made canonical) and the `mkfs` tool; for NBD,
/// that TCP is not plaintext unless asked for, and the TLS credentials.
fn check_serve(serve: &Serve) -> Result<(Serve, Option<sealvol_export::nbd::tls::TlsCreds>)> {
    match serve {
        Serve::Mount(m) => {
            let mount_point = canonical(&m.mount_point, "mount point")?;
            mount::check_mount_point(&mount_point)?;
            if let Some(t) = &m.mkfs {
                let tool = format!("mkfs.{t}");
                if !t.chars().all(|c| c.is_ascii_alphanumeric()) || which(&tool).is_none() {
                    return Err(Error::Invalid(format!(
                        "--mkfs {t}: there is no {tool} on this host; use ext4 (e2fsprogs) or install the tool"
                    )));
                }
            }
            Ok((
                Serve::Mount(MountSpec {
                    mount_point,
                    mkfs: m.mkfs.clone(),
                }),
                None,
            ))
        }
        Serve::Nbd(n) => {
            if matches!(n.endpoint, NbdEndpoint::Tcp(_))
                && n.tls_creds.is_none()
                && !n.insecure_plaintext
            {
                return Err(Error::Invalid(
                    "--listen without TLS would serve the volume's plaintext to every local user; \
                     give --tls-creds DIR (ca-cert.pem, server-cert.pem, server-key.pem, as for qemu's \
                     tls-creds-x509; clients need a certificate signed by ca-cert.pem), or use \
                     --socket PATH (mode 0600), or accept the risk with --insecure-plaintext"
                        .into(),
                ));
            }
            let tls = n
                .tls_creds
                .as_deref()
                .map(sealvol_export::nbd::tls::TlsCreds::from_dir)
                .transpose()?;
            Ok((serve.clone(), tls))
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Opens `spec` with `key` and serves it as `serve`, here or in a background process
/// (`mode`): checks what to serve, then [`prepare`], then starts. Returns what was set up
/// (in [`Mode::Here`], once the export has stopped again).
///
/// # Errors
/// Those of [`prepare`] (nothing started); a refused mount point, `mkfs` tool, endpoint or
/// TLS credentials (nothing started); [`Error::Export`] with the background export's report
/// when its set-up failed (everything it set up undone); any set-up error in this process,
/// after undoing what was set up.
pub fn export(
    run: &StateDir,
    spec: &OpenSpec,
    key: KeyInput<'_>,
    limits: KdfLimits,
    serve: &Serve,
    mode: Mode<'_>,
) -> Result<Ready> {
    let (serve, tls) = check_serve(serve)?;
    let prepared = prepare(run, spec, key, limits)?;
    match mode {
        Mode::Here(ready) => serve::serve_here(run, prepared, &serve, tls, ready, false),
        Mode::Child { launcher, log } => {
            drop(tls); // the child loads the credentials again
            child::spawn(run, prepared, &serve, launcher, log)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// close

/// The export [`close`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Its record.
    pub entry: Entry,
    /// What stopping it did.
    pub stopped: Stopped,
}

/// Stops the export of `target`: its mount point, its volume file, or the volume's runtime
/// id. Unmounts, detaches the loop device, SIGTERMs the export (waiting up to `timeout`),
/// which wipes the key, and removes its record. A busy file system is left as it was.
/// `None`: nothing with that mount point, volume or id was open.
///
/// # Errors
/// [`Error::Invalid`] when `target` is mounted but not by sealvol, when the file system is
/// busy, or when the export does not stop.
pub fn close(run: &StateDir, target: &Path, timeout: Duration) -> Result<Option<Closed>> {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let target_id = volume_id(&target).ok();
    let entry = run.list().into_iter().find(|e| {
        e.mount_point.as_deref() == Some(&target)
            || e.volume == target
            || target_id.as_deref() == Some(&e.id)
    });
    let Some(entry) = entry else {
        if mount::is_mountpoint(&target) {
            return Err(Error::Invalid(format!(
                "{} is mounted, but not by sealvol (no record in {}); unmount it with umount",
                target.display(),
                run.root().display()
            )));
        }
        return Ok(None);
    };
    let stopped = served::stop(run, &entry, Busy::Fail, timeout)?;
    Ok(Some(Closed { entry, stopped }))
}

#[cfg(test)]
mod tests;
