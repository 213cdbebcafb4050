//! `sealvol vm …`: workload VMs (create, start, stop, destroy, status, list, console-log,
//! sweep). The records, locks, qemu wiring and sweep are `sealvol_host::vm::manager`; this
//! module reads the data volume's key, translates the options and prints results (the qemu
//! secret and the NBD export of the data disk are the manager's too).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sealvol_host::state::StateDir;
use sealvol_host::vm::manager::{
    CreateInput, DataVia, Forward, KernelBoot, VmId, VmManager, VmParams, VmStatus,
};
use sealvol_host::volume;
use serde_json::{json, Value};

use crate::cli::{parse_size, KeyArgs};
use crate::output::Output;
use crate::CleanNo;

#[derive(Debug, Args)]
pub struct VmCmd {
    /// State directory (shared with `sealvol volume`; default: from the config file, else
    /// /var/lib/sealvol). VMs live in its vm/ subdirectory.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file: JSON, {"state_dir": "/path"} (default /etc/sealvol/config.json,
    /// when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: VmVerb,
}

#[derive(Debug, Subcommand)]
pub enum VmVerb {
    /// Create a VM: a qcow2 overlay on the base image and a cloud-init seed ISO (with the
    /// ssh key from --ssh-key). A failure undoes every step.
    Create(CreateArgs),
    /// Start a VM (idempotent). The data volume's key comes from --key-file, --key-fd or
    /// stdin; a wrong key: exit 1, nothing started.
    Start(StartArgs),
    /// Stop a VM: ACPI power-off, then SIGKILL after --timeout; then its NBD export.
    Stop(StopArgs),
    /// Destroy a VM: stop it, delete its overlay, seed and record; with --destroy-data also
    /// crypto-erase its data volume. Destroying an absent id succeeds.
    Destroy(DestroyArgs),
    /// Show a VM: phase, qemu process, accelerator, files.
    Status(IdArgs),
    /// List every VM of the state directory.
    List,
    /// Print the VM's serial console log (of its current or last boot).
    ConsoleLog(IdArgs),
    /// Repair what crashes left behind: interrupted creates and destroys, qemu processes
    /// without records, stale pid files, NBD exports of VMs that are gone.
    Sweep,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// VM id: 1 to 63 of a-z 0-9 _ . - (starting with a letter or digit, no "..").
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Via {
    /// qemu's own LUKS driver (LUKS1 volumes, text keys).
    Luks,
    /// sealvol's NBD export (any LUKS volume, any key).
    Nbd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccelArg {
    Kvm,
    Tcg,
    Auto,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(value_name = "ID")]
    pub id: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory (K, M, G: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: u64,
    /// Root disk size: the overlay's virtual size (K, M, G, T).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_size: u64,
    /// The read-only base image (any format qemu-img knows).
    #[arg(long, value_name = "IMAGE")]
    pub base: PathBuf,
    /// A workload volume (`sealvol volume create`) to attach as the data disk.
    #[arg(long, value_name = "VOLID")]
    pub data_volume: Option<String>,
    /// How the data disk reaches the guest.
    #[arg(long, value_enum, default_value = "nbd", requires = "data_volume")]
    pub data_via: Via,
    /// Forward a host port (on 127.0.0.1) to a guest port: HOST:GUEST/tcp. Repeatable.
    #[arg(long, value_name = "HOST:GUEST/tcp")]
    pub forward: Vec<String>,
    /// Public ssh key file to authorize in the guest (through the cloud-init seed).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Accelerator: kvm, tcg, or auto (probe KVM with a tiny guest, fall back to TCG).
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Boot this kernel directly (with --initrd and --append).
    #[arg(long, value_name = "VMLINUX", requires_all = ["initrd"])]
    pub kernel: Option<PathBuf>,
    /// The initrd for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        default_value = "console=ttyS0"
    )]
    pub append: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before killing qemu.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub timeout: u64,
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Also destroy the data volume (crypto-erase through `sealvol volume destroy`).
    #[arg(long)]
    pub destroy_data: bool,
    /// Seconds to wait for a running guest to power off before killing qemu.
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub timeout: u64,
    #[arg(value_name = "ID")]
    pub id: String,
}

/// A host error as the CLI's: a wrong key stays a clean "no" (exit 1).
fn host(e: sealvol_host::Error) -> anyhow::Error {
    if e.is_wrong_key() {
        anyhow!(CleanNo(e.to_string()))
    } else {
        anyhow!(e)
    }
}

fn status_json(s: &VmStatus) -> Value {
    serde_json::to_value(s).expect("status serialises")
}

fn status_human(s: &VmStatus) -> String {
    format!(
        "vm:          {}\nphase:       {}\nrunning:     {}\naccel:       {}\ncpus:        {}\nmemory:      {} MiB\ndisk:        {} ({})\nbase:        {}\ndata volume: {}\nconsole log: {}",
        s.id,
        s.phase.as_str(),
        match s.qemu_pid {
            Some(p) => format!("yes (qemu {p})"),
            None => "no".into(),
        },
        match (&s.accel, &s.accel_reason) {
            (Some(a), Some(r)) => format!("{} ({r})", a.as_str()),
            _ => s.params.accel.clone(),
        },
        s.params.cpus,
        s.params.memory_mib,
        volume::human_size(s.params.disk_size),
        s.overlay.display(),
        s.params.base.display(),
        match &s.params.data_volume {
            Some(v) => format!("{v} via {}", s.params.data_via.as_str()),
            None => "-".into(),
        },
        s.console_log.display()
    )
}

