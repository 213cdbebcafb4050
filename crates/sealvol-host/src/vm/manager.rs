//! Workload VMs: one qemu VM per workload id, with a qcow2 overlay on a shared base image, a
//! cloud-init NoCloud seed ISO, port forwards, and optionally an encrypted data disk that is a
//! workload volume of the [`volume`] manager.
//!
//! Its ids, records, locks, phases and sweep skeleton are a [`crate::store`], as the volume
//! manager's are, in `<state>/vm`:
//!
//! ```text
//! vm/records/<id>.json  the record: phase, parameters, the running qemu (pid, accelerator)
//! vm/dirs/<id>/         overlay.qcow2 (or root.ov, an encrypted root disk), seed.iso,
//!                       user-data, meta-data (0600), console.log, qmp.sock, qemu.pid,
//!                       data.nbd.sock, nbd.log, root.nbd.sock, root-nbd.log
//! vm/locks/<id>.lock    flock per id; vm/sweep.lock: the global lock
//! vm/accel.json         the accelerator probe's verdict for this host boot
//! ```
//!
//! The data volume's key comes in as [`SecretBytes`] ([`VmManager::start`]) and is written
//! nowhere: qemu's secret travels in a pipe ([`SecretPipe`]), never a file, and this process
//! closes its end as soon as qemu answers on its QMP socket (qemu reads it while creating its
//! objects); the NBD data disk is the same background export as `sealvol open`'s
//! ([`crate::export`]), which gets the volume key on a pipe and reports once it serves.
//!
//! An **encrypted root disk** (`encrypted_root`) is a sealvol overlay (`root.ov`,
//! [`crate::overlay`]) over the raw base image instead of a qcow2: made with the VM's key
//! at create, served to qemu over the same background NBD export at start (the key on a
//! pipe), and crypto-erased (its key area wiped) at destroy.
//!
//! This module does not make or open workload volumes itself: a data volume is created with
//! `sealvol volume create` and handed over by id.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use sealvol_crypto::SecretBytes;

use super::{probe_accel, Accel, AccelChoice, DataDisk, SecretPipe, Stopped, VmSpec};
use crate::export::served::{self, Busy};
use crate::export::{self, KeyInput, Mode, NbdSpec, OpenSpec, Serve};
use crate::lock::VolumeLock;
use crate::luks_file::{Access, LuksFile};
use crate::safe_dir::{FileId, Kind, SafeDir};
use crate::state::{now, Entry, StateDir};
use crate::store::{Action, Journaled, Phase, Store, Sweeper};
use crate::volume;
use crate::{cmd, process, Error, Result, Subject};

/// A VM id: the same rules as a volume id (`[a-z0-9][a-z0-9_.-]{0,62}`, no `..`).
pub type VmId = crate::store::VolumeId;

/// How long the accelerator probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an NBD export gets to stop on SIGTERM.
const EXPORT_STOP: Duration = Duration::from_secs(10);

/// How long a sweep (and an undone create) waits for a guest to power off before killing qemu.
pub const SWEEP_STOP: Duration = Duration::from_secs(5);
/// Largest public key file accepted for the seed.
const MAX_SSH_KEY: u64 = 16 << 10;
/// The socket of an encrypted root disk's NBD export, in the VM's directory.
const ROOT_SOCKET: &str = "root.nbd.sock";

/// The root disk's file in the VM's directory.
fn root_file(p: &VmParams) -> &'static str {
    if p.encrypted_root {
        "root.ov"
    } else {
        "overlay.qcow2"
    }
}

/// How the data volume reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataVia {
    /// qemu's own LUKS driver (LUKS1 volumes; the key as a qemu secret read from a pipe).
    Luks,
    /// sealvol's NBD export on a unix socket in the VM directory.
    Nbd,
}

impl DataVia {
    /// `luks` or `nbd`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataVia::Luks => "luks",
            DataVia::Nbd => "nbd",
        }
    }
}

/// A host-to-guest TCP port forward (`host:guest/tcp`), bound on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Host port.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

impl Forward {
    /// Parses `HOST:GUEST` or `HOST:GUEST/tcp`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the expected form.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "--forward {s:?} is not HOST:GUEST/tcp (ports 1 to 65535, for example 2222:22/tcp)"
            ))
        };
        let ports = match s.split_once('/') {
            Some((p, "tcp")) => p,
            Some(_) => return Err(bad()),
            None => s,
        };
        let (h, g) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|&n| n != 0).ok_or_else(bad);
        Ok(Forward {
            host: port(h)?,
            guest: port(g)?,
        })
    }
}

/// Direct kernel boot (instead of booting the base image's boot loader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    /// The kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

/// What a VM is created with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmParams {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Size of the root disk (the overlay's virtual size) in bytes.
    pub disk_size: u64,
    /// The read-only base image (canonical path).
    pub base: PathBuf,
    /// The workload volume attached as the data disk.
    pub data_volume: Option<VmId>,
    /// How the data disk is attached.
    pub data_via: DataVia,
    /// Port forwards.
    pub forwards: Vec<Forward>,
    /// `kvm`, `tcg` or `auto`.
    pub accel: String,
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
    /// The root disk is an encrypted sealvol overlay (`root.ov`) over the raw base image,
    /// served to qemu over NBD, instead of a qcow2 overlay.
    #[serde(default)]
    pub encrypted_root: bool,
}

/// The running qemu of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// qemu's pid.
    pub qemu_pid: u32,
    /// The accelerator in use.
    pub accel: Accel,
    /// Why that accelerator.
    pub accel_reason: String,
    /// The NBD export serving the data disk, when attached through NBD.
    pub nbd_pid: Option<u32>,
    /// The NBD export serving an encrypted root disk.
    #[serde(default)]
    pub root_nbd_pid: Option<u32>,
    /// Seconds since the epoch when it started.
    pub started: u64,
}

/// The record of one VM: `vm/records/<id>.json`. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The id.
    pub id: VmId,
    /// Where it is in its life.
    pub phase: Phase,
    /// What it was created with.
    pub params: VmParams,
    /// The base image's format (`raw`, `qcow2` ...), from `qemu-img info`.
    pub base_format: Option<String>,
    /// The seed carries an ssh key.
    pub ssh_key: bool,
    /// Steps of the current operation that completed.
    pub steps: Vec<String>,
    /// The running qemu, if started.
    pub running: Option<Running>,
    /// Seconds since the epoch when `create` started.
    pub created: u64,
    /// While `destroying`: the destroy was asked to destroy the data volume too, so whoever
    /// finishes it (`destroy` again, `sweep`) does.
    #[serde(default)]
    pub destroy_data: bool,
    /// An encrypted root disk's checkpoint when its export last stopped (`COUNTER:HEX`): the
    /// next start refuses any older state of `root.ov` (a copy put back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_checkpoint: Option<String>,
}

