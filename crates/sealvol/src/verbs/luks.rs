//! The LUKS verbs: the options as typed values, one `sealvol_host::luks_file` call, the
//! result printed.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sealvol_host::keys::{self, KeySource};
use sealvol_host::luks_file::{ExportTo, LuksFile, ERASE_WARNING};
use serde_json::{json, Value};

use crate::cli::*;
use crate::output::Output;

/// The volume's files as the options name them, under the process's KDF limits.
fn files(volume: &Path, args: &VolumeArgs) -> LuksFile {
    LuksFile::new(volume, args.header.clone()).with_limits(crate::cli::kdf_limits())
}

/// Tells the user when the KDF policy may have taken their key for what it is not.
fn hint(out: &Output, hint: Option<&str>) {
    if let Some(hint) = hint {
        out.note(&format!("sealvol: note: {hint}"));
    }
}

/// Runs `op` confirmed with --batch-mode; otherwise asks the question it answers with on the
/// terminal, and runs it again confirmed.
fn confirmed<T>(batch_mode: bool, op: impl Fn(bool) -> sealvol_host::Result<T>) -> Result<T> {
    let question = match op(batch_mode) {
        Err(sealvol_host::Error::NotConfirmed { question }) => question,
        r => return Ok(r?),
    };
    if !std::io::stdin().is_terminal() {
        bail!("{question} Refusing without a terminal to ask; pass --batch-mode");
    }
    eprint!("{question} Type YES (in capitals) to go on: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim_end() != "YES" {
        bail!("not confirmed; nothing was changed");
    }
    Ok(op(true)?)
}

/// A file to read, or stdin for `-`, with its length when known.
fn input(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    Ok((Box::new(f), Some(len)))
}

pub fn format(a: FormatArgs, out: &Output) -> Result<()> {
    let request = a.request()?;
    let key = a.key.source().read()?;
    let f = files(&a.volume_path, &a.volume).format(&request, key.expose())?;
    drop(key);
    hint(out, f.key_hint);
    let header = match &f.header {
        Some(h) => format!("header in {}", h.display()),
        None => "header attached".into(),
    };
    let human = format!(
        "{}\nFormatted {} as LUKS{} ({} sectors of {} bytes, {header}), keyslot {} ({}).",
        f.uuid,
        f.volume.display(),
        f.version.number(),
        f.data_size / f.sector_size,
        f.sector_size,
        f.keyslot,
        f.kdf,
    );
    Ok(out.result(&human, serde_json::to_value(&f)?)?)
}

pub fn dump(a: DumpArgs, out: &Output) -> Result<()> {
    let doc = files(&a.volume_path, &a.volume).dump()?;
    if out.json() {
        return Ok(out.result("", doc)?);
    }
    Ok(out.result(&sealvol_luks::dump::text(&doc), Value::Null)?)
}

pub fn test_key(a: TestKeyArgs, out: &Output) -> Result<()> {
    let key = a.key.source().read()?;
    let slot = files(&a.volume_path, &a.volume).test_key(key.expose(), a.key_slot)?;
    let human = format!("The key opens keyslot {slot}.");
    Ok(out.result(&human, json!({"ok": true, "keyslot": slot}))?)
}

pub fn add_key(a: AddKeyArgs, out: &Output) -> Result<()> {
    let policy = a.kdf.policy().context("--hash")?;
    let (key, new_key) = keys::read_pair(&a.key.source(), &a.new_key.source())?;
    let files = files(&a.volume_path, &a.volume);
    let r = files.add_key(key.expose(), new_key.expose(), &policy, a.key_slot)?;
    hint(out, r.key_hint);
    let human = format!("Added keyslot {} ({}).", r.keyslot, r.kdf);
    Ok(out.result(&human, serde_json::to_value(&r)?)?)
}

pub fn remove_key(a: RemoveKeyArgs, out: &Output) -> Result<()> {
    let key = a.key.source().read()?;
    let slot = files(&a.volume_path, &a.volume).remove_key(key.expose())?;
    let human = format!("Removed keyslot {slot}.");
    Ok(out.result(&human, json!({"removed_keyslot": slot}))?)
}

pub fn change_key(a: ChangeKeyArgs, out: &Output) -> Result<()> {
    let policy = a.kdf.policy().context("--hash")?;
    let (key, new_key) = keys::read_pair(&a.key.source(), &a.new_key.source())?;
    let files = files(&a.volume_path, &a.volume);
    let r = files.change_key(key.expose(), new_key.expose(), &policy, a.key_slot)?;
    hint(out, r.key_hint);
    let human = format!(
        "The new key is in keyslot {} ({}); the old key no longer opens the volume.",
        r.keyslot, r.kdf
    );
    Ok(out.result(&human, serde_json::to_value(&r)?)?)
}

