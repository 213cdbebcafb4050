//! VM wiring for qemu: the accelerator probe, the qemu command line for a workload VM with
//! an encrypted data disk (through qemu's own LUKS driver or through sealvol's NBD export),
//! the secret pipe, and an ACPI stop over QMP with a SIGKILL fallback.
//!
//! Secrets never reach qemu's command line nor any file: the LUKS passphrase goes into a
//! pipe ([`SecretPipe`]) whose read end qemu inherits and names in a `secret` object
//! (`file=/dev/fd/N`); qemu reads it while creating its objects, before the guest runs, and
//! a crash at any point leaves no key on disk.
//!
//! The probe answers the question `/dev/kvm` cannot: on hosts with nested PVM, `/dev/kvm`
//! opens and `qemu -enable-kvm` starts, but a guest crawls and then dies with an emulation
//! failure. [`probe_accel`] boots a one-sector guest that writes to qemu's `isa-debug-exit`
//! port, under a hard timeout, and caches the verdict for this host boot.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::safe_dir::{FileId, SafeDir};
use crate::{process, Error, Result};

pub mod manager;

/// The qemu binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How a VM's CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// qemu's Tiny Code Generator (emulation; always works, slower).
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`, as qemu's `-accel` names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the user asked for: `--accel kvm|tcg|auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    /// Use KVM (no probe; the user knows).
    Kvm,
    /// Use TCG.
    Tcg,
    /// Probe KVM, fall back to TCG.
    Auto,
}

/// The probe's answer and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why, in a sentence for the user.
    pub reason: String,
    /// Whether the verdict came from this boot's cache.
    #[serde(skip)]
    pub cached: bool,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    verdict: Verdict,
}

/// The probe's cache in the VM state directory.
const CACHE: &str = "accel.json";

/// How much slower than TCG a KVM probe may be and still count as working KVM.
const KVM_SLACK: Duration = Duration::from_millis(1000);

/// Exit status qemu reports when the probe guest writes 0x10 to `isa-debug-exit`.
const PROBE_EXIT: i32 = (0x10 << 1) | 1;