pub fn run(c: VmCmd, out: &Output) -> Result<()> {
    let root = crate::volume::state_dir(c.state_dir.as_deref(), c.config.as_deref())?;
    let m = VmManager::new(crate::volume::manager(root), StateDir::from_env());
    let id = |s: &str| VmId::parse(s).map_err(host);
    match c.verb {
        VmVerb::Create(a) => {
            let id = id(&a.id)?;
            let forwards = a
                .forward
                .iter()
                .map(|f| Forward::parse(f))
                .collect::<sealvol_host::Result<Vec<_>>>()
                .map_err(host)?;
            let data_volume = a
                .data_volume
                .as_deref()
                .map(volume::VolumeId::parse)
                .transpose()
                .map_err(host)?;
            let params = VmParams {
                cpus: a.cpus,
                memory_mib: a.memory >> 20,
                disk_size: a.disk_size,
                base: a.base,
                data_volume,
                data_via: match a.data_via {
                    Via::Luks => DataVia::Luks,
                    Via::Nbd => DataVia::Nbd,
                },
                forwards,
                accel: match a.accel {
                    AccelArg::Kvm => "kvm",
                    AccelArg::Tcg => "tcg",
                    AccelArg::Auto => "auto",
                }
                .into(),
                kernel: match (a.kernel, a.initrd) {
                    (Some(kernel), Some(initrd)) => Some(KernelBoot {
                        kernel,
                        initrd,
                        append: a.append,
                    }),
                    _ => None,
                },
            };
            let input = CreateInput {
                ssh_key_file: a.ssh_key,
            };
            let st = m.create(&id, &params, &input).map_err(host)?;
            out.result(
                &format!(
                    "Created VM {id}: {} vCPU, {} MiB, {} disk on {}.",
                    st.params.cpus,
                    st.params.memory_mib,
                    volume::human_size(st.params.disk_size),
                    st.params.base.display()
                ),
                status_json(&st),
            )?;
        }
        VmVerb::Start(a) => {
            let id = id(&a.id)?;
            let rec = m.status(&id).map_err(host)?;
            // The key is read only when there is a data volume to open.
            let key = match rec.as_ref().and_then(|s| s.params.data_volume.as_ref()) {
                Some(_) => Some(a.key.source().read()?),
                None => None,
            };
            let (already, st) = m.start(&id, key.as_ref()).map_err(host)?;
            let human = if already {
                format!(
                    "VM {id} is already running (qemu {}).",
                    st.qemu_pid.unwrap_or(0)
                )
            } else {
                format!(
                    "Started VM {id} (qemu {}, {}: {}); console log: {}",
                    st.qemu_pid.unwrap_or(0),
                    st.accel.map_or("?", |a| a.as_str()),
                    st.accel_reason.as_deref().unwrap_or(""),
                    st.console_log.display()
                )
            };
            let mut v = status_json(&st);
            v["already_running"] = json!(already);
            out.result(&human, v)?;
        }
        VmVerb::Stop(a) => {
            let id = id(&a.id)?;
            let r = m.stop(&id, Duration::from_secs(a.timeout)).map_err(host)?;
            let human = match r.how.as_str() {
                "acpi" => format!("Stopped VM {id} (the guest powered off)."),
                "killed" => format!(
                    "Stopped VM {id}: the guest did not power off within {} s and qemu was killed.",
                    a.timeout
                ),
                _ => format!("VM {id} is not running; nothing to do."),
            };
            out.result(&human, serde_json::to_value(&r)?)?;
        }
        VmVerb::Destroy(a) => {
            let id = id(&a.id)?;
            let d = m
                .destroy(&id, a.destroy_data, Duration::from_secs(a.timeout))
                .map_err(host)?;
            let human = if d.already_absent {
                format!("VM {id} is already absent; nothing to do.")
            } else {
                format!(
                    "Destroyed VM {id}: qemu stopped, overlay, seed and record deleted{}.",
                    match &d.data_destroyed {
                        Some(v) if !v.already_absent =>
                            format!("; data volume {} crypto-erased and deleted", v.id),
                        Some(v) => format!("; data volume {} was already absent", v.id),
                        None => String::new(),
                    }
                )
            };
            out.result(&human, serde_json::to_value(&d)?)?;
        }
        VmVerb::Status(a) => {
            let id = id(&a.id)?;
            match m.status(&id).map_err(host)? {
                Some(s) => out.result(&status_human(&s), status_json(&s))?,
                None => {
                    return Err(anyhow!(CleanNo(format!(
                        "there is no VM {id} in {}",
                        m.root().display()
                    ))))
                }
            }
        }
        VmVerb::List => {
            let all = m.list().map_err(host)?;
            let mut human = String::new();
            for s in &all {
                human.push_str(&format!(
                    "{:<24} {:<10} {:<8} {}\n",
                    s.id.as_str(),
                    s.phase.as_str(),
                    if s.running { "running" } else { "stopped" },
                    s.params
                        .data_volume
                        .as_ref()
                        .map_or("-".to_string(), |v| format!(
                            "{v} ({})",
                            s.params.data_via.as_str()
                        ))
                ));
            }
            if all.is_empty() {
                human = format!("No VMs in {}.", m.root().display());
            }
            let v: Vec<Value> = all.iter().map(status_json).collect();
            out.result(human.trim_end(), json!(v))?;
        }
        VmVerb::ConsoleLog(a) => {
            let id = id(&a.id)?;
            if m.status(&id).map_err(host)?.is_none() {
                return Err(anyhow!(CleanNo(format!(
                    "there is no VM {id} in {}",
                    m.root().display()
                ))));
            }
            let path = m.console_log(&id);
            let text = match std::fs::read(&path) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            out.result(
                text.trim_end(),
                json!({"id": id, "path": path, "log": text}),
            )?;
        }
        VmVerb::Sweep => {
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
    }
    Ok(())
}