pub fn erase(a: EraseArgs, out: &Output) -> Result<()> {
    let files = files(&a.volume_path, &a.volume);
    let slots = confirmed(a.batch_mode, |yes| files.erase(yes))?;
    out.note(&format!("sealvol: warning: {ERASE_WARNING}"));
    let human = format!("Wiped {} keyslot(s): {slots:?}.", slots.len());
    let json = json!({"erased_keyslots": slots, "warning": ERASE_WARNING});
    Ok(out.result(&human, json)?)
}

pub fn header_backup(a: HeaderBackupArgs, out: &Output) -> Result<()> {
    let to = &a.header_backup_file;
    let bytes = files(&a.volume_path, &a.volume).header_backup(to)?;
    out.note("sealvol: note: the backup holds the keyslots; anyone with it and an old key can open the volume.");
    let human = format!("Wrote {bytes} bytes of header to {}.", to.display());
    Ok(out.result(&human, json!({"backup": to, "bytes": bytes}))?)
}

pub fn header_restore(a: HeaderRestoreArgs, out: &Output) -> Result<()> {
    let files = files(&a.volume_path, &a.volume);
    let uuid = confirmed(a.batch_mode, |yes| {
        files.header_restore(&a.header_backup_file, yes)
    })?;
    let path = files.header_file();
    let human = format!("Restored the header of {} (UUID {uuid}).", path.display());
    Ok(out.result(&human, json!({"restored": path, "uuid": uuid}))?)
}

pub fn repair(a: RepairArgs, out: &Output) -> Result<()> {
    let repaired = files(&a.volume_path, &a.volume).repair()?;
    let human = match repaired {
        true => "Rewrote the damaged header copy.",
        false => "Both header copies are valid; nothing to do.",
    };
    Ok(out.result(human, json!({"repaired": repaired}))?)
}

pub fn token_add(a: TokenAddArgs, out: &Output) -> Result<()> {
    let (mut json, _) = input(&a.json_file)?;
    let id = files(&a.volume_path, &a.volume).token_add(&mut json, a.token_id)?;
    Ok(out.result(&format!("Added token {id}."), json!({"token_id": id}))?)
}

pub fn token_remove(a: TokenIdArgs, out: &Output) -> Result<()> {
    files(&a.volume_path, &a.volume).token_remove(a.token_id)?;
    let human = format!("Removed token {}.", a.token_id);
    Ok(out.result(&human, json!({"removed_token_id": a.token_id}))?)
}

pub fn token_export(a: TokenIdArgs, out: &Output) -> Result<()> {
    let token = files(&a.volume_path, &a.volume).token_export(a.token_id)?;
    Ok(out.result(&token.to_string(), token)?)
}

pub fn import(a: ImportArgs, out: &Output) -> Result<()> {
    let key_src = a.key.source();
    if a.src.as_os_str() == "-" && key_src == KeySource::Stdin {
        bail!("the plaintext comes from stdin, so the key cannot: give it with --key-file FILE or --key-fd N");
    }
    let key = key_src.read()?;
    let (mut src, len) = input(&a.src)?;
    let mut bar = out.bar("import");
    let files = files(&a.volume_path, &a.volume);
    let c = files.import(key.expose(), &mut src, len, &mut bar)?;
    drop(bar);
    let human = format!(
        "Imported {} bytes into {} ({:.0} MB/s).",
        c.bytes,
        a.volume_path.display(),
        c.mb_per_s()
    );
    Ok(out.result(&human, serde_json::to_value(c)?)?)
}

pub fn export(a: ExportArgs, out: &Output) -> Result<()> {
    let key = a.key.source().read()?;
    let to_stdout = a.dst.as_os_str() == "-";
    let mut stdout = std::io::stdout().lock();
    let to = match to_stdout {
        true => ExportTo::Stream(&mut stdout),
        false => ExportTo::File(&a.dst),
    };
    let mut bar = out.bar("export");
    let c = files(&a.volume_path, &a.volume).export(key.expose(), to, &mut bar)?;
    drop((bar, stdout));
    let summary = format!(
        "Exported {} bytes to {} ({:.0} MB/s).",
        c.bytes,
        a.dst.display(),
        c.mb_per_s()
    );
    // With `-` as DST stdout carries the data; the summary goes to stderr then (JSON only).
    match (to_stdout, out.json()) {
        (false, _) => out.result(&summary, serde_json::to_value(c)?)?,
        (true, true) => out.note(&summary),
        (true, false) => {}
    }
    Ok(())
}
