//! `sealvol vm …`: workload VMs (create, start, stop, destroy, status, list, console-log,
//! sweep). The records, locks, qemu wiring and sweep are `sealvol_host::vm::manager`; this
//! module reads the data volume's key, translates the options and prints results (the qemu
//! secret and the NBD export of the data disk are the manager's too).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sealvol_host::state::StateDir;
use sealvol_host::vm::manager::{
    CreateInput, DataVia, Forward, KernelBoot, VmId, VmManager, VmParams, VmStatus,
};
use sealvol_host::volume;
use serde_json::{json, Value};

use crate::cli::vm::{AccelArg, Via, VmCmd, VmVerb};
use crate::output::CleanNo;
use crate::output::Output;

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
    let root = sealvol_host::config::state_dir(c.state_dir.as_deref(), c.config.as_deref())?;
    let m = VmManager::new(super::volume::manager(root), StateDir::from_env());
    let id = |s: &str| VmId::parse(s);
    match c.verb {
        VmVerb::Create(a) => {
            let a = *a;
            let id = id(&a.id)?;
            let forwards = a
                .forward
                .iter()
                .map(|f| Forward::parse(f))
                .collect::<sealvol_host::Result<Vec<_>>>()?;
            let data_volume = a
                .data_volume
                .as_deref()
                .map(volume::VolumeId::parse)
                .transpose()?;
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
                encrypted_root: a.encrypted_root,
            };
            // The key is read only for an encrypted root disk.
            let root_key = if a.encrypted_root {
                let key = a.key.source().read()?;
                let policy = a.kdf.policy().context("--hash")?;
                if let Some(h) = policy.hint(key.expose()) {
                    out.note(&format!("sealvol: note: {h}"));
                }
                let kdf = policy.params_for(key.expose(), false)?;
                Some((key, kdf))
            } else {
                None
            };
            let input = CreateInput {
                ssh_key_file: a.ssh_key,
                root_key,
            };
            let st = m.create(&id, &params, &input)?;
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
            let rec = m.status(&id)?;
            // The key is read only when there is a data volume or an encrypted root to open.
            let key = match rec
                .as_ref()
                .map(|s| s.params.data_volume.is_some() || s.params.encrypted_root)
            {
                Some(true) => Some(a.key.source().read()?),
                _ => None,
            };
            let (already, st) = m.start(&id, key.as_ref())?;
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
            let r = m.stop(&id, Duration::from_secs(a.timeout))?;
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
            let d = m.destroy(&id, a.destroy_data, Duration::from_secs(a.timeout))?;
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
            match m.status(&id)? {
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
            let all = m.list()?;
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
            if m.status(&id)?.is_none() {
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
            let actions = m.sweep()?;
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
