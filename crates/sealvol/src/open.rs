//! `sealvol open`, `close`, `serve nbd`: putting a volume to use without device-mapper.
//!
//! `open` checks everything it can (paths, mount point, not already open, the key) before it
//! starts anything, then re-executes this binary as a hidden `__export` process that gets the
//! volume key on an inherited pipe (its stdin: never argv, never the environment). That
//! process serves the decrypted volume as a FUSE file, attaches a loop device, makes the file
//! system if asked, mounts it, records what it did in the state directory, and reports on
//! its stdout; `open` relays the report and returns. On SIGTERM or SIGINT the export
//! unmounts, detaches and stops; `close` does the same from outside.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use sealvol_block::{BlockDevice, CryptDevice, FileDevice, FileOptions};
use sealvol_crypto::SecretBytes;
use sealvol_export::fuse::{FileExport, FuseOptions};
use sealvol_export::nbd::tls::TlsCreds;
use sealvol_export::nbd::{NbdOptions, Server};
use sealvol_host::lock::VolumeLock;
use sealvol_host::loopdev::{self, LoopOptions};
use sealvol_host::state::{volume_id, Entry, StateDir};
use sealvol_host::volume::served::{self, Busy};
use sealvol_host::{mount, process};
use sealvol_luks::DataSegment;
use serde_json::{json, Value};

use crate::cli::{parse_size, KeyArgs, VolumeArgs};
use crate::commands::{open_volume, refuse_read_only, unlock, unlock_with};
use crate::keys::KeySource;
use crate::output::Output;

/// How long `close` waits for an export to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Empty directory to mount the volume's file system on.
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    /// Make a new file system of this type first (ext4, ext3, ext2, xfs, btrfs); it
    /// replaces whatever the volume held.
    #[arg(long, value_name = "TYPE")]
    pub mkfs: Option<String>,
    /// Open and mount read-only: nothing is written to the volume.
    #[arg(long, conflicts_with = "mkfs")]
    pub read_only: bool,
    /// Serve in this process until SIGTERM or SIGINT instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    /// The mount point or the volume file given to `open` (or `serve nbd`).
    #[arg(value_name = "DIR|VOLUME")]
    pub target: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Serve the decrypted volume over NBD (qemu: `nbd+unix:///?socket=PATH`, or
    /// `nbd://127.0.0.1:PORT` with TLS) until SIGTERM, SIGINT or `sealvol close`.
    ///
    /// Nothing a client does can hold the server: at most --shared clients at once, each with
    /// --handshake-limit seconds to negotiate and --send-timeout seconds to read a reply, and
    /// at most --max-in-flight bytes of requests held across all of them. On SIGTERM, SIGINT
    /// or `sealvol close` every connection ends, the volume is flushed and the socket file
    /// removed, within a second or two.
    Nbd(ServeNbdArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("endpoint").required(true).multiple(false))]