impl Journaled for VmRecord {
    fn id(&self) -> &VmId {
        &self.id
    }
    fn phase(&self) -> Phase {
        self.phase
    }
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }
    fn steps(&self) -> &[String] {
        &self.steps
    }
    fn steps_mut(&mut self) -> &mut Vec<String> {
        &mut self.steps
    }
}

/// What `vm status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    /// The id.
    pub id: VmId,
    /// Its phase.
    pub phase: Phase,
    /// Whether qemu runs now.
    pub running: bool,
    /// qemu's pid, when running.
    pub qemu_pid: Option<u32>,
    /// The accelerator, when running.
    pub accel: Option<Accel>,
    /// Why that accelerator.
    pub accel_reason: Option<String>,
    /// The NBD export's pid, when running with an NBD data disk.
    pub nbd_pid: Option<u32>,
    /// The encrypted root disk's NBD export's pid, when running with one.
    pub root_nbd_pid: Option<u32>,
    /// Created with.
    pub params: VmParams,
    /// The VM's directory.
    pub dir: PathBuf,
    /// The root disk overlay (`overlay.qcow2`, or `root.ov` when encrypted).
    pub overlay: PathBuf,
    /// The cloud-init seed.
    pub seed_iso: PathBuf,
    /// The serial console log.
    pub console_log: PathBuf,
    /// The data volume's image, when there is one.
    pub data_image: Option<PathBuf>,
}

/// What [`VmManager::stop`] did.
#[derive(Clone, Debug, Serialize)]
pub struct StopReport {
    /// The id.
    pub id: VmId,
    /// It was running.
    pub was_running: bool,
    /// `acpi` (the guest powered off), `killed` (SIGKILL after the wait), or `not-running`.
    pub how: String,
    /// An NBD export was stopped.
    pub stopped_nbd: bool,
}

/// What [`VmManager::destroy`] did.
#[derive(Clone, Debug, Serialize)]
pub struct VmDestroyed {
    /// The id.
    pub id: VmId,
    /// There was nothing to destroy.
    pub already_absent: bool,
    /// How qemu was stopped.
    pub stop: Option<StopReport>,
    /// The data volume was destroyed (crypto-erased) too.
    pub data_destroyed: Option<volume::Destroyed>,
}

/// What [`VmManager::create`] is asked for, beyond the parameters.
#[derive(Debug, Default)]
pub struct CreateInput {
    /// A public ssh key file for the seed (read here; its content is never logged).
    pub ssh_key_file: Option<PathBuf>,
    /// An encrypted root disk's key and its keyslot's KDF (`VmParams::encrypted_root`).
    pub root_key: Option<(SecretBytes, sealvol_luks::KdfParams)>,
}

/// Whether `pid` is alive and its command line names `needle` (a guard against pid reuse:
/// every qemu and NBD export of a VM names a file in the VM's directory).
fn cmdline_names(pid: u32, needle: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.to_string_lossy();
    process::alive(pid)
        && raw
            .split(|&b| b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(needle.as_ref()))
}

/// Whether `pid` is a process on its way out: alive (some thread still runs) but with its
/// memory, and so its command line, already gone.
fn exiting(pid: u32) -> bool {
    process::alive(pid) && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
}

/// Whether `head` (the start of a file) is a LUKS1 binary header (magic, version 1).
fn is_luks1(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..6] == b"LUKS\xba\xbe" && u16::from_be_bytes([head[6], head[7]]) == 1
}

/// Reads and checks a public ssh key file: one line, a known key type, at most 16 KiB.
fn read_ssh_key(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| {
        Error::io(
            format!("cannot read the ssh key file {}", path.display()),
            e,
        )
    })?;
    let mut text = String::new();
    f.take(MAX_SSH_KEY + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let key = text.trim();
    let known = ["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"];
    if text.len() as u64 > MAX_SSH_KEY
        || key.lines().count() != 1
        || !known.iter().any(|k| key.starts_with(k))
        || key.contains("PRIVATE KEY")
    {
        return Err(Error::Invalid(format!(
            "{} is not one public ssh key (expected one line like `ssh-ed25519 AAAA... user`); give the .pub file",
            path.display()
        )));
    }
    Ok(key.to_string())
}

/// Writes `bytes` to the new file `name` of `dir` (made exclusively, mode 0600).
fn write_private(dir: &SafeDir, name: &str, bytes: &[u8]) -> Result<()> {
    let mut f = dir.create_new(name, 0o600)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", dir.join(name).display()), e))
}

/// The path of `name` in the VM directory `dir`, checked right now to be a regular file of
/// one link reached without any symbolic link, to hand to qemu.
fn checked_path(dir: &SafeDir, name: &str) -> Result<PathBuf> {
    let st = dir.stat(name)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{} is missing; destroy the VM and create it again",
            dir.join(name).display()
        ))
    })?;
    if Kind::of_mode(st.st_mode) != Kind::File || st.st_nlink != 1 {
        return Err(Error::Planted {
            path: dir.join(name),
            found: "not the regular file sealvol made (a link, or another kind of file)".into(),
            action: "sealvol does not hand it to qemu; destroy the VM and create it again".into(),
        });
    }
    dir.verify(name, FileId::of(&st))
}

/// The VM manager over `<state>/vm`, next to the volume manager of the same state directory.
#[derive(Clone, Debug)]
pub struct VmManager {
    store: Store<VmRecord>,
    volumes: volume::Manager,
    run: StateDir,
}

impl VmManager {
    /// The VM manager of the state directory of `volumes` (VMs live in its `vm/`), whose
    /// exports keep their runtime records in `run`.
    pub fn new(volumes: volume::Manager, run: StateDir) -> Self {
        VmManager {
            store: Store::new(
                volumes.root().to_path_buf(),
                Some("vm"),
                Subject::Vm,
                &["dirs"],
            ),
            volumes,
            run,
        }
    }

    /// `<state>/vm`.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// `vm/dirs/<id>` if it exists (a link planted there is an error).
    fn existing_vm_dir(&self, id: &VmId) -> Result<Option<SafeDir>> {
        match self.store.existing_sub("dirs")? {
            Some(d) => d.open_dir(id.as_str()),
            None => Ok(None),
        }
    }

