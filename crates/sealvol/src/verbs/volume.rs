//! `sealvol volume …`: the provider's verbs over workload volumes (create, open, close,
//! status, list, destroy, sweep, bind-args). The state machine, journal, locks and sweep are
//! `sealvol_host::volume::Manager`, which also formats and opens (through the same export as
//! `sealvol open`); this module reads the key, translates the options and prints results.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use sealvol_host::export::{BaseSpec, VeritySpec};
use sealvol_host::state::StateDir;
use sealvol_host::vm::manager::VmManager;
use sealvol_host::volume::{self, CreateOptions, Manager, Params, Status, VolumeId};
use serde_json::{json, Value};

use crate::cli::volume::{VolumeCmd, VolumeVerb};
use crate::output::CleanNo;
use crate::output::Output;

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
        match &s.params.base {
            Some(b) => format!(
                "overlay over {}{}",
                b.path().map_or("nothing".into(), |p| p.display().to_string()),
                if matches!(b, BaseSpec::Verity { .. }) {
                    " (dm-verity)"
                } else {
                    ""
                }
            ),
            None => s.params.luks_type.as_str().to_string(),
        },
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
    Manager::new(root, StateDir::from_env()).with_kdf_limits(crate::cli::kdf_limits())
}

pub fn run(c: VolumeCmd, out: &Output) -> Result<()> {
    let root = sealvol_host::config::state_dir(c.state_dir.as_deref(), c.config.as_deref())?;
    let m = manager(root);
    let id = |s: &str| VolumeId::parse(s);
    // A running VM's data disk is not the volume manager's to open, close or destroy.
    let vms = VmManager::new(m.clone(), StateDir::from_env());
    match c.verb {
        VolumeVerb::Create(a) => {
            let id = id(&a.id)?;
            let base = a
                .base
                .clone()
                .map(|image| match (&a.base_hash, &a.base_root) {
                    (Some(hash), Some(root)) => BaseSpec::Verity {
                        image,
                        verity: VeritySpec {
                            hash: hash.clone(),
                            hash_offset: a.base_hash_offset,
                            root: root.clone(),
                            signature: None,
                        },
                    },
                    _ => BaseSpec::Image { path: image },
                });
            let params = Params {
                size: a.size.unwrap_or(0),
                fs: a.fs.clone(),
                detached_header: a.detached_header,
                luks_type: a.luks_type,
                base,
            };
            let kdf = a.kdf.policy().context("--hash")?;
            let key = a.key.source().read()?;
            let opts = CreateOptions {
                mount: a.mount,
                sparse_ok: a.sparse_ok,
            };
            let r = m.create(&id, &params, opts, &key, &kdf)?;
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
                    "Created volume {id}: {} {}{}, {where_}.",
                    volume::human_size(r.status.params.size),
                    r.status.params.fs,
                    r.status
                        .params
                        .base
                        .as_ref()
                        .and_then(|b| b.path())
                        .map(|p| format!(" (an overlay over {})", p.display()))
                        .unwrap_or_default()
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
            vms.refuse_if_in_use(&id, "open")?;
            let key = a.key.source().read()?;
            let (already, st) = m.open(&id, &key)?;
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
            vms.refuse_if_in_use(&id, "close")?;
            let was_open = m.close(&id)?;
            let human = if was_open {
                format!("Closed volume {id}; its key is wiped from memory.")
            } else {
                format!("Volume {id} is not open; nothing to do.")
            };
            out.result(&human, json!({"id": id, "closed": was_open}))?;
        }
        VolumeVerb::Status(a) => {
            let id = id(&a.id)?;
            match m.status(&id)? {
                Some(s) => {
                    let (human, json) = status_with_vms(&s, &vms.running_users(&id)?, m.root());
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
            let all = m.list()?;
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
            vms.refuse_if_in_use(&id, "destroy")?;
            let d = m.destroy(&id)?;
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
        VolumeVerb::BindArgs(a) => {
            let id = id(&a.id)?;
            let b = m.bind_args(&id, &a.target)?;
            out.result(
                &format!("--mount {}\n-v {}", b.mount, b.volume),
                serde_json::to_value(&b)?,
            )?;
        }
    }
    Ok(())
}