pub struct ServeNbdArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Listen on this unix socket. It is made with mode 0600 whatever the umask, so only its
    /// owner (root) can connect. A stale socket there is replaced; any other file, or a
    /// symlink, is refused.
    #[arg(long, value_name = "PATH", group = "endpoint")]
    pub socket: Option<PathBuf>,
    /// Listen on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT; port 0 picks one).
    /// Every local user can reach a TCP port, so this needs --tls-creds (or, knowingly,
    /// --insecure-plaintext).
    #[arg(long, value_name = "ADDR", group = "endpoint")]
    pub listen: Option<SocketAddr>,
    /// Speak only TLS, with the x509 credentials in DIR, laid out as for qemu's
    /// `--object tls-creds-x509,dir=DIR,endpoint=server`: ca-cert.pem (the CA that signs the
    /// client certificates), server-cert.pem and server-key.pem. A client must present a
    /// certificate signed by that CA; with qemu: `--object
    /// tls-creds-x509,id=tls0,dir=CLIENTDIR,endpoint=client` (CLIENTDIR holding ca-cert.pem,
    /// client-cert.pem, client-key.pem) and `tls-creds=tls0` in the NBD options. x509 only:
    /// there is no TLS-PSK. Works with --socket too.
    #[arg(long, value_name = "DIR", visible_alias = "tls-certificates")]
    pub tls_creds: Option<PathBuf>,
    /// Serve --listen without TLS: every local user can then read and write the volume's
    /// plaintext. Only for a machine whose every user you trust.
    #[arg(long, requires = "listen", conflicts_with = "tls_creds")]
    pub insecure_plaintext: bool,
    /// Serve at most NUM clients at once (as qemu-nbd's --shared); one more is refused
    /// (closed at once) and logged.
    #[arg(
        long = "shared",
        visible_alias = "max-connections",
        value_name = "NUM",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub shared: u32,
    /// Drop a client that has not finished the handshake (TLS included) after SECONDS, as
    /// qemu-nbd's --handshake-limit: a client that connects and says nothing, or sends its
    /// options a byte at a time, holds a slot no longer.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub handshake_limit: u64,
    /// End a connection whose client has not read a reply within SECONDS, or stopped
    /// sending a request halfway (a write's data) for that long: such a client must not hold
    /// the server's threads and memory. Idle time between requests is not limited.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub send_timeout: u64,
    /// Hold at most SIZE bytes (K, M, G) for requests in flight, across all clients: write
    /// data received and not yet written, read data not yet sent. Clients wait beyond it; a
    /// single request larger than SIZE (NBD allows 32 MiB) still runs, alone.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub max_in_flight: u64,
    /// Export name (default: the empty name, which qemu asks for).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// The LUKS volume file (the data file when --header is given).
    #[arg(value_name = "VOLUME")]
    pub volume_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct InternalArgs {
    #[arg(long)]
    pub header: Option<PathBuf>,
    #[arg(long)]
    pub mount: PathBuf,
    #[arg(long)]
    pub mkfs: Option<String>,
    #[arg(long)]
    pub read_only: bool,
    #[arg(long)]
    pub verity_hash: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub verity_hash_offset: u64,
    #[arg(long)]
    pub verity_root: Option<String>,
    pub volume_path: PathBuf,
}

/// What an export serves: everything but the key.
struct Plan {
    volume: PathBuf,
    header: Option<PathBuf>,
    id: String,
    source: Source,
    read_only: bool,
}