    /// `vm/dirs/<id>`, which must exist.
    fn vm_safe_dir(&self, id: &VmId) -> Result<SafeDir> {
        self.existing_vm_dir(id)?.ok_or_else(|| {
            Error::Invalid(format!(
                "the directory {} of VM {id} is missing; run `sealvol vm sweep`",
                self.vm_dir(id).display()
            ))
        })
    }

    /// The record file of `id`.
    pub fn record_path(&self, id: &VmId) -> PathBuf {
        self.store.record_path(id)
    }

    /// The directory of `id`'s files.
    pub fn vm_dir(&self, id: &VmId) -> PathBuf {
        self.store.path("dirs").join(id.as_str())
    }

    fn file(&self, id: &VmId, name: &str) -> PathBuf {
        self.vm_dir(id).join(name)
    }

    /// The serial console log of `id`.
    pub fn console_log(&self, id: &VmId) -> PathBuf {
        self.file(id, "console.log")
    }

    /// The record of `id`, if any.
    ///
    /// # Errors
    /// A damaged or unreadable record, or a link planted in its place.
    pub fn load(&self, id: &VmId) -> Result<Option<VmRecord>> {
        self.store.load(id)
    }

    /// The data volume `vol` as a ready volume: its image and detached header.
    /// Both checked to be the volume's files (see `volume::Manager::checked_files`), to be
    /// handed to qemu or an export right away.
    fn data_volume(&self, vol: &VmId) -> Result<(PathBuf, Option<PathBuf>)> {
        match self.volumes.load(vol)? {
            Some(r) if r.phase == Phase::Ready => {
                self.volumes.checked_files(vol, r.params.detached_header)
            }
            Some(r) => Err(Error::Invalid(format!(
                "data volume {vol} is {}; run `sealvol volume sweep` first",
                r.phase.as_str()
            ))),
            None => Err(Error::Invalid(format!(
                "there is no data volume {vol} in {}; create it with `sealvol volume create {vol} --size ...`",
                self.volumes.root().display()
            ))),
        }
    }

    /// Checks the data volume suits `via`: qemu's LUKS driver reads LUKS1 only, and a
    /// detached header only from qemu 9.0 on.
    fn check_data(&self, vol: &VmId, via: DataVia) -> Result<(PathBuf, Option<PathBuf>)> {
        let (image, header) = self.data_volume(vol)?;
        if via == DataVia::Luks {
            if header.is_some() {
                let (major, minor) = super::qemu_version()?;
                if (major, minor) < super::QEMU_DETACHED_LUKS {
                    return Err(Error::Invalid(format!(
                        "data volume {vol} has a detached header, which the LUKS driver of qemu {major}.{minor} cannot read (qemu 9.0 and later can: Debian bookworm-backports has it); use --data-via nbd"
                    )));
                }
            }
            if !is_luks1(&self.volumes.header_head(vol, header.is_some(), 8)?) {
                return Err(Error::Invalid(format!(
                    "data volume {vol} is not LUKS1, and qemu's LUKS driver reads LUKS1 only; use --data-via nbd (any LUKS version), or a LUKS1 volume (`sealvol volume create --type luks1`)"
                )));
            }
        }
        Ok((image, header))
    }

    // -----------------------------------------------------------------------------------
    // create

