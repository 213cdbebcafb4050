//! `sealvol volume …`: the provider's verbs over workload volumes (create, open, close,
//! status, list, destroy, sweep, bind-args). The state machine, journal, locks and sweep are
//! `sealvol_host::volume::Manager`, which also formats and opens (through the same export as
//! `sealvol open`); this module reads the key, translates the options and prints results.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use sealvol_host::state::StateDir;
use sealvol_host::vm::manager::VmManager;
use sealvol_host::volume::{self, CreateOptions, LuksType, Manager, Params, Status, VolumeId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{parse_size, KdfArgs, KeyArgs};
use crate::output::Output;
use crate::CleanNo;

/// The configuration file read when it exists (`--config` names another).
pub const DEFAULT_CONFIG: &str = "/etc/sealvol/config.json";

#[derive(Debug, Args)]
pub struct VolumeCmd {
    /// State directory holding the volumes (default: from the config file, else
    /// /var/lib/sealvol).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file: JSON, {"state_dir": "/path"} (default /etc/sealvol/config.json,
    /// when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: VolumeVerb,
}

#[derive(Debug, Subcommand)]
pub enum VolumeVerb {
    /// Create a workload's volume: sparse LUKS2 (or --type luks1) image (machine-key
    /// profile), file system, and with --mount, mounted under the state directory. Any
    /// failure undoes every step; the same id with the same parameters again is a no-op.
    Create(CreateArgs),
    /// Mount a volume on its mount point (idempotent). A wrong key: exit 1, nothing changed.
    Open(OpenArgs),
    /// Unmount a volume and stop its export, wiping the key from memory (idempotent).
    Close(IdArgs),
    /// Show a volume: phase, parameters, mount path, export process.
    Status(IdArgs),
    /// List every volume of the state directory.
    List,
    /// Destroy a volume: unmount, stop the export, wipe every keyslot and both header copies
    /// (and the detached header), delete its files. Destroying an absent id succeeds.
    /// A volume that a running VM uses as its data disk is refused (as by open and close):
    /// `sealvol vm stop` that VM first, or `sealvol vm destroy --destroy-data` both.
    Destroy(IdArgs),
    /// Repair what crashes left behind: undo interrupted creates, finish interrupted
    /// destroys, stop exports and unmount mounts that have no record or no live export.
    Sweep,
    /// Print the container runtime arguments that bind a mounted volume at --target.
    BindArgs(BindArgsArgs),
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Workload id: 1 to 63 of a-z 0-9 _ . - (starting with a letter or digit, no "..").
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Data size (K, M, G, T: powers of 1024), at least 16M for ext4.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: u64,
    /// File system to make (ext4, ext3, ext2, xfs, btrfs).
    #[arg(long, default_value = "ext4", value_name = "TYPE")]
    pub fs: String,
    /// Keep the LUKS header in its own file (volumes/ID/header.img), not on the image
    /// (LUKS2 only).
    #[arg(long)]
    pub detached_header: bool,
    /// On-disk format: luks2, or luks1 (what qemu's `luks` block driver reads, for a VM's
    /// data disk: 512-byte sectors, PBKDF2 keyslot, attached header).
    #[arg(
        long = "type",
        default_value = "luks2",
        value_name = "TYPE",
        value_parser = parse_luks_type
    )]
    pub luks_type: LuksType,
    /// Leave the volume mounted (at STATE_DIR/mnt/ID).
    #[arg(long)]
    pub mount: bool,
    /// Allow a sparse volume larger than the free space.
    #[arg(long)]
    pub sparse_ok: bool,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct BindArgsArgs {
    /// Path inside the container.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    state_dir: Option<PathBuf>,
}

fn parse_luks_type(s: &str) -> std::result::Result<LuksType, String> {
    match s {
        "luks2" => Ok(LuksType::Luks2),
        "luks1" => Ok(LuksType::Luks1),
        other => Err(format!(
            "{other} is not a volume type; use luks2 (default) or luks1"
        )),
    }
}

