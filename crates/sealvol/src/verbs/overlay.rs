//! `sealvol overlay …`: encrypted copy-on-write overlays (`sealvol_host::overlay`, over the
//! `sealvol-overlay` crate). Each verb reads its keys (key file, stdin or descriptor; never
//! argv), makes one library call and prints the result; retire and flatten draw a progress
//! bar on a terminal.

use std::path::Path;

use anyhow::{Context, Result};
use sealvol_host::export::{BaseSpec, RootSignature, VeritySpec};
use sealvol_host::keys::{self, KeySource};
use sealvol_host::luks_file::LuksFile;
use sealvol_host::overlay::{self, BaseKey, Create, OpenHow};
use sealvol_host::state::StateDir;
use sealvol_host::volume::human_size;
use sealvol_host::Progress as _;
use serde_json::json;

use crate::cli::overlay::{BaseArgs, OverlayCommand};
use crate::cli::KdfArgs;
use crate::output::Output;

/// The base the options name, if any.
pub fn base_spec(a: &BaseArgs) -> Option<BaseSpec> {
    let path = a.base.clone()?;
    Some(if a.base_luks {
        BaseSpec::Luks {
            volume: path,
            header: a.base_header.clone(),
        }
    } else if let (Some(hash), Some(root)) = (&a.base_hash, &a.base_root) {
        BaseSpec::Verity {
            image: path,
            verity: VeritySpec {
                hash: hash.clone(),
                hash_offset: a.base_hash_offset,
                root: root.clone(),
                signature: match (&a.base_signature, &a.base_public_key) {
                    (Some(signature), Some(public_key)) => Some(RootSignature {
                        signature: signature.clone(),
                        public_key: public_key.clone(),
                    }),
                    _ => None,
                },
            },
        }
    } else {
        BaseSpec::Image { path }
    })
}

/// Where a LUKS base's key comes from (`--base-key-file`, `--base-key-fd`; stdin without
/// either), when the base is LUKS.
pub fn base_key_source(a: &BaseArgs) -> Option<KeySource> {
    a.base_luks
        .then(|| KeySource::from_options(a.base_key_file.as_deref(), a.base_key_fd))
}

fn expect(text: Option<&str>) -> Result<Option<overlay::Checkpoint>> {
    text.map(|t| t.parse().context("--expect-checkpoint"))
        .transpose()
}

fn how(expect_checkpoint: Option<&str>) -> Result<OpenHow> {
    Ok(OpenHow {
        read_only: false,
        expect: expect(expect_checkpoint)?,
        limits: crate::cli::kdf_limits(),
    })
}

/// A progress callback for retire and flatten: a byte bar on a terminal.
fn bar_for<'a>(
    bar: &'a mut crate::output::Bar,
    cluster: u64,
) -> impl FnMut(sealvol_host::overlay::Progress) + 'a {
    let mut started = false;
    move |p| {
        if !started {
            bar.start(Some(p.total * cluster));
            started = true;
        }
        bar.at(p.bytes);
    }
}

fn kdf_for(kdf: &KdfArgs, key: &[u8], out: &Output) -> Result<sealvol_luks::KdfParams> {
    let policy = kdf.policy().context("--hash")?;
    if let Some(h) = policy.hint(key) {
        out.note(&format!("sealvol: note: {h}"));
    }
    Ok(policy.params_for(key, false)?)
}

fn status_human(path: &Path, s: &overlay::Status, files: &[std::path::PathBuf]) -> String {
    let mut t = format!(
        "overlay:     {}\nuuid:        {}\ncheckpoint:  {}\nfrozen:      {}\nsize:        {} virtual, {} clusters\ndata:        {} in this layer, {} discarded (zeros), {} of map\ngenerations:",
        path.display(),
        s.uuid,
        s.checkpoint,
        if s.frozen { "yes (a snapshot)" } else { "no" },
        human_size(s.virtual_size),
        human_size(u64::from(s.cluster_size)),
        human_size(s.data_bytes),
        human_size(s.zero_bytes),
        human_size(s.metadata_bytes),
    );
    for g in &s.generations {
        t.push_str(&format!(
            "\n  {:>4}  {:>10}{}{}{}",
            g.id,
            human_size(g.bytes),
            if g.current { "  current" } else { "" },
            if g.retiring { "  retiring" } else { "" },
            g.folded_from
                .as_ref()
                .map(|u| format!("  (folded from layer {u})"))
                .unwrap_or_default()
        ));
    }
    if s.lower.is_empty() {
        t.push_str("\nlower:       none");
    }
    for (l, f) in s.lower.iter().zip(files) {
        t.push_str(&format!(
            "\nlower {}:     {} ({}, frozen at {})",
            l.layer.index,
            f.display(),
            l.layer.uuid,
            l.layer.checkpoint
        ));
    }
    t
}