/// A boot sector that writes 0x10 to port 0xf4 (`isa-debug-exit`) and halts:
/// `mov al, 0x10; out 0xf4, al; hlt; jmp $-1`, padded, with the 0x55AA signature.
fn probe_boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..7].copy_from_slice(&[0xB0, 0x10, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// This host boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boots the probe guest with `accel` under `timeout`, its boot sector written to a new
/// `accel-probe.img` in `dir`. `Ok(elapsed)` when it reached the exit port, `Err(reason)`
/// otherwise.
pub fn run_probe_guest(
    dir: &SafeDir,
    accel: Accel,
    timeout: Duration,
) -> Result<std::result::Result<Duration, String>> {
    let name = "accel-probe.img";
    let mut f = dir.replace_file(name, 0o600)?;
    f.write_all(&probe_boot_sector())
        .map_err(|e| Error::io(format!("writing {}", dir.join(name).display()), e))?;
    let sector = dir.verify(name, FileId::of_file(&f)?)?;
    drop(f);
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", accel.as_str(), "-machine", "pc", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-m", "16"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=ide,snapshot=on",
            sector.display()
        ))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let line = crate::cmd::describe(&cmd);
    tracing::info!(command = %line, "accelerator probe");
    let started = Instant::now();
    let mut child = spawn_qemu(&mut cmd)?;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for the probe guest", e))?
        {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let elapsed = started.elapsed();
            tracing::info!(status = %status, stderr = %err.trim(), ms = elapsed.as_millis() as u64, "probe finished");
            return Ok(if status.code() == Some(PROBE_EXIT) {
                Ok(elapsed)
            } else {
                Err(format!(
                    "the probe guest failed ({status}): {}",
                    err.lines().last().unwrap_or("no message").trim()
                ))
            });
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Err(format!(
                "the probe guest did not finish within {} ms (a guest that boots in milliseconds with working KVM)",
                timeout.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decides the accelerator. `Kvm`/`Tcg` are taken as given; `Auto` reuses this boot's
/// cached verdict from `dir` (`accel.json`, written atomically; a link there is not read), or boots the probe guest under TCG and then under KVM with a
/// budget of the TCG time plus one second (at most `timeout`), and falls back to TCG with
/// the reason (no `/dev/kvm`, KVM refused, the guest died, or KVM was far slower than
/// emulation: on these hosts a boot sector takes 2.7 s under KVM and 0.07 s under TCG).
///
/// # Errors
/// I/O errors on `dir`; qemu missing.
pub fn probe_accel(dir: &SafeDir, choice: AccelChoice, timeout: Duration) -> Result<Verdict> {
    let given = |accel, reason: &str| Verdict {
        accel,
        reason: reason.into(),
        cached: false,
    };
    match choice {
        AccelChoice::Kvm => return Ok(given(Accel::Kvm, "--accel kvm")),
        AccelChoice::Tcg => return Ok(given(Accel::Tcg, "--accel tcg")),
        AccelChoice::Auto => {}
    }
    let boot = boot_id();
    if let Some(v) = cached_verdict(dir, &boot) {
        return Ok(v);
    }
    let verdict = if !Path::new("/dev/kvm").exists() {
        given(
            Accel::Tcg,
            "no /dev/kvm on this host: using TCG (emulation)",
        )
    } else {
        // The same guest under TCG sets the yardstick: working KVM runs it in about the
        // same time; KVM that traps into an emulator (nested PVM) takes seconds, then
        // real guests die with "emulation failure".
        let tcg = run_probe_guest(dir, Accel::Tcg, timeout)?.unwrap_or(timeout);
        let budget = (tcg + KVM_SLACK).min(timeout);
        match run_probe_guest(dir, Accel::Kvm, budget)? {
            Ok(t) if t <= budget => given(
                Accel::Kvm,
                &format!(
                    "a KVM probe guest ran in {} ms (TCG: {} ms)",
                    t.as_millis(),
                    tcg.as_millis()
                ),
            ),
            Ok(t) => given(
                Accel::Tcg,
                &format!(
                    "/dev/kvm is present but KVM cannot run a guest here: the probe guest took {} ms under KVM against {} ms under TCG (KVM is being emulated, as under nested PVM); using TCG (emulation)",
                    t.as_millis(),
                    tcg.as_millis()
                ),
            ),
            Err(why) => given(
                Accel::Tcg,
                &format!("/dev/kvm is present but KVM cannot run a guest here ({why}); using TCG (emulation)"),
            ),
        }
    };
    cache_verdict(dir, &boot, &verdict)?;
    tracing::info!(accel = verdict.accel.as_str(), reason = %verdict.reason, "accelerator chosen");
    Ok(verdict)
}

/// The verdict cached in `dir` for host boot `boot`, if any (a link planted at the cache is
/// not read, and counts as none).
fn cached_verdict(dir: &SafeDir, boot: &str) -> Option<Verdict> {
    let text = match dir.read(CACHE) {
        Ok(t) => t?,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the accelerator cache");
            return None;
        }
    };
    let c = serde_json::from_slice::<Cached>(&text).ok()?;
    (c.boot_id == boot && !boot.is_empty()).then_some(Verdict {
        cached: true,
        ..c.verdict
    })
}

/// Caches `verdict` in `dir` for host boot `boot` (atomically; a link planted there is
/// replaced, never written through).
fn cache_verdict(dir: &SafeDir, boot: &str, verdict: &Verdict) -> Result<()> {
    let text = serde_json::to_string_pretty(&Cached {
        boot_id: boot.to_string(),
        verdict: verdict.clone(),
    })
    .expect("verdict serialises");
    dir.write_atomic(CACHE, text.as_bytes(), 0o600)
}

/// How the encrypted data disk reaches the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDisk {
    /// qemu's `luks` driver over the LUKS1 volume file; qemu reads the passphrase from
    /// `secret_file`, a [`SecretPipe`]'s `/dev/fd/N` (so the key never lands in a file).
    Luks {
        /// The LUKS1 volume (its data, when the header is detached).
        volume: PathBuf,
        /// The detached LUKS1 header, if any (qemu 9.0 and later: the driver's `header`).
        header: Option<PathBuf>,
        /// Where qemu reads the passphrase.
        secret_file: PathBuf,
    },
    /// sealvol's NBD export on a unix socket (the plaintext never touches the disk).
    Nbd {
        /// The export's socket.
        socket: PathBuf,
    },
}

/// A VM to start.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Direct kernel boot: kernel, initrd and command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// The root disk (a qcow2 overlay on the base image), if any.
    pub root_disk: Option<PathBuf>,
    /// The root disk served over NBD on this unix socket (an encrypted sealvol overlay),
    /// instead of `root_disk`.
    pub root_nbd: Option<PathBuf>,
    /// The cloud-init seed ISO, if any.
    pub seed_iso: Option<PathBuf>,
    /// The encrypted data disk, if any.
    pub data: Option<DataDisk>,
    /// QMP control socket.
    pub qmp_socket: PathBuf,
    /// Serial console log file.
    pub console_log: PathBuf,
    /// Host-to-guest TCP forwards (user networking), `(host_port, guest_port)`.
    pub forwards: Vec<(u16, u16)>,
}

impl VmSpec {
    /// qemu's arguments (without the program). Block devices are `-blockdev` JSON.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-accel".into(),
            self.accel.as_str().into(),
            "-machine".into(),
            "q35".into(),
            "-cpu".into(),
            if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            }
            .into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", self.console_log.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket.display()),
        ];
        if let Some((k, i, cmdline)) = &self.kernel {
            a.extend([
                "-kernel".into(),
                k.display().to_string(),
                "-initrd".into(),
                i.display().to_string(),
                "-append".into(),
                cmdline.clone(),
            ]);
        }
        let blockdev = |a: &mut Vec<String>, v: serde_json::Value, id: &str| {
            a.extend(["-blockdev".into(), v.to_string()]);
            a.extend([
                "-device".into(),
                format!("virtio-blk-pci,drive={id},id={id}-dev"),
            ]);
        };
        if let Some(socket) = &self.root_nbd {
            blockdev(
                &mut a,
                json!({"driver": "nbd", "node-name": "root", "export": "",
                       "server": {"type": "unix", "path": socket}}),
                "root",
            );
        } else if let Some(root) = &self.root_disk {
            blockdev(
                &mut a,
                json!({"driver": "qcow2", "node-name": "root",
                       "file": {"driver": "file", "filename": root}}),
                "root",
            );
        }
        match &self.data {
            Some(DataDisk::Luks {
                volume,
                header,
                secret_file,
            }) => {
                a.extend([
                    "-object".into(),
                    format!("secret,id=datakey,file={}", secret_file.display()),
                ]);
                let mut luks = json!({"driver": "luks", "node-name": "data",
                       "key-secret": "datakey",
                       "file": {"driver": "file", "filename": volume,
                                "cache": {"direct": false}}});
                if let Some(h) = header {
                    luks["header"] = json!({"driver": "file", "filename": h});
                }
                blockdev(&mut a, luks, "data");
            }
            Some(DataDisk::Nbd { socket }) => blockdev(
                &mut a,
                json!({"driver": "nbd", "node-name": "data", "export": "",
                       "server": {"type": "unix", "path": socket}}),
                "data",
            ),
            None => {}
        }
        if let Some(iso) = &self.seed_iso {
            a.extend([
                "-drive".into(),
                format!("file={},format=raw,if=virtio,readonly=on", iso.display()),
            ]);
        }
        if !self.forwards.is_empty() {
            let fwd: String = self
                .forwards
                .iter()
                .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                .collect();
            a.extend([
                "-netdev".into(),
                format!("user,id=net0{fwd}"),
                "-device".into(),
                "virtio-net-pci,netdev=net0".into(),
            ]);
        }
        a
    }
}