    /// Creates VM `id`: the qcow2 overlay on the base image and the cloud-init seed. Bad
    /// input changes nothing; a failed step undoes the ones before it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad input or an existing id; [`Error::Step`] naming the
    /// failed step.
    pub fn create(&self, id: &VmId, params: &VmParams, input: &CreateInput) -> Result<VmStatus> {
        let mut params = params.clone();
        // Bad input first, before anything is locked or made.
        if !(1..=64).contains(&params.cpus) {
            return Err(Error::Invalid(format!(
                "--cpus {} is out of range; give 1 to 64",
                params.cpus
            )));
        }
        if !(16..=1 << 20).contains(&params.memory_mib) {
            return Err(Error::Invalid(format!(
                "--memory {} MiB is out of range; give 16M to 1T",
                params.memory_mib
            )));
        }
        if params.disk_size == 0 || params.disk_size % 512 != 0 {
            return Err(Error::Invalid(format!(
                "--disk-size {} is not a positive multiple of 512 bytes",
                params.disk_size
            )));
        }
        if !["kvm", "tcg", "auto"].contains(&params.accel.as_str()) {
            return Err(Error::Invalid(format!(
                "--accel {} is not kvm, tcg or auto",
                params.accel
            )));
        }
        let canon = |p: &Path, what: &str| {
            std::fs::canonicalize(p).map_err(|_| {
                Error::Invalid(format!(
                    "the {what} {} does not exist; check the path",
                    p.display()
                ))
            })
        };
        params.base = canon(&params.base, "base image")?;
        if let Some(k) = &mut params.kernel {
            k.kernel = canon(&k.kernel, "kernel")?;
            k.initrd = canon(&k.initrd, "initrd")?;
        }
        let mut hosts: Vec<u16> = params.forwards.iter().map(|f| f.host).collect();
        hosts.sort_unstable();
        if hosts.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Invalid(
                "two --forward options use the same host port; give each its own".into(),
            ));
        }
        if let Some(v) = &params.data_volume {
            self.check_data(v, params.data_via)?;
        }
        if params.encrypted_root != input.root_key.is_some() {
            return Err(Error::Invalid(if params.encrypted_root {
                "an encrypted root disk needs a key".into()
            } else {
                "a key was given for a root disk that is not encrypted".into()
            }));
        }
        let ssh_key = input
            .ssh_key_file
            .as_deref()
            .map(read_ssh_key)
            .transpose()?;

        let _locks = self.store.lock(id)?;
        self.store.sweep_id(self, id)?;
        if self.load(id)?.is_some() {
            return Err(Error::Invalid(format!(
                "VM {id} exists already; destroy it first with `sealvol vm destroy {id}`"
            )));
        }
        let mut rec = VmRecord {
            id: id.clone(),
            phase: Phase::Creating,
            params,
            base_format: None,
            ssh_key: ssh_key.is_some(),
            steps: Vec::new(),
            running: None,
            created: now(),
            destroy_data: false,
            root_checkpoint: None,
        };
        self.store.begin(&rec)?;
        match self.create_steps(&mut rec, ssh_key.as_deref(), input.root_key.as_ref()) {
            Ok(()) => {
                tracing::info!(id = %id, "VM created");
                Ok(self.status_of(&rec))
            }
            Err((step, e)) => {
                Err(self
                    .store
                    .create_failed(id, step, *e, self.teardown(&rec, false, SWEEP_STOP)))
            }
        }
    }

    fn create_steps(
        &self,
        rec: &mut VmRecord,
        ssh_key: Option<&str>,
        root_key: Option<&(SecretBytes, sealvol_luks::KdfParams)>,
    ) -> std::result::Result<(), (&'static str, Box<Error>)> {
        let at = |step: &'static str| move |e: Error| (step, Box::new(e));
        let id = rec.id.clone();
        let vm = self.store.open().map_err(at("dir"))?;
        let vdir = vm
            .ensure_dir("dirs", 0o700)
            .and_then(|dirs| dirs.create_dir(id.as_str(), 0o700))
            .map_err(at("dir"))?;
        // A file qemu-img or genisoimage writes is made here first, exclusively, and its
        // path checked right before the tool gets it (the tool then truncates that file).
        let made = |name: &str| -> Result<PathBuf> {
            let f = vdir.create_new(name, 0o600)?;
            let made = FileId::of_file(&f)?;
            vm.verify(&format!("dirs/{id}/{name}"), made)
        };

        // overlay: qcow2 on the base, which qemu opens read-only.
        let info = cmd::run(
            Command::new("qemu-img")
                .args(["info", "--output=json", "-U"])
                .arg(&rec.params.base),
        )
        .map_err(at("overlay"))?;
        let fmt = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["format"].as_str().map(str::to_string))
            .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "qemu-img cannot tell the format of the base image {}",
                    rec.params.base.display()
                ))
            })
            .map_err(at("overlay"))?;
        rec.base_format = Some(fmt.clone());
        if let Some((key, kdf)) = root_key {
            // An encrypted root disk: a sealvol overlay over the raw base.
            if fmt != "raw" {
                return Err(at("overlay")(Error::Invalid(format!(
                    "an encrypted root disk stands on a raw base image, and {} is {fmt}; convert it (`qemu-img convert -O raw`)",
                    rec.params.base.display()
                ))));
            }
            let file = vdir.create_new("root.ov", 0o600).map_err(at("overlay"))?;
            let path = vm
                .verify(
                    &format!("dirs/{id}/root.ov"),
                    FileId::of_file(&file).map_err(at("overlay"))?,
                )
                .map_err(at("overlay"))?;
            let (base, _) = crate::overlay::check_base(
                &crate::overlay::BaseSpec::Image {
                    path: rec.params.base.clone(),
                },
                crate::overlay::BaseKey::None,
                self.volumes.kdf_limits(),
            )
            .map_err(at("overlay"))?;
            crate::overlay::create_in_file(
                &file,
                &path,
                key.expose(),
                &base,
                None,
                &crate::overlay::Create {
                    size: Some(rec.params.disk_size),
                    cluster_size: None,
                    kdf: *kdf,
                    label: Some(format!("sealvol vm {id} root")),
                },
            )
            .map_err(at("overlay"))?;
        } else {
            let overlay = made("overlay.qcow2").map_err(at("overlay"))?;
            cmd::run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-b"])
                    .arg(&rec.params.base)
                    .args(["-F", &fmt])
                    .arg(&overlay)
                    .arg(rec.params.disk_size.to_string()),
            )
            .map_err(at("overlay"))?;
        }
        self.store
            .step_done(rec, "overlay")
            .map_err(at("overlay"))?;

        // seed: NoCloud user-data and meta-data (JSON is YAML), 0600, then the ISO.
        let mut user = json!({"hostname": id.as_str()});
        if let Some(k) = ssh_key {
            user["ssh_authorized_keys"] = json!([k]);
        }
        let user = format!(
            "#cloud-config\n{}\n",
            serde_json::to_string_pretty(&user).expect("json")
        );
        let meta = serde_json::to_string_pretty(
            &json!({"instance-id": format!("sealvol-{id}"), "local-hostname": id.as_str()}),
        )
        .expect("json");
        (|| -> Result<()> {
            write_private(&vdir, "user-data", user.as_bytes())?;
            write_private(&vdir, "meta-data", meta.as_bytes())?;
            let seed = made("seed.iso")?;
            let dir = vm.verify(&format!("dirs/{id}"), vdir.id()?)?;
            cmd::run(
                Command::new("genisoimage")
                    .current_dir(&dir)
                    .args(["-quiet", "-output"])
                    .arg(&seed)
                    .args(["-volid", "cidata"])
                    .args(["-joliet", "-rock", "user-data", "meta-data"]),
            )?;
            vdir.sync()
        })()
        .map_err(at("seed"))?;
        self.store.step_done(rec, "seed").map_err(at("seed"))?;
        self.store.finish(rec).map_err(at("ready"))
    }

    // -----------------------------------------------------------------------------------
    // start / stop

    /// Whether `r`'s recorded qemu is alive (and is the qemu of this VM).
    fn qemu_alive(&self, r: &VmRecord) -> bool {
        r.running
            .as_ref()
            .is_some_and(|run| cmdline_names(run.qemu_pid, &self.vm_dir(&r.id)))
    }

    /// Checks that `key` opens the LUKS1 volume `image`, then puts it in a [`SecretPipe`] for
    /// qemu's `secret` object (which takes UTF-8 text only).
    fn qemu_secret(
        &self,
        image: &Path,
        header: Option<&Path>,
        key: &SecretBytes,
    ) -> Result<SecretPipe> {
        let mut open = LuksFile::new(image, header.map(Path::to_path_buf))
            .open(Access::Read, self.volumes.kdf_limits())?;
        if let Some(warning) = open.damaged_copy() {
            tracing::warn!("{warning}");
        }
        open.unlock(key.expose(), None)?;
        if std::str::from_utf8(key.expose()).is_err() {
            return Err(Error::Invalid(
                "qemu's LUKS driver takes text (UTF-8) secrets only and this key is binary; add a keyslot for the key as hex text (`sealvol add-key`) and start with that, or use --data-via nbd".into(),
            ));
        }
        SecretPipe::new(key.expose())
    }

    /// Starts VM `id` (a no-op when it runs), its data volume (if any) opened with `key`.
    /// Returns whether it ran already, and the status.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a VM or data volume that is not usable, or no key for a data
    /// volume; [`Error::Step`] (its cause an [`Error::WrongKey`] for a key that opens nothing) after
    /// undoing what was started.
    pub fn start(&self, id: &VmId, key: Option<&SecretBytes>) -> Result<(bool, VmStatus)> {
        self.store.ready(id)?;
        let _locks = self.store.lock(id)?;
        let mut r = self.store.ready(id)?;
        if self.qemu_alive(&r) {
            return Ok((true, self.status_of(&r)));
        }
        if r.running.is_some() {
            self.stop_locked(&mut r, Duration::from_secs(1))?;
        }
        let fail = |step: &'static str, cause: Error| Error::Step {
            subject: Subject::Vm,
            verb: "start",
            id: id.to_string(),
            step,
            cause: Box::new(cause),
            after: "; nothing is left running".into(),
        };
        let choice = match r.params.accel.as_str() {
            "kvm" => AccelChoice::Kvm,
            "tcg" => AccelChoice::Tcg,
            _ => AccelChoice::Auto,
        };
        let verdict = probe_accel(&self.store.open()?, choice, PROBE_TIMEOUT)?;
        let vdir = self.vm_safe_dir(id)?;
        // What qemu gets by path: made or checked through the VM's directory right now.
        let root_disk = checked_path(&vdir, root_file(&r.params))?;
        let seed_iso = checked_path(&vdir, "seed.iso")?;
        let console = vdir.replace_file("console.log", 0o600)?;
        let console_log = vdir.verify("console.log", FileId::of_file(&console)?)?;
        drop(console);
        vdir.remove_file("qmp.sock")?;
        let socket = self.file(id, "data.nbd.sock");
        let mut nbd_pid = None;
        // qemu's LUKS driver reads the volume itself: qemu inherits the volume's claim (the
        // one an export holds) so that no export and no other VM opens it while qemu runs.
        let mut claim = None;
        let mut secret = None;
        let data = match &r.params.data_volume {
            None => None,
            Some(vol) => {
                let (image, header) = self.check_data(vol, r.params.data_via)?;
                let key = key.ok_or_else(|| {
                    Error::Invalid(format!(
                        "VM {id} has data volume {vol}: its key is needed to start it"
                    ))
                })?;
                if let Some(e) = served::find(&self.run, &image) {
                    return Err(Error::Invalid(format!(
                        "data volume {vol} is in use (served by process {}{}); close it first (`sealvol volume close {vol}`, or stop the VM using it)",
                        e.pid,
                        e.nbd.map(|n| format!(" over NBD at {n}")).unwrap_or_default()
                    )));
                }
                match r.params.data_via {
                    DataVia::Luks => {
                        let rid = self.volumes.image_runtime_id(vol).ok_or_else(|| {
                            Error::Invalid(format!("the image of data volume {vol} is missing"))
                        })?;
                        let c = VolumeLock::acquire(&self.run, &rid, &image)
                            .map_err(|e| match e {
                                Error::AlreadyOpen { .. } => Error::Invalid(format!(
                                    "data volume {vol} is in use by another process (a running VM or an export: `sealvol vm list`, `sealvol volume status {vol}`); stop it first"
                                )),
                                e => e,
                            })?;
                        c.inherit_by_children()?;
                        claim = Some(c);
                        let pipe = self
                            .qemu_secret(&image, header.as_deref(), key)
                            .map_err(|e| fail("data-key", e))?;
                        let secret_file = pipe.path();
                        secret = Some(pipe);
                        Some(DataDisk::Luks {
                            volume: image,
                            header,
                            secret_file,
                        })
                    }
                    DataVia::Nbd => {
                        vdir.remove_file("data.nbd.sock")?;
                        let log = vdir.replace_file("nbd.log", 0o600)?;
                        // The same background export as `sealvol open`'s: it reports once
                        // it serves on the socket (or why it does not).
                        let ready = export::export(
                            &self.run,
                            &OpenSpec::luks(&image, header),
                            KeyInput::Bytes(key),
                            self.volumes.kdf_limits(),
                            &Serve::Nbd(NbdSpec::socket(&socket)),
                            Mode::Child {
                                launcher: self.volumes.launcher(),
                                log: Some((&self.file(id, "nbd.log"), &log)),
                            },
                        )
                        .map_err(|e| fail("nbd-export", e))?;
                        nbd_pid = Some(ready.pid());
                        Some(DataDisk::Nbd {
                            socket: socket.clone(),
                        })
                    }
                }
            }
        };
        // An encrypted root disk: its own background NBD export, with the same key.
        let mut root_nbd = None;
        let mut root_nbd_pid = None;
        if r.params.encrypted_root {
            let key = match key {
                Some(k) => k,
                None => {
                    if let Some(pid) = nbd_pid {
                        self.stop_nbd(id, pid);
                    }
                    return Err(Error::Invalid(format!(
                        "VM {id} has an encrypted root disk: its key is needed to start it"
                    )));
                }
            };
            let started = (|| -> Result<u32> {
                vdir.remove_file(ROOT_SOCKET)?;
                let log = vdir.replace_file("root-nbd.log", 0o600)?;
                let spec = OpenSpec::for_volume(
                    &root_disk,
                    None,
                    false,
                    Some(crate::overlay::BaseSpec::Image {
                        path: r.params.base.clone(),
                    }),
                    r.root_checkpoint.clone(),
                )?;
                let ready = export::export(
                    &self.run,
                    &spec,
                    KeyInput::Bytes(key),
                    self.volumes.kdf_limits(),
                    &Serve::Nbd(NbdSpec::socket(self.file(id, ROOT_SOCKET))),
                    Mode::Child {
                        launcher: self.volumes.launcher(),
                        log: Some((&self.file(id, "root-nbd.log"), &log)),
                    },
                )?;
                Ok(ready.pid())
            })();
            match started {
                Ok(pid) => {
                    root_nbd_pid = Some(pid);
                    root_nbd = Some(self.file(id, ROOT_SOCKET));
                }
                Err(e) => {
                    if let Some(pid) = nbd_pid {
                        self.stop_nbd(id, pid);
                    }
                    return Err(fail("root-export", e));
                }
            }
        }
        let stop_exports = |me: &Self| {
            if let Some(pid) = nbd_pid {
                me.stop_nbd(id, pid);
            }
            if let Some(pid) = root_nbd_pid {
                me.stop_nbd_on(id, pid, ROOT_SOCKET);
            }
        };
        let spec = VmSpec {
            accel: verdict.accel,
            cpus: r.params.cpus,
            memory_mib: r.params.memory_mib,
            kernel: r
                .params
                .kernel
                .as_ref()
                .map(|k| (k.kernel.clone(), k.initrd.clone(), k.append.clone())),
            root_disk: root_nbd.is_none().then_some(root_disk),
            root_nbd,
            seed_iso: Some(seed_iso),
            data,
            qmp_socket: self.file(id, "qmp.sock"),
            console_log,
            forwards: r
                .params
                .forwards
                .iter()
                .map(|f| (f.host, f.guest))
                .collect(),
        };
        let started = super::start(&spec);
        // qemu holds the claim now (or failed and released it), and has read the secret.
        drop(claim);
        drop(secret);
        self.store.crash("start:spawned");
        let child = match started {
            Ok(c) => c,
            Err(e) => {
                stop_exports(self);
                return Err(fail("qemu", e));
            }
        };
        let mut child = child;
        let pid = child.id();
        if let Ok(Some(status)) = child.try_wait() {
            stop_exports(self);
            return Err(fail(
                "qemu",
                Error::QemuExited {
                    status: status.to_string(),
                    console_log: self.console_log(id),
                },
            ));
        }
        drop(child); // qemu runs on; it is reaped by whoever inherits it
        r.running = Some(Running {
            qemu_pid: pid,
            accel: verdict.accel,
            accel_reason: verdict.reason.clone(),
            nbd_pid,
            root_nbd_pid,
            started: now(),
        });
        let saved = self
            .store
            .save(&r)
            .and_then(|()| vdir.write_atomic("qemu.pid", pid.to_string().as_bytes(), 0o600));
        if let Err(e) = saved {
            let _ = self.stop_locked(&mut r, Duration::from_secs(1));
            return Err(fail("record", e));
        }
        tracing::info!(id = %id, pid, accel = verdict.accel.as_str(), "VM started");
        Ok((false, self.status_of(&r)))
    }

    /// Stops the NBD export `pid` serving VM `id`'s data disk on its socket: its record and
    /// the process. Returns whether it was running.
    fn stop_nbd(&self, id: &VmId, pid: u32) -> bool {
        self.stop_nbd_on(id, pid, "data.nbd.sock")
    }

    /// [`VmManager::stop_nbd`] of the export on the socket `name` in the VM's directory.
    fn stop_nbd_on(&self, id: &VmId, pid: u32, name: &str) -> bool {
        self.stop_nbd_checkpoint(id, pid, name).0
    }

    /// [`VmManager::stop_nbd_on`], with the overlay checkpoint the export recorded when it
    /// stopped (an encrypted root disk's).
    fn stop_nbd_checkpoint(
        &self,
        id: &VmId,
        pid: u32,
        name: &str,
    ) -> (bool, Option<sealvol_overlay::Checkpoint>) {
        let socket = &self.file(id, name);
        let sock = socket.to_string_lossy();
        let entry =
            self.run.list().into_iter().find(|e| {
                e.kind == "nbd" && (e.pid == pid || e.nbd.as_deref() == Some(sock.as_ref()))
            });
        let mut was = false;
        let mut checkpoint = None;
        if let Some(e) = entry {
            was = served::alive(&self.run, &e);
            match served::stop(&self.run, &e, Busy::Fail, EXPORT_STOP) {
                Ok(s) => checkpoint = s.checkpoint,
                Err(err) => tracing::warn!(error = %err, "stopping the NBD export failed"),
            }
        }
        if cmdline_names(pid, socket) {
            was = true;
            if !process::terminate(pid, EXPORT_STOP) {
                process::kill(pid);
                process::wait_gone(pid, Duration::from_secs(5));
            }
        }
        if let Ok(Some(dir)) = self.existing_vm_dir(id) {
            let _ = dir.remove_file(name);
        }
        (was, checkpoint)
    }

    /// Stops VM `id`: ACPI power-off over QMP, SIGKILL after `timeout`, then its NBD export.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the VM does not exist.
    pub fn stop(&self, id: &VmId, timeout: Duration) -> Result<StopReport> {
        self.store.ready(id)?;
        let _locks = self.store.lock(id)?;
        let mut r = self.store.ready(id)?;
        self.stop_locked(&mut r, timeout)
    }

    fn stop_locked(&self, r: &mut VmRecord, timeout: Duration) -> Result<StopReport> {
        let id = r.id.clone();
        let mut report = StopReport {
            id: id.clone(),
            was_running: false,
            how: "not-running".into(),
            stopped_nbd: false,
        };
        if let Some(run) = r.running.clone() {
            if cmdline_names(run.qemu_pid, &self.vm_dir(&id)) {
                report.was_running = true;
                report.how =
                    match super::stop(run.qemu_pid, &self.file(&id, "qmp.sock"), timeout) {
                        Stopped::NotRunning => "not-running",
                        Stopped::Acpi => "acpi",
                        Stopped::Killed => "killed",
                    }
                    .into();
            } else if exiting(run.qemu_pid) {
                // The guest powered off: qemu's threads are still closing its files (and the
                // data volume's claim). Done once they are gone.
                process::wait_gone(run.qemu_pid, Duration::from_secs(5));
            }
            if let Some(pid) = run.nbd_pid {
                report.stopped_nbd = self.stop_nbd(&id, pid);
            }
            if let Some(pid) = run.root_nbd_pid {
                let (was, cp) = self.stop_nbd_checkpoint(&id, pid, ROOT_SOCKET);
                report.stopped_nbd |= was;
                // The state it stopped at is the oldest the next start accepts.
                if let Some(cp) = cp {
                    r.root_checkpoint = Some(cp.to_string());
                }
            }
        }
        r.running = None;
        self.store.save(r)?;
        if let Ok(Some(dir)) = self.existing_vm_dir(&id) {
            for f in ["qemu.pid", "qmp.sock"] {
                let _ = dir.remove_file(f);
            }
        }
        tracing::info!(id = %id, how = %report.how, "VM stopped");
        Ok(report)
    }

    // -----------------------------------------------------------------------------------
    // destroy

    /// Destroys VM `id`: stops it (ACPI power-off, SIGKILL after `stop_timeout`), with
    /// `destroy_data` destroys its data volume through the volume manager (crypto-erase),
    /// then deletes its files and record. An absent id is a success that says so.
    ///
    /// # Errors
    /// [`Error::Step`] when a step fails; the record stays `destroying` and the next
    /// `destroy` or `sweep` finishes it.
    pub fn destroy(
        &self,
        id: &VmId,
        destroy_data: bool,
        stop_timeout: Duration,
    ) -> Result<VmDestroyed> {
        if self.store.existing()?.is_none() {
            return Ok(VmDestroyed {
                id: id.clone(),
                already_absent: true,
                stop: None,
                data_destroyed: None,
            });
        }
        let _locks = self.store.lock(id)?;
        let Some(rec) = self.load(id)? else {
            let leftovers = self.store.names("dirs", id)?;
            if leftovers {
                self.remove_leftovers(id)?;
            }
            self.store.unlink_lock(id);
            return Ok(VmDestroyed {
                id: id.clone(),
                already_absent: !leftovers,
                stop: None,
                data_destroyed: None,
            });
        };
        let d = self
            .teardown(&rec, destroy_data, stop_timeout)
            .map_err(|e| self.store.destroy_failed(id, e))?;
        self.store.unlink_lock(id);
        tracing::info!(id = %id, "VM destroyed");
        Ok(d)
    }

    /// Undoes or finishes: records `destroying` (and whether the data volume goes too),
    /// stops, destroys the data volume when asked now or by the interrupted destroy, deletes
    /// the files, unrecords. A `creating` record is undone and its data volume left alone.
    fn teardown(
        &self,
        rec: &VmRecord,
        destroy_data: bool,
        stop_timeout: Duration,
    ) -> Result<VmDestroyed> {
        let mut r = rec.clone();
        let destroy_data = r.phase != Phase::Creating && (destroy_data || r.destroy_data);
        if r.phase == Phase::Ready
            || (r.phase == Phase::Destroying && !r.destroy_data && destroy_data)
        {
            r.destroy_data = destroy_data;
            self.store.destroying(&mut r)?;
        }
        self.store.crash("destroy:journal");
        let stop = self.stop_locked(&mut r, stop_timeout)?;
        self.store.crash("destroy:stop");
        let data_destroyed = match (&r.params.data_volume, destroy_data) {
            (Some(v), true) => Some(self.volumes.destroy(v)?),
            _ => None,
        };
        self.store.crash("destroy:data");
        self.remove_leftovers(&r.id)?;
        self.store.crash("destroy:files");
        self.store.remove_record(&r.id)?;
        Ok(VmDestroyed {
            id: r.id.clone(),
            already_absent: false,
            stop: Some(stop),
            data_destroyed,
        })
    }

    /// Kills any qemu and NBD export of `id`'s directory and removes the directory.
    fn remove_leftovers(&self, id: &VmId) -> Result<()> {
        let dir = self.vm_dir(id);
        for pid in qemus_naming(&dir) {
            process::kill(pid);
            process::wait_gone(pid, Duration::from_secs(5));
        }
        if let Some(e) = self.nbd_export(id) {
            self.stop_nbd(id, e.pid);
        }
        if let Some(e) = self.root_export(id) {
            self.stop_nbd_on(id, e.pid, ROOT_SOCKET);
        }
        // An encrypted root disk's keys go first (crypto-erase), through a descriptor
        // checked to be the VM's own file.
        if let Some(dir) = self.existing_vm_dir(id)? {
            if let crate::safe_dir::WipeTarget::File(mut f) = dir.open_for_wipe("root.ov")? {
                let len = f
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .min(crate::overlay::KEY_AREA);
                let wiped = f
                    .write_all(&vec![0u8; len as usize])
                    .and_then(|()| f.sync_all());
                if let Err(e) = wiped {
                    return Err(Error::io(
                        format!(
                            "cannot wipe the keys of {}",
                            self.file(id, "root.ov").display()
                        ),
                        e,
                    ));
                }
            }
        }
        // Everything in it goes, links removed and never followed.
        let dirs = self.store.sub("dirs")?;
        dirs.remove_tree(id.as_str())?;
        dirs.sync()
    }

    // -----------------------------------------------------------------------------------
    // status, list, sweep

    fn status_of(&self, r: &VmRecord) -> VmStatus {
        let live = self.qemu_alive(r);
        let run = r.running.as_ref().filter(|_| live);
        VmStatus {
            id: r.id.clone(),
            phase: r.phase,
            running: live,
            qemu_pid: run.map(|x| x.qemu_pid),
            accel: run.map(|x| x.accel),
            accel_reason: run.map(|x| x.accel_reason.clone()),
            nbd_pid: run.and_then(|x| x.nbd_pid),
            root_nbd_pid: run.and_then(|x| x.root_nbd_pid),
            params: r.params.clone(),
            dir: self.vm_dir(&r.id),
            overlay: self.file(&r.id, root_file(&r.params)),
            seed_iso: self.file(&r.id, "seed.iso"),
            console_log: self.console_log(&r.id),
            data_image: r.params.data_volume.as_ref().map(|v| self.volumes.image(v)),
        }
    }

    /// The status of `id`, or `None` when it does not exist.
    ///
    /// # Errors
    /// A damaged record.
    pub fn status(&self, id: &VmId) -> Result<Option<VmStatus>> {
        Ok(self.load(id)?.map(|r| self.status_of(&r)))
    }

    /// The VMs whose qemu runs with `vol` as their data disk (through qemu's LUKS driver or
    /// an NBD export of their own). Opening, closing or destroying `vol` under them would pull
    /// the disk from a running guest, or mount one file system twice.
    ///
    /// # Errors
    /// A damaged record.
    pub fn running_users(&self, vol: &volume::VolumeId) -> Result<Vec<VmId>> {
        let mut out = Vec::new();
        for id in self.store.ids() {
            if let Some(r) = self.load(&id)? {
                if r.params.data_volume.as_ref() == Some(vol) && self.qemu_alive(&r) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Fails with [`Error::Invalid`] naming the VM when a running VM uses `vol` as its data
    /// disk; `verb` is what the caller was about to do.
    ///
    /// # Errors
    /// As above, and a damaged record.
    pub fn refuse_if_in_use(&self, vol: &volume::VolumeId, verb: &str) -> Result<()> {
        if let Some(vm) = self.running_users(vol)?.first() {
            return Err(Error::Invalid(format!(
                "cannot {verb} volume {vol}: it is the data disk of running VM {vm}; stop the VM first (`sealvol vm stop {vm}`){}",
                if verb == "destroy" {
                    format!(", or destroy both (`sealvol vm destroy {vm} --destroy-data`)")
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }

    /// Every VM with a record, by id.
    ///
    /// # Errors
    /// A damaged record.
    pub fn list(&self) -> Result<Vec<VmStatus>> {
        let mut out = Vec::new();
        for id in self.store.ids() {
            if let Some(r) = self.load(&id)? {
                out.push(self.status_of(&r));
            }
        }
        Ok(out)
    }

    /// Repairs what crashes left behind, under the global lock: interrupted creates (undone),
    /// interrupted destroys (finished, without touching the data volume), records of VMs
    /// whose qemu died (their NBD export stopped, pid file removed), directories, qemu
    /// processes and NBD exports of VMs without a record (stopped and removed).
    ///
    /// # Errors
    /// The first repair that fails.
    pub fn sweep(&self) -> Result<Vec<Action>> {
        self.store.sweep(self)
    }

    /// The runtime record of an NBD export serving on `id`'s socket, if any.
    /// The live export record of the VM's encrypted root disk, if any.
    fn root_export(&self, id: &VmId) -> Option<Entry> {
        let sock = self.file(id, ROOT_SOCKET);
        let sock = sock.to_string_lossy();
        self.run
            .list()
            .into_iter()
            .find(|e| e.nbd.as_deref() == Some(sock.as_ref()))
    }

    fn nbd_export(&self, id: &VmId) -> Option<Entry> {
        let sock = self.file(id, "data.nbd.sock");
        let sock = sock.to_string_lossy();
        self.run
            .list()
            .into_iter()
            .find(|e| e.nbd.as_deref() == Some(sock.as_ref()))
    }
}

impl Sweeper for VmManager {
    type Record = VmRecord;

    fn undo_create(&self, r: &VmRecord) -> Result<String> {
        self.teardown(r, false, SWEEP_STOP)?;
        Ok("undid an interrupted create".into())
    }

    /// Destroys the data volume only when the interrupted destroy was asked to.
    fn finish_destroy(&self, r: &VmRecord) -> Result<String> {
        self.teardown(r, false, SWEEP_STOP)?;
        Ok(match (&r.params.data_volume, r.destroy_data) {
            (Some(v), true) => format!("finished an interrupted destroy, with its data volume {v}"),
            (Some(v), false) => format!(
                "finished an interrupted destroy (its data volume {v} was not asked for and stays)"
            ),
            (None, _) => "finished an interrupted destroy".into(),
        })
    }

    /// Kills a qemu of the VM's directory that the record does not name; clears a VM whose
    /// qemu died; stops the NBD export and removes the pid file of a stopped one.
    fn repair_ready(&self, mut r: VmRecord) -> Result<Vec<String>> {
        let id = r.id.clone();
        let mut out = Vec::new();
        let ours = r.running.as_ref().map(|x| x.qemu_pid);
        for pid in qemus_naming(&self.vm_dir(&id)) {
            if Some(pid) != ours {
                process::kill(pid);
                process::wait_gone(pid, Duration::from_secs(5));
                out.push(format!("killed qemu {pid} that the record does not name"));
            }
        }
        if r.running.is_some() && !self.qemu_alive(&r) {
            self.stop_locked(&mut r, Duration::from_secs(1))?;
            out.push(
                "cleared a VM whose qemu had died (its NBD export stopped, pid file removed)"
                    .into(),
            );
        } else if r.running.is_none() {
            if let Some(e) = self.nbd_export(&id) {
                self.stop_nbd(&id, e.pid);
                out.push(format!("stopped NBD export {} of a stopped VM", e.pid));
            }
            if let Some(e) = self.root_export(&id) {
                self.stop_nbd_on(&id, e.pid, ROOT_SOCKET);
                out.push(format!(
                    "stopped the root disk's NBD export {} of a stopped VM",
                    e.pid
                ));
            }
            if let Some(dir) = self.existing_vm_dir(&id)? {
                if dir.remove_file("qemu.pid")? {
                    out.push("removed a stale pid file".into());
                }
            }
        }
        Ok(out)
    }

    fn clear_leftovers(&self, id: &VmId) -> Result<Option<String>> {
        let there = self.store.names("dirs", id)?
            || !qemus_naming(&self.vm_dir(id)).is_empty()
            || self.nbd_export(id).is_some()
            || self.root_export(id).is_some();
        if !there {
            return Ok(None);
        }
        self.remove_leftovers(id)?;
        Ok(Some(
            "removed the qemu, NBD export and files of a VM without a record".into(),
        ))
    }

    /// Ids of qemu processes and NBD exports naming a VM directory.
    fn ids_on_host(&self) -> Vec<VmId> {
        let dirs = self.store.path("dirs");
        let mut ids: Vec<VmId> = qemus_naming(&dirs)
            .into_iter()
            .filter_map(|pid| id_in_cmdline(pid, &dirs))
            .collect();
        ids.extend(self.run.list().into_iter().filter_map(|e| {
            let n = e.nbd?;
            let rest = Path::new(&n).strip_prefix(&dirs).ok()?;
            VmId::parse(&rest.iter().next()?.to_string_lossy()).ok()
        }));
        ids
    }
}

/// Pids of qemu processes whose command line names a path under `dir`.
fn qemus_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = format!("{}/", dir.display());
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = raw.split(|&b| b == 0);
            let prog = args.next().map(String::from_utf8_lossy).unwrap_or_default();
            prog.contains("qemu-system")
                && args.any(|a| String::from_utf8_lossy(a).contains(&needle))
                && process::alive(pid)
        })
        .collect()
}

/// The VM id a qemu's command line names under `dirs`.
fn id_in_cmdline(pid: u32, dirs: &Path) -> Option<VmId> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = format!("{}/", dirs.display());
    raw.split(|&b| b == 0).find_map(|a| {
        let a = String::from_utf8_lossy(a);
        let at = a.find(&needle)?;
        let rest = &a[at + needle.len()..];
        let name: String = rest.chars().take_while(|&c| c != '/').collect();
        VmId::parse(&name).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_with_clear_errors() {
        assert_eq!(
            Forward::parse("2222:22/tcp").unwrap(),
            Forward {
                host: 2222,
                guest: 22
            }
        );
        assert_eq!(Forward::parse("80:8080").unwrap().guest, 8080);
        for bad in ["22", "0:22", "a:b", "1:2/udp", "70000:1"] {
            let e = Forward::parse(bad).unwrap_err().to_string();
            assert!(e.contains("HOST:GUEST/tcp"), "{bad}: {e}");
        }
    }

    #[test]
    fn ssh_keys_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pub");
        std::fs::write(&p, "ssh-ed25519 AAAAC3Nza user@host\n").unwrap();
        assert_eq!(read_ssh_key(&p).unwrap(), "ssh-ed25519 AAAAC3Nza user@host");
        std::fs::write(&p, "-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n").unwrap();
        assert!(read_ssh_key(&p).unwrap_err().to_string().contains(".pub"));
    }

    #[test]
    fn absent_vms_destroy_as_already_absent() {
        let d = tempfile::tempdir().unwrap();
        let run = StateDir::new(d.path().join("run"));
        let m = VmManager::new(volume::Manager::new(d.path().join("s"), run.clone()), run);
        let id = VmId::parse("gone").unwrap();
        assert!(m.destroy(&id, true, SWEEP_STOP).unwrap().already_absent);
        assert!(m.list().unwrap().is_empty());
        assert!(m.sweep().unwrap().is_empty());
        let e = m.stop(&id, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.contains("no VM gone"), "{e}");
    }
}