fn made_human(what: &str, m: &overlay::Made) -> String {
    format!(
        "{what} {} ({} virtual, {} clusters, uuid {}).\ncheckpoint: {}",
        m.path.display(),
        human_size(m.virtual_size),
        human_size(u64::from(m.cluster_size)),
        m.uuid,
        m.checkpoint
    )
}

pub fn run(c: OverlayCommand, out: &Output) -> Result<()> {
    let run = StateDir::from_env();
    let limits = crate::cli::kdf_limits();
    match c {
        OverlayCommand::Create(a) => {
            let spec = base_spec(&a.base).unwrap_or_default();
            // The base is checked before any key is read.
            let base_key = base_key_source(&a.base).map(|s| s.read()).transpose()?;
            let (base, base_vk) = overlay::check_base(
                &spec,
                base_key
                    .as_ref()
                    .map_or(BaseKey::None, |k| BaseKey::Key(k.expose())),
                limits,
            )?;
            drop(base_key);
            let key = a.key.source().read()?;
            let kdf = kdf_for(&a.kdf, key.expose(), out)?;
            let cluster_size = a
                .cluster_size
                .map(|c| u32::try_from(c).context("--cluster-size is at most 1M"))
                .transpose()?;
            let m = overlay::create(
                &a.overlay,
                key.expose(),
                &base,
                base_vk,
                &Create {
                    size: a.size,
                    cluster_size,
                    kdf,
                    label: a.label,
                },
            )?;
            let mut v = serde_json::to_value(&m)?;
            v["kdf"] = serde_json::to_value(kdf)?;
            v["base"] = serde_json::to_value(base.spec())?;
            out.result(&made_human("Created the overlay", &m), v)?;
        }
        OverlayCommand::Status(a) => {
            let key = a.key.source().read()?;
            let (s, files) = overlay::status(
                &run,
                &a.overlay,
                key.expose(),
                how(a.expect_checkpoint.as_deref())?,
            )?;
            let mut v = serde_json::to_value(&s)?;
            v["lower_files"] = json!(files);
            out.result(&status_human(&a.overlay, &s, &files), v)?;
        }
        OverlayCommand::Checkpoint(a) => {
            // An overlay an export serves: what its last flush recorded, no key needed.
            if let Some((cp, pid)) = overlay::served_checkpoint(&run, &a.overlay) {
                out.result(
                    &cp.to_string(),
                    json!({"checkpoint": cp, "served_by": pid, "verified": false}),
                )?;
                return Ok(());
            }
            let key = a.key.source().read()?;
            let cp = overlay::checkpoint(&run, &a.overlay, key.expose(), how(None)?)?;
            out.result(
                &cp.to_string(),
                json!({"checkpoint": cp, "served_by": null, "verified": true}),
            )?;
        }
        OverlayCommand::Rekey(a) => {
            let key = a.key.source().read()?;
            let r = overlay::rekey(
                &run,
                &a.overlay,
                key.expose(),
                how(a.expect_checkpoint.as_deref())?,
            )?;
            out.result(
                &format!(
                    "New key generation {}: every write uses it from now on.\ncheckpoint: {}",
                    r.generation, r.checkpoint
                ),
                serde_json::to_value(&r)?,
            )?;
        }
        OverlayCommand::Retire(a) => {
            let key = a.keyed.key.source().read()?;
            let cluster = u64::from(overlay::peek(&a.keyed.overlay)?.cluster_size);
            let mut bar = out.bar("retiring");
            let r = overlay::retire(
                &run,
                &a.keyed.overlay,
                key.expose(),
                a.generation,
                how(a.keyed.expect_checkpoint.as_deref())?,
                &mut bar_for(&mut bar, cluster),
            )?;
            drop(bar);
            out.result(
                &format!(
                    "Retired generation {}: {} re-encrypted under generation {}, its key erased.\ncheckpoint: {}",
                    r.generation,
                    human_size(r.bytes),
                    r.into,
                    r.checkpoint
                ),
                serde_json::to_value(r)?,
            )?;
        }
        OverlayCommand::Snapshot(a) => {
            let key = a.keyed.key.source().read()?;
            let s = overlay::snapshot(
                &run,
                &a.keyed.overlay,
                &a.snapshot,
                key.expose(),
                how(a.keyed.expect_checkpoint.as_deref())?,
            )?;
            out.result(
                &format!(
                    "Froze {} at {}; {} goes on over it.\ncheckpoint: {}",
                    s.frozen.display(),
                    s.frozen_checkpoint,
                    s.top.path.display(),
                    s.top.checkpoint
                ),
                serde_json::to_value(&s)?,
            )?;
        }
        OverlayCommand::Clone(a) => {
            let (key, new_key) = keys::read_pair(&a.key.source(), &a.new_key.source())?;
            let kdf = kdf_for(&a.kdf, new_key.expose(), out)?;
            let m = overlay::clone(
                &run,
                &a.source,
                &a.new,
                key.expose(),
                new_key.expose(),
                kdf,
                how(None)?,
            )?;
            let mut v = serde_json::to_value(&m)?;
            v["kdf"] = serde_json::to_value(kdf)?;
            out.result(&made_human("Cloned into", &m), v)?;
        }
        OverlayCommand::Flatten(a) => {
            let key = a.key.source().read()?;
            let cluster = u64::from(overlay::peek(&a.overlay)?.cluster_size);
            let mut bar = out.bar("flattening");
            let r = overlay::flatten(
                &run,
                &a.overlay,
                key.expose(),
                how(a.expect_checkpoint.as_deref())?,
                &mut bar_for(&mut bar, cluster),
            )?;
            drop(bar);
            out.result(
                &format!(
                    "Flattened: {} copied up from {} lower layer(s); the overlay stands on its base alone.\ncheckpoint: {}",
                    human_size(r.bytes),
                    r.layers,
                    r.checkpoint
                ),
                serde_json::to_value(r)?,
            )?;
        }
        OverlayCommand::AddKey(a) => {
            let files = keyslots(&a.overlay)?;
            let (key, new_key) = keys::read_pair(&a.key.source(), &a.new_key.source())?;
            let policy = a.kdf.policy().context("--hash")?;
            let r = files.add_key(key.expose(), new_key.expose(), &policy, None)?;
            if let Some(h) = r.key_hint {
                out.note(&format!("sealvol: note: {h}"));
            }
            out.result(
                &format!("Added keyslot {} ({}).", r.keyslot, r.kdf),
                serde_json::to_value(&r)?,
            )?;
        }
        OverlayCommand::ChangeKey(a) => {
            let files = keyslots(&a.overlay)?;
            let (key, new_key) = keys::read_pair(&a.key.source(), &a.new_key.source())?;
            let policy = a.kdf.policy().context("--hash")?;
            let r = files.change_key(key.expose(), new_key.expose(), &policy, None)?;
            if let Some(h) = r.key_hint {
                out.note(&format!("sealvol: note: {h}"));
            }
            out.result(
                &format!(
                    "The new key is in keyslot {} ({}); the old key no longer opens the overlay.",
                    r.keyslot, r.kdf
                ),
                serde_json::to_value(&r)?,
            )?;
        }
        OverlayCommand::RemoveKey(a) => {
            let files = keyslots(&a.overlay)?;
            let key = a.key.source().read()?;
            let slot = files.remove_key(key.expose())?;
            out.result(
                &format!("Removed keyslot {slot}."),
                json!({"removed_keyslot": slot}),
            )?;
        }
    }
    Ok(())
}

/// The overlay's embedded LUKS2 header, for the keyslot verbs.
fn keyslots(path: &Path) -> Result<LuksFile> {
    Ok(overlay::keyslots(path)?.with_limits(crate::cli::kdf_limits()))
}