/// A secret for qemu held in a pipe, never in a file: qemu reads it from `/dev/fd/N`, the
/// pipe's read end, which the next spawned child inherits. The write end is closed once the
/// secret is in, so the reader sees it whole and then end of file. Spawn nothing but qemu
/// while it lives; dropping it closes this process's read end (and the bytes go with the
/// last reader).
#[derive(Debug)]
pub struct SecretPipe {
    read: std::os::fd::OwnedFd,
}

/// The most a [`SecretPipe`] takes: one atomic pipe write (`PIPE_BUF`).
pub const SECRET_PIPE_MAX: usize = 4096;

impl SecretPipe {
    /// Puts `secret` in a new pipe whose read end children inherit.
    ///
    /// # Errors
    /// A secret over [`SECRET_PIPE_MAX`] bytes; pipe creation or write errors.
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() > SECRET_PIPE_MAX {
            return Err(Error::Invalid(format!(
                "a secret for qemu is at most {SECRET_PIPE_MAX} bytes"
            )));
        }
        let io = |what: &str, e: rustix::io::Errno| Error::io(what.to_string(), e.into());
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io("cannot create a pipe for qemu's secret", e))?;
        let mut write = std::fs::File::from(write);
        write
            .write_all(secret)
            .map_err(|e| Error::io("cannot write qemu's secret to its pipe", e))?;
        drop(write);
        rustix::io::fcntl_setfd(&read, rustix::io::FdFlags::empty())
            .map_err(|e| io("cannot pass qemu's secret pipe on", e))?;
        Ok(SecretPipe { read })
    }

    /// The path a child opens to read the secret: `/dev/fd/N`.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/dev/fd/{}", self.read.as_raw_fd()))
    }
}