/// The state directory: `--state-dir`, else the `--config` file's (or the default config
/// file's, when it exists), else the default.
pub(crate) fn state_dir(state_dir: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = state_dir {
        return Ok(d.to_path_buf());
    }
    let (path, required) = match config {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let cfg: Config = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the config file {} is not valid (expected JSON like {{\"state_dir\": \"/var/lib/sealvol\"}})",
                path.display()
            )
        })?,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Config::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(cfg
        .state_dir
        .unwrap_or_else(|| PathBuf::from(volume::DEFAULT_STATE_DIR)))
}

/// A host error as the CLI's: a wrong key stays a clean "no" (exit 1).
fn host(e: sealvol_host::Error) -> anyhow::Error {
    if e.is_wrong_key() {
        anyhow!(CleanNo(e.to_string()))
    } else {
        anyhow!(e)
    }
}

/// The status as JSON; with a `stale_fix` (the command that clears it) when the host has
/// leftovers.
fn status_json(s: &Status, root: &Path) -> Value {
    let mut v = serde_json::to_value(s).expect("status serialises");
    v["stale_fix"] = if s.stale.is_empty() {
        Value::Null
    } else {
        json!(sweep_command(root))
    };
    v
}

fn sweep_command(root: &Path) -> String {
    format!("sealvol volume --state-dir {} sweep", root.display())
}

/// `volume status`: the volume's own status and the running VMs using it as their data disk.
fn status_with_vms(s: &Status, vms: &[VolumeId], root: &Path) -> (String, Value) {
    let mut human = status_human(s, root);
    human.push_str(&format!(
        "\ndata disk of: {}",
        if vms.is_empty() {
            "no running VM".to_string()
        } else {
            vms.iter()
                .map(|v| format!("running VM {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let mut json = status_json(s, root);
    json["data_disk_of"] = json!(vms);
    (human, json)
}

fn status_human(s: &Status, root: &Path) -> String {
    let mounted = match (s.mounted, s.export_pid, &s.mount_source) {
        (true, Some(pid), _) => format!("yes (export process {pid})"),
        (true, None, src) => format!(
            "yes, from {}, but no live export serves it (stale)",
            src.as_deref().unwrap_or("?")
        ),
        (false, _, _) => "no".to_string(),
    };
    let export = match (s.export_pid, s.recorded_export_pid) {
        (Some(pid), _) => format!("process {pid}, alive"),
        (None, Some(pid)) => format!("process {pid} (recorded), dead"),
        (None, None) => "none".to_string(),
    };
    let loops = if s.loop_devices.is_empty() {
        "-".to_string()
    } else {
        s.loop_devices
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fuse = match (&s.fuse_file, s.fuse_alive) {
        (None, _) => "-".to_string(),
        (Some(f), None) => format!("{} (not mounted)", f.display()),
        (Some(f), Some(true)) => format!("{} (mounted, answering)", f.display()),
        (Some(f), Some(false)) => format!("{} (mounted, dead: ENOTCONN)", f.display()),
    };
    let mut text = format!(
        "volume:      {}\ntype:        {}\nphase:       {}\nsize:        {}\nfs:          {}\nheader:      {}\nuuid:        {}\nimage:       {}\nmount path:  {}\nmounted:     {}\nexport:      {}\nloop:        {}\nfuse file:   {}",
        s.id,
        s.params.luks_type.as_str(),
        s.phase.as_str(),
        volume::human_size(s.params.size),
        s.params.fs,
        s.header
            .as_ref()
            .map_or("attached".to_string(), |h| format!("detached ({})", h.display())),
        s.uuid.as_deref().unwrap_or("-"),
        s.image.display(),
        s.mount_path.display(),
        mounted,
        export,
        loops,
        fuse,
    );
    if s.stale.is_empty() {
        text.push_str("\nstale:       nothing");
    } else {
        for (i, what) in s.stale.iter().enumerate() {
            text.push_str(if i == 0 {
                "\nstale:       "
            } else {
                "\n             "
            });
            text.push_str(what);
        }
        text.push_str(&format!(
            "\n             `{}` clears it",
            sweep_command(root)
        ));
    }
    text
}

/// The volume manager of `root`, its exports run by this binary, its unlocks held to
/// `--kdf-max-*`.
pub(crate) fn manager(root: PathBuf) -> Manager {
    Manager::new(root, StateDir::from_env()).with_kdf_limits(crate::commands::kdf_limits())
}

pub fn run(c: VolumeCmd, out: &Output) -> Result<()> {
    let root = state_dir(c.state_dir.as_deref(), c.config.as_deref())?;
    let m = manager(root);
    let id = |s: &str| VolumeId::parse(s).map_err(host);
    // A running VM's data disk is not the volume manager's to open, close or destroy.
    let vms = VmManager::new(m.clone(), StateDir::from_env());
    match c.verb {
        VolumeVerb::Create(a) => {
            let id = id(&a.id)?;
            let params = Params {
                size: a.size,
                fs: a.fs.clone(),
                detached_header: a.detached_header,
                luks_type: a.luks_type,
            };
            let kdf = a.kdf.policy().context("--hash")?;
            let key = a.key.source().read()?;
            let opts = CreateOptions {
                mount: a.mount,
                sparse_ok: a.sparse_ok,
            };
            let r = m.create(&id, &params, opts, &key, &kdf).map_err(host)?;
            if let Some(hint) = &r.kdf_hint {
                out.note(&format!("sealvol: note: {hint}"));
            }
            for s in &r.swept {
                out.note(&format!("sealvol: sweep: {}: {}", s.id, s.action));
            }
            let where_ = if r.status.served() {
                format!("mounted on {}", r.status.mount_path.display())
            } else {
                "not mounted".to_string()
            };
            let human = if r.already_existed {
                format!(
                    "Volume {id} already exists with these parameters; nothing to do ({where_})."
                )
            } else {
                format!(
                    "Created volume {id}: {} {}, {where_}.",
                    volume::human_size(params.size),
                    params.fs
                )
            };
            let mut v = status_json(&r.status, m.root());
            v["created"] = json!(!r.already_existed);
            v["already_existed"] = json!(r.already_existed);
            v["swept"] = json!(r.swept);
            out.result(&human, v)?;
        }
        VolumeVerb::Open(a) => {
            let id = id(&a.id)?;
            vms.refuse_if_in_use(&id, "open").map_err(host)?;
            let key = a.key.source().read()?;
            let (already, st) = m.open(&id, &key).map_err(host)?;
            let human = if already {
                format!(
                    "Volume {id} is already open on {}; nothing to do.",
                    st.mount_path.display()
                )
            } else {
                format!("Opened volume {id} on {}.", st.mount_path.display())
            };
            let mut v = status_json(&st, m.root());
            v["already_open"] = json!(already);
            out.result(&human, v)?;
        }
        VolumeVerb::Close(a) => {
            let id = id(&a.id)?;
            vms.refuse_if_in_use(&id, "close").map_err(host)?;
            let was_open = m.close(&id).map_err(host)?;
            let human = if was_open {
                format!("Closed volume {id}; its key is wiped from memory.")
            } else {
                format!("Volume {id} is not open; nothing to do.")
            };
            out.result(&human, json!({"id": id, "closed": was_open}))?;
        }
        VolumeVerb::Status(a) => {
            let id = id(&a.id)?;
            match m.status(&id).map_err(host)? {
                Some(s) => {
                    let (human, json) =
                        status_with_vms(&s, &vms.running_users(&id).map_err(host)?, m.root());
                    out.result(&human, json)?;
                }
                None => {
                    return Err(anyhow!(CleanNo(format!(
                        "there is no volume {id} in {}",
                        m.root().display()
                    ))))
                }
            }
        }
        VolumeVerb::List => {
            let all = m.list().map_err(host)?;
            let mut human = String::new();
            for s in &all {
                human.push_str(&format!(
                    "{:<24} {:<10} {:>9} {:<5} {}{}\n",
                    s.id.as_str(),
                    s.phase.as_str(),
                    volume::human_size(s.params.size),
                    s.params.fs,
                    if s.mounted {
                        s.mount_path.display().to_string()
                    } else {
                        "-".into()
                    },
                    if s.stale.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "  STALE: {} (`{}` clears it)",
                            s.stale.join("; "),
                            sweep_command(m.root())
                        )
                    }
                ));
            }
            if all.is_empty() {
                human = format!("No volumes in {}.", m.root().display());
            }
            let v: Vec<Value> = all.iter().map(|s| status_json(s, m.root())).collect();
            out.result(human.trim_end(), json!(v))?;
        }
        VolumeVerb::Destroy(a) => {
            let id = id(&a.id)?;
            vms.refuse_if_in_use(&id, "destroy").map_err(host)?;
            let d = m.destroy(&id).map_err(host)?;
            let human = if d.already_absent {
                format!("Volume {id} is already absent; nothing to do.")
            } else {
                format!(
                    "Destroyed volume {id}: keyslots and both header copies wiped{}, files deleted.{}",
                    if d.lazy_unmount {
                        " (the busy mount was detached lazily)"
                    } else {
                        ""
                    },
                    d.refused
                        .iter()
                        .map(|(p, why)| format!("\nNot wiped: {} is {why}.", p.display()))
                        .collect::<String>()
                )
            };
            let refused: Vec<Value> = d
                .refused
                .iter()
                .map(|(p, why)| json!({"file": p, "reason": why}))
                .collect();
            let wiped: Vec<Value> = d
                .wiped
                .iter()
                .map(|(p, n)| json!({"file": p, "bytes": n}))
                .collect();
            out.result(
                &human,
                json!({"id": id, "destroyed": !d.already_absent, "already_absent": d.already_absent, "lazy_unmount": d.lazy_unmount, "wiped": wiped, "refused": refused}),
            )?;
        }
        VolumeVerb::Sweep => {
            let actions = m.sweep().map_err(host)?;
            let human = if actions.is_empty() {
                "Nothing to repair.".to_string()
            } else {
                actions
                    .iter()
                    .map(|a| format!("{}: {}", a.id, a.action))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            out.result(&human, json!({"actions": actions}))?;
        }
        VolumeVerb::BindArgs(a) => {
            let id = id(&a.id)?;
            let b = m.bind_args(&id, &a.target).map_err(host)?;
            out.result(
                &format!("--mount {}\n-v {}", b.mount, b.volume),
                serde_json::to_value(&b)?,
            )?;
        }
    }
    Ok(())
}