/// How the plaintext is made from the volume file.
enum Source {
    /// A LUKS data segment, decrypted with the volume key.
    Luks(DataSegment),
    /// A dm-verity image: verified reads against a trusted root hash.
    Verity {
        hash: PathBuf,
        hash_offset: u64,
        root: Vec<u8>,
    },
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| {
        format!(
            "the {what} {} does not exist; check the path",
            path.display()
        )
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks the volume and unlocks it; returns the plan and the volume key. Starts nothing.
fn prepare(
    volume_path: &Path,
    volume_args: &VolumeArgs,
    key: &KeyArgs,
    read_only: bool,
    state: &StateDir,
) -> Result<(Plan, SecretBytes)> {
    let header = volume_args.header.as_deref();
    prepare_with(volume_path, header, KeyIn::Args(key), read_only, state)
}

/// Where `prepare` gets the key: the command line's key options, or bytes read already.
enum KeyIn<'a> {
    Args(&'a KeyArgs),
    Bytes(&'a SecretBytes),
}

fn prepare_with(
    volume_path: &Path,
    header: Option<&Path>,
    key: KeyIn<'_>,
    read_only: bool,
    state: &StateDir,
) -> Result<(Plan, SecretBytes)> {
    let volume = canonical(volume_path, "volume")?;
    let header = match header {
        Some(h) => Some(canonical(h, "header file")?),
        None => None,
    };
    let id = volume_id(&volume)?;
    // Refuse a volume that is served already before asking for the key.
    drop(VolumeLock::acquire(state, &id, &volume)?);
    let args = VolumeArgs {
        header: header.clone(),
    };
    let mut vol = open_volume(&volume, &args, false)?;
    if !read_only {
        refuse_read_only(&vol).context("open it with --read-only")?;
    }
    let segment = crate::commands::data_segment(&vol, header.is_some())?;
    let len = std::fs::metadata(&volume)?.len();
    segment
        .data_len(len)
        .context("the data segment does not fit the volume file")?;
    let unlocked = match key {
        KeyIn::Args(a) => unlock(&mut vol, &a.source(), None)?,
        KeyIn::Bytes(k) => unlock_with(&mut vol, k.expose(), None)?,
    };
    Ok((
        Plan {
            volume,
            header,
            id,
            source: Source::Luks(segment),
            read_only,
        },
        unlocked.volume_key,
    ))
}

/// The decrypted volume, holding the key only inside its ciphers; or the verified image.
fn device(plan: &Plan, key: Option<SecretBytes>) -> Result<Arc<dyn BlockDevice>> {
    match &plan.source {
        Source::Luks(segment) => {
            let key = key.context("no volume key for a LUKS volume")?;
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
    }
}

/// A verified view of `image` whose tree (with superblock) is on `hash` at `offset`.
fn verity_device(
    image: &Path,
    hash: &Path,
    offset: u64,
    root: &[u8],
) -> Result<Arc<dyn BlockDevice>> {
    let data = std::fs::File::open(image)
        .with_context(|| format!("cannot open the image {}", image.display()))?;
    let mut hash_file = std::fs::File::open(hash).with_context(|| {
        format!(
            "the hash file {} does not exist; check the path",
            hash.display()
        )
    })?;
    let sb = sealvol_verity::read_superblock(&mut hash_file, offset).with_context(|| {
        format!(
            "cannot read the verity superblock of {} at offset {offset}",
            hash.display()
        )
    })?;
    let reader = sealvol_verity::VerityReader::new(
        data,
        hash_file,
        sb.params,
        sealvol_verity::HashArea::with_superblock(offset),
        root,
    )?;
    Ok(Arc::new(sealvol_block::VerityDevice::new(reader)))
}

// ---------------------------------------------------------------------------------------------
// open

pub fn open(a: OpenArgs, out: &Output) -> Result<()> {
    let state = StateDir::from_env();
    let mount_dir = canonical(&a.mount, "mount point")?;
    mount::check_mount_point(&mount_dir)?;
    if let Some(t) = &a.mkfs {
        let tool = format!("mkfs.{t}");
        if !t.chars().all(|c| c.is_ascii_alphanumeric()) || which(&tool).is_none() {
            bail!("--mkfs {t}: there is no {tool} on this host; use ext4 (e2fsprogs) or install the tool");
        }
    }
    let (plan, key) = prepare(&a.volume_path, &a.volume, &a.key, a.read_only, &state)?;
    start(
        &state,
        plan,
        Some(key),
        &mount_dir,
        a.mkfs.as_deref(),
        a.foreground,
        out,
    )
}

/// Runs the export of `plan` in this process (`foreground`) or in a background `__export`
/// process that gets the key on its stdin, and reports once the file system is mounted.
fn start(
    state: &StateDir,
    plan: Plan,
    key: Option<SecretBytes>,
    mount_dir: &Path,
    mkfs: Option<&str>,
    foreground: bool,
    out: &Output,
) -> Result<()> {
    if foreground {
        return run_export(state, plan, key, mount_dir, mkfs, &mut |r| report(out, r));
    }
    let reply = spawn_export(state, plan, key, mount_dir, mkfs)?;
    print_opened(out, &reply)
}

/// Opens the LUKS volume `image` (header in `header`, when detached) with `key` and mounts
/// it on `mount_dir` through a background export (after `mkfs` of that type, when given).
/// Returns the export's report. A wrong key is a [`crate::CleanNo`]; nothing is started then.
pub(crate) fn open_with_key(
    state: &StateDir,
    image: &Path,
    header: Option<&Path>,
    key: &SecretBytes,
    mount_dir: &Path,
    mkfs: Option<&str>,
) -> Result<Value> {
    let mount_dir = canonical(mount_dir, "mount point")?;
    mount::check_mount_point(&mount_dir)?;
    let (plan, volume_key) = prepare_with(image, header, KeyIn::Bytes(key), false, state)?;
    spawn_export(state, plan, Some(volume_key), &mount_dir, mkfs)
}

/// Starts the background `__export` process of `plan`, hands it the key on its stdin, and
/// returns its report once the file system is mounted.
fn spawn_export(
    state: &StateDir,
    plan: Plan,
    key: Option<SecretBytes>,
    mount_dir: &Path,
    mkfs: Option<&str>,
) -> Result<Value> {
    // A new log, made through the runtime directory (a link planted there is unlinked, never
    // written through); read back through its descriptor when the export fails.
    let (log, log_file) = state
        .create_log(&plan.id)
        .with_context(|| format!("cannot create the export log of {}", plan.volume.display()))?;
    let mut log_reader = log_file
        .try_clone()
        .with_context(|| format!("cannot read back {}", log.display()))?;
    let exe =
        std::env::current_exe().context("cannot find the sealvol binary to start the export")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-v").arg("__export").arg("--mount").arg(mount_dir);
    if let Some(h) = &plan.header {
        cmd.arg("--header").arg(h);
    }
    if let Some(t) = mkfs {
        cmd.arg("--mkfs").arg(t);
    }
    if plan.read_only {
        cmd.arg("--read-only");
    }
    if let Source::Verity {
        hash,
        hash_offset,
        root,
    } = &plan.source
    {
        cmd.arg("--verity-hash")
            .arg(hash)
            .arg("--verity-hash-offset")
            .arg(hash_offset.to_string())
            .arg("--verity-root")
            .arg(hex::encode(root));
    }
    cmd.arg(&plan.volume)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    let mut child = cmd.spawn().context("cannot start the export process")?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        if let Some(key) = &key {
            stdin
                .write_all(key.expose())
                .context("cannot hand the key to the export process")?;
        }
        // Dropping closes the pipe: the export reads to end of file.
    }
    drop(key);
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("the export process said nothing")?;
    let reply: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        let _ = child.wait();
        let mut tail = String::new();
        {
            use std::io::{Read, Seek};
            let _ = log_reader
                .rewind()
                .and_then(|()| log_reader.read_to_string(&mut tail));
        }
        json!({"ok": false, "error": format!("the export process stopped: {}", tail.trim())})
    });
    if reply["ok"] == Value::Bool(true) {
        Ok(reply)
    } else {
        let _ = child.wait();
        let msg = reply["error"]
            .as_str()
            .unwrap_or("the export failed")
            .to_string();
        Err(anyhow!(msg))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn print_opened(out: &Output, v: &Value) -> Result<()> {
    let human = format!(
        "Opened {} on {} (loop device {}, export process {}).",
        v["volume"].as_str().unwrap_or("?"),
        v["mount_point"].as_str().unwrap_or("?"),
        v["loop_device"].as_str().unwrap_or("?"),
        v["pid"],
    );
    out.result(&human, v.clone())?;
    Ok(())
}

fn report(out: &Output, r: Result<&Value>) -> Result<()> {
    match r {
        Ok(v) => print_opened(out, v),
        Err(_) => Ok(()), // returned as the command's error
    }
}

/// The export process of a background `open`.
pub fn internal_export(a: InternalArgs, _out: &Output) -> Result<()> {
    // Leave the caller's session: its terminal's signals are not ours.
    let _ = rustix::process::setsid();
    let state = StateDir::from_env();
    let key = match a.verity_hash {
        Some(_) => None,
        None => Some(
            KeySource::Stdin
                .read()
                .context("reading the volume key from the pipe")?,
        ),
    };
    let mut say = |r: Result<&Value>| -> Result<()> {
        let v = match r {
            Ok(v) => v.clone(),
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{v}")?;
        stdout.flush()?;
        Ok(())
    };
    let plan = (|| -> Result<Plan> {
        let volume = canonical(&a.volume_path, "volume")?;
        let args = VolumeArgs {
            header: a.header.clone(),
        };
        let source = match (&a.verity_hash, &a.verity_root) {
            (Some(hash), Some(root)) => Source::Verity {
                hash: hash.clone(),
                hash_offset: a.verity_hash_offset,
                root: hex::decode(root).context("--verity-root is not hex")?,
            },
            _ => Source::Luks(crate::commands::data_segment(
                &open_volume(&volume, &args, false)?,
                args.header.is_some(),
            )?),
        };
        Ok(Plan {
            id: volume_id(&volume)?,
            source,
            header: a.header.clone(),
            volume,
            read_only: a.read_only,
        })
    })();
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let _ = say(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    let result = run_export(&state, plan, key, &a.mount, a.mkfs.as_deref(), &mut say);
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "export ended with an error");
    }
    result
}

/// What is set up so far, torn down in reverse.
struct Stack<'a> {
    state: &'a StateDir,
    id: String,
    export: Option<FileExport>,
    loop_dev: Option<PathBuf>,
    fuse_file: PathBuf,
    mounted: Option<PathBuf>,
}

impl Stack<'_> {
    /// Unmounts the file system, detaches the loop device, stops the FUSE export. A busy
    /// file system is left as it was (and the error returned).
    fn teardown(&mut self, lazy: bool) -> Result<()> {
        if let Some(dir) = &self.mounted {
            mount::unmount_nofollow(dir, lazy).with_context(|| {
                format!(
                    "cannot unmount {}: close the files open under it (`fuser -vm {}` lists them) and try again",
                    dir.display(),
                    dir.display()
                )
            })?;
            self.mounted = None;
        }
        if let Some(dev) = &self.loop_dev {
            loopdev::detach(dev, Some(&self.fuse_file))?;
            self.loop_dev = None;
        }
        if let Some(export) = self.export.take() {
            export.unmount()?;
        }
        self.state.remove(&self.id);
        Ok(())
    }
}

/// Serves `plan` as FUSE → loop → mount until a signal, calling `ready` once with the
/// result of the set-up (the JSON record, or the error).
fn run_export(
    state: &StateDir,
    plan: Plan,
    key: Option<SecretBytes>,
    mount_dir: &Path,
    mkfs: Option<&str>,
    ready: &mut dyn FnMut(Result<&Value>) -> Result<()>,
) -> Result<()> {
    let lock = match VolumeLock::acquire(state, &plan.id, &plan.volume) {
        Ok(l) => l,
        Err(e) => {
            let e = anyhow!(e);
            let _ = ready(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    process::set_io_flusher();
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("cannot install signal handlers")?;
    }
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    let fuse_file = state.fuse_file(&plan.id);
    let mut stack = Stack {
        state,
        id: plan.id.clone(),
        export: None,
        loop_dev: None,
        fuse_file: fuse_file.clone(),
        mounted: None,
    };
    let set_up = (|| -> Result<Value> {
        let dev = device(&plan, key)?;
        let sector = dev.block_size();
        let size = dev.size();
        // The FUSE file, made anew through the runtime directory and checked to still be
        // that file right before the FUSE mount takes its path. A dead FUSE mount left there
        // by an export that died (we hold the volume's lock, so no live export serves it)
        // is detached first; a planted link is unlinked, never followed.
        let fuse_file = state
            .make_fuse_file(&plan.id)
            .with_context(|| format!("cannot make the FUSE file {}", fuse_file.display()))?;
        let fsname = format!("sealvol:{}", plan.volume.display());
        stack.export = Some(FileExport::mount(
            dev,
            &fuse_file,
            &FuseOptions {
                threads: 4,
                read_only: plan.read_only,
                fsname,
            },
        )?);
        let loop_dev = loopdev::attach(
            &fuse_file,
            &LoopOptions {
                read_only: plan.read_only,
                sector_size: Some(sector),
                // The file system above already caches; a second page cache on the FUSE file
                // only costs copies. Measured (bench/mount.sh): write 601 -> 858 MiB/s.
                direct_io: true,
            },
        )?;
        stack.loop_dev = Some(loop_dev.clone());
        if let Some(t) = mkfs {
            mount::mkfs(&loop_dev, t)?;
        }
        mount::mount(&loop_dev, mount_dir, None, plan.read_only).with_context(|| {
            if mkfs.is_none() {
                format!(
                    "cannot mount the volume's file system on {}; a new volume needs --mkfs ext4",
                    mount_dir.display()
                )
            } else {
                format!("cannot mount {}", mount_dir.display())
            }
        })?;
        stack.mounted = Some(mount_dir.to_path_buf());
        sealvol_host::volume::crash_point("export:mounted");
        let entry = Entry {
            id: plan.id.clone(),
            kind: match plan.source {
                Source::Luks(_) => "mount".into(),
                Source::Verity { .. } => "verity".into(),
            },
            volume: plan.volume.clone(),
            header: plan.header.clone(),
            pid: process::this_pid(),
            read_only: plan.read_only,
            fuse_file: Some(fuse_file.clone()),
            loop_device: Some(loop_dev.clone()),
            mount_point: Some(mount_dir.to_path_buf()),
            nbd: None,
            started: now(),
        };
        state.save(&entry)?;
        Ok(json!({
            "ok": true,
            "volume": plan.volume,
            "mount_point": mount_dir,
            "loop_device": loop_dev,
            "fuse_file": fuse_file,
            "pid": process::this_pid(),
            "read_only": plan.read_only,
            "size": size,
            "mkfs": mkfs,
        }))
    })();
    let record = match set_up {
        Ok(v) => v,
        Err(e) => {
            if let Err(t) = stack.teardown(true) {
                tracing::error!(error = %format!("{t:#}"), "rolling back the set-up failed");
            }
            let _ = ready(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    ready(Ok(&record))?;
    tracing::info!(volume = %plan.volume.display(), mount = %mount_dir.display(), "serving");

    // Serve until told to stop; a busy file system keeps us serving.
    let mut code = Ok(());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let alive = stack.export.as_ref().is_some_and(FileExport::is_running);
        if !alive {
            tracing::error!("the FUSE export ended under us; tearing down");
            let _ = stack.teardown(true);
            code = Err(anyhow!(
                "the FUSE export of {} ended unexpectedly",
                plan.volume.display()
            ));
            break;
        }
        if term.swap(false, Ordering::SeqCst) {
            tracing::info!("stopping");
            match stack.teardown(false) {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot stop yet; still serving")
                }
            }
        }
    }
    drop(lock);
    tracing::info!("export stopped; key wiped");
    code
}

// ---------------------------------------------------------------------------------------------
// close

pub fn close(a: CloseArgs, out: &Output) -> Result<()> {
    let state = StateDir::from_env();
    let target = std::fs::canonicalize(&a.target).unwrap_or_else(|_| a.target.clone());
    let target_id = volume_id(&target).ok();
    let entry = state.list().into_iter().find(|e| {
        e.mount_point.as_deref() == Some(&target)
            || e.volume == target
            || target_id.as_deref() == Some(&e.id)
    });
    let Some(entry) = entry else {
        if mount::is_mountpoint(&target) {
            bail!(
                "{} is mounted, but not by sealvol (no record in {}); unmount it with umount",
                target.display(),
                state.root().display()
            );
        }
        out.result(
            &format!("{} is not open; nothing to do.", a.target.display()),
            json!({"closed": false, "target": target}),
        )?;
        return Ok(());
    };

    let stopped = served::stop(&state, &entry, Busy::Fail, STOP_TIMEOUT)?;
    let export_alive = stopped.export_was_running;
    let where_ = entry
        .mount_point
        .as_ref()
        .map(|m| format!(" (was mounted on {})", m.display()))
        .or_else(|| entry.nbd.as_ref().map(|n| format!(" (was served at {n})")))
        .unwrap_or_default();
    out.result(
        &format!("Closed {}{where_}.", entry.volume.display()),
        json!({
            "closed": true,
            "volume": entry.volume,
            "mount_point": entry.mount_point,
            "loop_device": entry.loop_device,
            "pid": entry.pid,
            "export_was_running": export_alive,
        }),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// serve nbd

pub fn serve(c: ServeCommand, out: &Output) -> Result<()> {
    match c {
        ServeCommand::Nbd(a) => serve_nbd(a, out),
    }
}

fn serve_nbd(a: ServeNbdArgs, out: &Output) -> Result<()> {
    let state = StateDir::from_env();
    // Everything that can be refused is refused before the key is asked for.
    if a.listen.is_some() && a.tls_creds.is_none() && !a.insecure_plaintext {
        bail!(
            "--listen without TLS would serve the volume's plaintext to every local user; \
             give --tls-creds DIR (ca-cert.pem, server-cert.pem, server-key.pem, as for qemu's \
             tls-creds-x509; clients need a certificate signed by ca-cert.pem), or use \
             --socket PATH (mode 0600), or accept the risk with --insecure-plaintext"
        );
    }
    let tls = match &a.tls_creds {
        Some(dir) => Some(TlsCreds::from_dir(dir)?),
        None => None,
    };
    let (plan, key) = prepare(&a.volume_path, &a.volume, &a.key, a.read_only, &state)?;
    let lock = VolumeLock::acquire(&state, &plan.id, &plan.volume)?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("cannot install signal handlers")?;
    }
    let dev = device(&plan, Some(key))?;
    let opts = NbdOptions {
        read_only: plan.read_only,
        name: a.name.clone(),
        max_connections: a.shared as usize,
        handshake_timeout: Duration::from_secs(a.handshake_limit),
        send_timeout: Duration::from_secs(a.send_timeout),
        max_in_flight: usize::try_from(a.max_in_flight).unwrap_or(usize::MAX),
        tls,
        allow_plaintext_tcp: a.insecure_plaintext,
        ..NbdOptions::default()
    };
    let server = match (&a.socket, a.listen) {
        (Some(p), _) => Server::bind_unix(dev, p, opts)?,
        (None, Some(addr)) => Server::bind_tcp(dev, addr, opts)?,
        (None, None) => bail!("give --socket PATH or --listen 127.0.0.1:PORT"),
    };
    let endpoint = server.endpoint();
    let uri = match &a.socket {
        Some(p) => format!("nbd+unix:///{}?socket={}", a.name, p.display()),
        None => format!("nbd://{endpoint}/{}", a.name),
    };
    state.save(&Entry {
        id: plan.id.clone(),
        kind: "nbd".into(),
        volume: plan.volume.clone(),
        header: plan.header.clone(),
        pid: process::this_pid(),
        read_only: plan.read_only,
        fuse_file: None,
        loop_device: None,
        mount_point: None,
        nbd: Some(endpoint.clone()),
        started: now(),
    })?;
    out.result(
        &format!(
            "Serving {} over NBD at {endpoint} ({uri}{}); stop with SIGTERM, Ctrl-C or `sealvol close`.",
            plan.volume.display(),
            if a.tls_creds.is_some() {
                ", TLS only, with a client certificate"
            } else {
                ""
            }
        ),
        json!({"volume": plan.volume, "endpoint": endpoint, "uri": uri, "tls": a.tls_creds.is_some(), "pid": process::this_pid(), "read_only": plan.read_only}),
    )?;
    let result = server.serve(&term);
    state.remove(&plan.id);
    drop(server); // the device and its key
    drop(lock);
    result.context("the NBD server failed")
}

// ---------------------------------------------------------------------------------------------
// verity open

#[derive(Debug, Args)]
pub struct VerityOpenArgs {
    /// The image (squashfs, erofs, ext4 ...) the hash tree protects.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The hash device, with its superblock (IMAGE itself when the tree is appended).
    #[arg(long = "hash", value_name = "FILE")]
    pub hash_file: PathBuf,
    /// Byte offset of the superblock and tree in the hash device.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
    /// The trusted root hash (hex).
    #[arg(long, value_name = "HEX")]
    pub root: String,
    /// Detached ed25519 signature over the root hash and parameters (`verity sign`).
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// The publisher's public key (PEM or raw 32 bytes).
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,
    /// Empty directory to mount the image on (read-only).
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    /// Serve in this process until SIGTERM or SIGINT instead of in the background.
    #[arg(long)]
    pub foreground: bool,
}

/// `sealvol verity open`: checks the signature and the root hash, then mounts the image
/// read-only through verified reads (FUSE → loop → mount). A corrupt block fails the reads
/// that touch it with EIO.
pub fn verity_open(a: VerityOpenArgs, out: &Output) -> Result<()> {
    let state = StateDir::from_env();
    let mount_dir = canonical(&a.mount, "mount point")?;
    mount::check_mount_point(&mount_dir)?;
    let image = canonical(&a.image, "image")?;
    let hash = canonical(&a.hash_file, "hash file")?;
    let id = volume_id(&image)?;
    drop(VolumeLock::acquire(&state, &id, &image)?);
    let mut hash_file = std::fs::File::open(&hash)?;
    let sb = sealvol_verity::read_superblock(&mut hash_file, a.hash_offset).with_context(|| {
        format!(
            "cannot read the verity superblock of {} at offset {}",
            hash.display(),
            a.hash_offset
        )
    })?;
    let root = sealvol_verity::parse_root_hash(&sb.params, &a.root)?;
    if let (Some(sig_path), Some(key_path)) = (&a.signature, &a.public_key) {
        let key_bytes = std::fs::read(key_path)
            .with_context(|| format!("cannot read the public key {}", key_path.display()))?;
        let key = sealvol_verity::VerifyingKey::from_key_file(&key_bytes)
            .with_context(|| format!("{} is not usable", key_path.display()))?;
        let sig = std::fs::read(sig_path)
            .with_context(|| format!("cannot read the signature {}", sig_path.display()))?;
        if let Err(e) = key.verify(&sb.params, &root, &sig) {
            return Err(anyhow!(crate::CleanNo(format!(
                "signature {} refused: {e}; nothing mounted",
                sig_path.display()
            ))));
        }
    }
    // The root check up front: the first block verifies only under the right root hash.
    let dev = verity_device(&image, &hash, a.hash_offset, &root)?;
    let mut first = vec![0u8; dev.block_size() as usize];
    if let Err(e) = dev.read_at(&mut first, 0) {
        return Err(anyhow!(crate::CleanNo(format!(
            "{} does not verify against root hash {}: {e}; nothing mounted",
            image.display(),
            a.root.trim()
        ))));
    }
    drop(dev);
    let plan = Plan {
        volume: image,
        header: None,
        id,
        source: Source::Verity {
            hash,
            hash_offset: a.hash_offset,
            root,
        },
        read_only: true,
    };
    start(&state, plan, None, &mount_dir, None, a.foreground, out)
}