/// The first version of qemu whose `luks` driver reads a detached header (its `header`
/// option).
pub const QEMU_DETACHED_LUKS: (u32, u32) = (9, 0);

/// The (major, minor) version that `qemu --version` prints on its first line
/// (`QEMU emulator version 10.0.2 (Debian ...)`).
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let v = text.lines().next()?.split("version ").nth(1)?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The installed qemu's (major, minor) version.
///
/// # Errors
/// qemu missing, or a version line that does not parse.
pub fn qemu_version() -> Result<(u32, u32)> {
    let out = crate::cmd::run(Command::new(QEMU).arg("--version"))?;
    parse_qemu_version(&out).ok_or_else(|| {
        Error::Invalid(format!(
            "cannot tell the version of {QEMU} from {:?}",
            out.lines().next().unwrap_or("")
        ))
    })
}

/// Spawns the qemu `cmd` with no stdin or stdout and its stderr piped (for the error a
/// failed start reports).
fn spawn_qemu(cmd: &mut Command) -> Result<std::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: QEMU.into(),
            package: "qemu-system-x86",
            source,
        })
}

/// Starts qemu for `spec` in the background; returns its pid once the QMP socket answers
/// (qemu has then created its objects and read its secret, whose pipe the caller may now
/// close). The caller makes sure nothing is at `spec.qmp_socket` (qemu binds it).
///
/// # Errors
/// qemu missing, or qemu exiting or not answering within 10 s (with its stderr).
pub fn start(spec: &VmSpec) -> Result<std::process::Child> {
    let mut cmd = Command::new(QEMU);
    cmd.args(spec.args());
    let line = crate::cmd::describe(&cmd);
    tracing::info!(command = %line, "starting VM");
    // Its own process group: a Ctrl-C meant for the caller does not reach the guest.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = spawn_qemu(&mut cmd)?;
    let started = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for qemu", e))?
        {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(Error::Command {
                command: line,
                status: status.to_string(),
                stderr: err.trim().to_string(),
            });
        }
        if UnixStream::connect(&spec.qmp_socket).is_ok() {
            return Ok(child);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Invalid(format!(
                "qemu did not open its QMP socket {} within 10 s",
                spec.qmp_socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one QMP command (after the capabilities handshake); returns the reply.
///
/// # Errors
/// Socket errors, or a QMP error reply.
pub fn qmp(socket: &Path, command: &str) -> Result<serde_json::Value> {
    let io = |e| Error::io(format!("talking QMP on {}", socket.display()), e);
    let stream = UnixStream::connect(socket).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut w = stream.try_clone().map_err(io)?;
    let mut r = BufReader::new(stream);
    let reply = |r: &mut BufReader<UnixStream>| -> Result<serde_json::Value> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(io)? == 0 {
                return Err(Error::Invalid("QMP connection closed".into()));
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| Error::Invalid(format!("QMP sent invalid JSON: {e}")))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    };
    reply(&mut r)?; // greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{}", json!({ "execute": cmd })).map_err(io)?;
        let v = reply(&mut r)?;
        if let Some(e) = v.get("error") {
            return Err(Error::Invalid(format!("QMP {cmd} failed: {e}")));
        }
        if cmd == command {
            return Ok(v);
        }
    }
    unreachable!("the loop returns on the last command")
}

/// How a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running.
    NotRunning,
    /// The guest powered off after the ACPI request.
    Acpi,
    /// It did not within the wait and was killed.
    Killed,
}

/// Stops qemu `pid`: ACPI power button over QMP, then SIGKILL after `wait`.
pub fn stop(pid: u32, qmp_socket: &Path, wait: Duration) -> Stopped {
    if !process::alive(pid) {
        return Stopped::NotRunning;
    }
    if let Err(e) = qmp(qmp_socket, "system_powerdown") {
        tracing::warn!(error = %e, "ACPI powerdown request failed");
    }
    if process::wait_gone(pid, wait) {
        return Stopped::Acpi;
    }
    tracing::warn!(pid, "guest ignored ACPI powerdown; killing qemu");
    process::kill(pid);
    process::wait_gone(pid, Duration::from_secs(5));
    Stopped::Killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_carry_no_secret_and_name_the_secret_file() {
        let spec = VmSpec {
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 256,
            kernel: None,
            root_disk: Some("/vm/root.qcow2".into()),
            root_nbd: None,
            seed_iso: Some("/vm/seed.iso".into()),
            data: Some(DataDisk::Luks {
                volume: "/vm/data.luks".into(),
                header: Some("/vm/data.hdr".into()),
                secret_file: "/run/vm/key".into(),
            }),
            qmp_socket: "/vm/qmp".into(),
            console_log: "/vm/console.log".into(),
            forwards: vec![(2222, 22)],
        };
        let a = spec.args().join(" ");
        assert!(a.contains("secret,id=datakey,file=/run/vm/key"), "{a}");
        assert!(a.contains("\"driver\":\"luks\""), "{a}");
        assert!(
            a.contains("\"header\":{\"driver\":\"file\",\"filename\":\"/vm/data.hdr\"}"),
            "{a}"
        );
        assert!(a.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{a}");
        assert!(!a.contains("data="), "{a}");
    }

    #[test]
    fn qemu_versions_parse_from_their_first_line() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some((10, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Some((7, 2))
        );
        assert_eq!(parse_qemu_version("qemu-img version 9.1.0"), Some((9, 1)));
        assert_eq!(parse_qemu_version("something else"), None);
        assert!((7, 2) < QEMU_DETACHED_LUKS && (10, 0) >= QEMU_DETACHED_LUKS);
    }

    #[test]
    fn a_secret_pipe_hands_its_bytes_to_a_child_and_nothing_else() {
        let secret = b"a passphrase for qemu";
        let pipe = SecretPipe::new(secret).unwrap();
        let path = pipe.path();
        assert!(path.to_str().unwrap().starts_with("/dev/fd/"), "{path:?}");
        // A child reads it whole through the inherited descriptor, as qemu's secret object does.
        let out = Command::new("cat").arg(&path).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, secret);
        drop(pipe);
        assert!(SecretPipe::new(&[b'x'; SECRET_PIPE_MAX + 1]).is_err());
        assert!(SecretPipe::new(&[b'x'; SECRET_PIPE_MAX]).is_ok());
    }

    #[test]
    fn the_accelerator_cache_never_goes_through_a_planted_link() {
        let t = tempfile::tempdir().unwrap();
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"canary").unwrap();
        let dir = SafeDir::open_root(&t.path().join("vm")).unwrap();
        std::os::unix::fs::symlink(&canary, dir.join(CACHE)).unwrap();
        std::fs::hard_link(&canary, dir.join(".accel.json.tmp")).unwrap();
        assert!(cached_verdict(&dir, "boot-1").is_none());
        let v = Verdict {
            accel: Accel::Tcg,
            reason: "test".into(),
            cached: false,
        };
        cache_verdict(&dir, "boot-1", &v).unwrap();
        assert_eq!(std::fs::read(&canary).unwrap(), b"canary");
        assert!(!std::fs::symlink_metadata(dir.join(CACHE))
            .unwrap()
            .file_type()
            .is_symlink());
        let back = cached_verdict(&dir, "boot-1").unwrap();
        assert!(back.cached && back.accel == Accel::Tcg);
        assert!(cached_verdict(&dir, "boot-2").is_none());
    }

    #[test]
    fn probe_sector_is_bootable() {
        let s = probe_boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
