//! The verbs. Each one checks its inputs, reads the key, and only then touches the disk, so a
//! command that fails on bad input or a wrong key leaves every file as it was.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sealvol_crypto::kdf::Argon2Variant;
use sealvol_crypto::SecretBytes;
use sealvol_luks::{
    DataSegment, HeaderPlacement, KdfLimits, KdfParams, KdfPolicy, NewHeader, Version,
};

/// A LUKS1 or LUKS2 volume: every verb works on both (tokens only on LUKS2).
pub(crate) type Volume<S> = sealvol_luks::AnyVolume<S>;
use serde_json::json;

use crate::cli::*;
use sealvol_host::luks_file::{Access, HeaderFile, LuksFile};
use crate::keys::KeySource;
use crate::output::Output;
use crate::CleanNo;

pub fn run(command: Command, out: &Output) -> Result<()> {
    match command {
        Command::Format(a) => format(a, out),
        Command::Dump(a) => dump(a, out),
        Command::TestKey(a) => test_key(a, out),
        Command::AddKey(a) => add_key(a, out),
        Command::RemoveKey(a) => remove_key(a, out),
        Command::ChangeKey(a) => change_key(a, out),
        Command::Erase(a) => erase(a, out),
        Command::HeaderBackup(a) => header_backup(a, out),
        Command::HeaderRestore(a) => header_restore(a, out),
        Command::Repair(a) => repair(a, out),
        Command::Token(TokenCommand::Add(a)) => token_add(a, out),
        Command::Token(TokenCommand::Remove(a)) => token_remove(a, out),
        Command::Token(TokenCommand::Export(a)) => token_export(a, out),
        Command::Import(a) => import(a, out),
        Command::Export(a) => export(a, out),
        Command::Verity(c) => crate::verity::run(c, out),
        Command::Open(a) => crate::open::open(a, out),
        Command::Close(a) => crate::open::close(a, out),
        Command::Serve(c) => crate::open::serve(c, out),
        Command::InternalExport(a) => crate::open::internal_export(a, out),
        Command::Volume(c) => crate::volume::run(c, out),
        Command::Vm(c) => crate::vm::run(c, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Opening volumes

/// The file that holds the LUKS header: the detached header if given, else the volume.
fn header_path<'a>(volume: &'a Path, args: &'a VolumeArgs) -> &'a Path {
    args.header.as_deref().unwrap_or(volume)
}

fn open_file(path: &Path, write: bool) -> Result<File> {
    let access = if write { Access::Write } else { Access::Read };
    Ok(LuksFile::open_file(path, access)?)
}

/// The limits every header opened by this process is held to (`--kdf-max-*`).
static KDF_LIMITS: std::sync::OnceLock<KdfLimits> = std::sync::OnceLock::new();

/// Sets the limits on what opened headers may ask of an unlock (once, from `main`).
pub(crate) fn set_kdf_limits(limits: KdfLimits) {
    let _ = KDF_LIMITS.set(limits);
}

/// The limits on what opened headers may ask of an unlock.
pub(crate) fn kdf_limits() -> KdfLimits {
    KDF_LIMITS.get().copied().unwrap_or_default()
}

/// The data segment of `vol`, refused when it overlaps the header: `detached` says whether
/// the header lives in a file of its own (`--header`).
pub(crate) fn data_segment(vol: &Volume<HeaderFile>, detached: bool) -> Result<DataSegment> {
    let placement = if detached {
        HeaderPlacement::Detached
    } else {
        HeaderPlacement::Attached
    };
    Ok(vol.data_segment_for(placement)?)
}

/// Opens the LUKS header of a volume, read-only or read-write.
pub(crate) fn open_volume(
    volume: &Path,
    args: &VolumeArgs,
    write: bool,
) -> Result<Volume<HeaderFile>> {
    let files = LuksFile::new(volume, args.header.clone());
    let access = if write { Access::Write } else { Access::Read };
    let open = files.open(access, kdf_limits())?;
    if let Some(warning) = open.damaged_copy() {
        eprintln!("sealvol: warning: {warning}");
    }
    Ok(open.into_volume())
}

pub(crate) fn refuse_read_only(vol: &Volume<HeaderFile>) -> Result<()> {
    if let Some(reason) = vol.read_only() {
        bail!("this volume can only be read: {reason}");
    }
    Ok(())
}

/// Unlocks with a key from `source`; a wrong key becomes a clean "no" (exit 1).
pub(crate) fn unlock(
    vol: &mut Volume<HeaderFile>,
    source: &KeySource,
    slot: Option<u32>,
) -> Result<sealvol_luks::Unlocked> {
    let key = source.read()?;
    unlock_with(vol, key.expose(), slot)
}

/// Unlocks with `key`; a wrong key becomes a clean "no" (exit 1).
pub(crate) fn unlock_with(
    vol: &mut Volume<HeaderFile>,
    key: &[u8],
    slot: Option<u32>,
) -> Result<sealvol_luks::Unlocked> {
    match vol.unlock(key, slot) {
        Ok(u) => Ok(u),
        Err(sealvol_luks::Error::WrongKey) => Err(anyhow!(CleanNo(match slot {
            Some(s) => format!("the key does not open keyslot {s}"),
            None => "no keyslot opens with this key".to_string(),
        }))),
        Err(e) => Err(e).context("cannot unlock the volume"),
    }
}

// ---------------------------------------------------------------------------------------------
// KDF choice

/// The KDF for a new keyslot protecting `key` on `vol` (LUKS1: PBKDF2 with the header's
/// hash), by the library's policy; a hint about how the key was taken goes to stderr.
fn new_keyslot_kdf(
    args: &KdfArgs,
    key: &SecretBytes,
    out: &Output,
    vol: &Volume<HeaderFile>,
) -> Result<KdfParams> {
    let mut policy = args.policy().context("--hash")?;
    let luks1 = match vol {
        Volume::Luks1(v) => {
            policy.hash = v.header().hash();
            true
        }
        Volume::Luks2(_) => false,
    };
    note_key_hint(&policy, key, out);
    Ok(policy.params_for(key.expose(), luks1)?)
}

/// Tells the user when the policy may have taken their key for what it is not.
pub(crate) fn note_key_hint(policy: &KdfPolicy, key: &SecretBytes, out: &Output) {
    if let Some(hint) = policy.hint(key.expose()) {
        out.note(&format!("sealvol: note: {hint}"));
    }
}

pub(crate) fn kdf_json(k: &KdfParams) -> serde_json::Value {
    match k {
        KdfParams::Pbkdf2 { hash, iterations } => {
            json!({"type": "pbkdf2", "hash": hash.as_str(), "iterations": iterations})
        }
        KdfParams::Argon2 {
            variant,
            time,
            memory_kib,
            parallel,
        } => json!({
            "type": match variant { Argon2Variant::Argon2i => "argon2i", Argon2Variant::Argon2id => "argon2id" },
            "time": time, "memory": memory_kib, "cpus": parallel,
        }),
    }
}

pub(crate) fn kdf_human(k: &KdfParams) -> String {
    match k {
        KdfParams::Pbkdf2 { hash, iterations } => format!("pbkdf2-{hash}, {iterations} iterations"),
        KdfParams::Argon2 {
            variant,
            time,
            memory_kib,
            parallel,
        } => format!(
            "{}, time {time}, memory {memory_kib} KiB, {parallel} threads",
            match variant {
                Argon2Variant::Argon2i => "argon2i",
                Argon2Variant::Argon2id => "argon2id",
            }
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// format

/// What LUKS header, if any, the file at `path` starts with.
pub(crate) fn probe_file(path: &Path) -> Option<sealvol_luks::Probe> {
    let mut head = [0u8; sealvol_luks::format::PROBE_LEN];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .ok()?;
    sealvol_luks::probe(&head)
}

fn format(a: FormatArgs, out: &Output) -> Result<()> {
    let version: Version = a.luks_type.parse()?;
    let detached = a.volume.header.is_some();
    let header_file = header_path(&a.volume_path, &a.volume).to_path_buf();
    if probe_file(&header_file).is_some() && !a.batch_mode {
        bail!(
            "{} already holds a LUKS header; formatting destroys its keys. Pass --batch-mode to overwrite it",
            header_file.display()
        );
    }
    let request = NewHeader {
        version,
        cipher: a.cipher.clone(),
        key_size_bits: a.key_size,
        sector_size: a.sector_size,
        detached,
        label: a.label.clone(),
        subsystem: a.subsystem.clone(),
        uuid: a.uuid.clone(),
        keyslot: a.key_slot,
        metadata_size: a.luks2_metadata_size,
        keyslots_size: a.luks2_keyslots_size,
        data_offset_sectors: a.offset,
        kdf: a.kdf.policy().context("--hash")?,
    };
    let key = a.key.source().read()?;
    note_key_hint(&request.kdf, &key, out);

    // Build the whole header area in memory first: every validation and KDF error happens
    // before a byte reaches the disk.
    let started = Instant::now();
    let built = request
        .build(key.expose())
        .with_context(|| format!("cannot build the {} header", version.as_str()))?;
    drop(key);
    let (uuid, segment, header_bytes, kdf) = (built.uuid, built.segment, built.bytes, built.kdf);
    let sector_size = segment.sector_size;
    let luks1 = version == Version::Luks1;

    // Sizes: the data area must exist and hold at least one sector.
    let data_offset = segment.offset;
    let volume_exists = a.volume_path.exists();
    let current_len = if volume_exists {
        std::fs::metadata(&a.volume_path)?.len()
    } else {
        0
    };
    let wanted_len = match a.size {
        Some(s) => {
            if s % sector_size.bytes() as u64 != 0 || s == 0 {
                bail!(
                    "--size {s} is not a positive multiple of the {}-byte sector size",
                    sector_size.bytes()
                );
            }
            Some(data_offset.checked_add(s).context("--size is too large")?)
        }
        None => None,
    };
    let final_len = wanted_len.unwrap_or(current_len);
    if final_len < data_offset + sector_size.bytes() as u64 {
        bail!(
            "{} is {} bytes, too small for a {}-byte data offset and one sector; give --size (for example --size 64M)",
            a.volume_path.display(),
            current_len,
            data_offset
        );
    }

    // Write. Files this command created are removed again if a write fails.
    let mut created: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<()> {
        if !volume_exists {
            created.push(a.volume_path.clone());
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&a.volume_path)
            .with_context(|| format!("cannot create {}", a.volume_path.display()))?;
        if let Some(len) = wanted_len {
            data.set_len(len).with_context(|| {
                format!("cannot size {} to {len} bytes", a.volume_path.display())
            })?;
        }
        let mut hdr = if detached {
            if !header_file.exists() {
                created.push(header_file.clone());
            }
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&header_file)
                .with_context(|| format!("cannot create header file {}", header_file.display()))?
        } else {
            data.try_clone()?
        };
        hdr.seek(SeekFrom::Start(0))?;
        hdr.write_all(&header_bytes)
            .with_context(|| format!("cannot write the header to {}", header_file.display()))?;
        hdr.sync_all()?;
        data.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let elapsed = started.elapsed();
    tracing::info!(uuid = %uuid, ms = elapsed.as_millis() as u64, "formatted");

    let data_len = final_len - data_offset;
    out.result(
        &format!(
            "{uuid}\nFormatted {} as LUKS{} ({} sectors of {} bytes, {}), keyslot {} ({}).",
            a.volume_path.display(),
            if luks1 { 1 } else { 2 },
            data_len / sector_size.bytes() as u64,
            sector_size.bytes(),
            if detached {
                format!("header in {}", header_file.display())
            } else {
                "header attached".into()
            },
            a.key_slot.unwrap_or(0),
            kdf_human(&kdf),
        ),
        json!({
            "uuid": uuid,
            "type": a.luks_type,
            "volume": a.volume_path,
            "header": a.volume.header,
            "keyslot": a.key_slot.unwrap_or(0),
            "kdf": kdf_json(&kdf),
            "sector_size": sector_size.bytes(),
            "data_offset": data_offset,
            "data_size": data_len,
        }),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dump, test-key

fn dump(a: DumpArgs, out: &Output) -> Result<()> {
    let vol = open_volume(&a.volume_path, &a.volume, false)?;
    if out.json() {
        out.result("", crate::dump::json(&vol)?)?;
    } else {
        out.result(&crate::dump::human(&vol)?, json!(null))?;
    }
    Ok(())
}

fn test_key(a: TestKeyArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, false)?;
    let unlocked = unlock(&mut vol, &a.key.source(), a.key_slot)?;
    out.result(
        &format!("The key opens keyslot {}.", unlocked.keyslot),
        json!({"ok": true, "keyslot": unlocked.keyslot}),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// keyslots

fn check_distinct_sources(a: &KeySource, b: &KeySource) -> Result<()> {
    if a == b {
        bail!("the existing key and the new key cannot both come from {a:?}; give one of them with --key-file FILE or --new-key-file FILE");
    }
    Ok(())
}

fn add_key(a: AddKeyArgs, out: &Output) -> Result<()> {
    let old_src = a.key.source();
    let new_src = a.new_key.source();
    check_distinct_sources(&old_src, &new_src)?;
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    let unlocked = unlock(&mut vol, &old_src, None)?;
    let new_key = new_src.read()?;
    let kdf = new_keyslot_kdf(&a.kdf, &new_key, out, &vol)?;
    let slot = vol
        .add_keyslot(&unlocked.volume_key, new_key.expose(), &kdf, a.key_slot)
        .context("cannot add the keyslot")?;
    tracing::info!(uuid = vol.uuid(), keyslot = slot, "keyslot added");
    out.result(
        &format!("Added keyslot {slot} ({}).", kdf_human(&kdf)),
        json!({"keyslot": slot, "kdf": kdf_json(&kdf)}),
    )?;
    Ok(())
}

fn remove_key(a: RemoveKeyArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    let unlocked = unlock(&mut vol, &a.key.source(), None)?;
    vol.remove_keyslot(unlocked.keyslot)
        .context("cannot remove the keyslot")?;
    tracing::info!(
        uuid = vol.uuid(),
        keyslot = unlocked.keyslot,
        "keyslot removed"
    );
    out.result(
        &format!("Removed keyslot {}.", unlocked.keyslot),
        json!({"removed_keyslot": unlocked.keyslot}),
    )?;
    Ok(())
}

fn change_key(a: ChangeKeyArgs, out: &Output) -> Result<()> {
    let old_src = a.key.source();
    let new_src = a.new_key.source();
    check_distinct_sources(&old_src, &new_src)?;
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    let old_key = old_src.read()?;
    let new_key = new_src.read()?;
    let kdf = new_keyslot_kdf(&a.kdf, &new_key, out, &vol)?;
    let slot = match vol.change_key(old_key.expose(), new_key.expose(), Some(&kdf), a.key_slot) {
        Ok(s) => s,
        Err(sealvol_luks::Error::WrongKey) => {
            return Err(anyhow!(CleanNo("no keyslot opens with the old key".into())))
        }
        Err(e) => return Err(e).context("cannot change the key"),
    };
    out.result(
        &format!(
            "The new key is in keyslot {slot} ({}); the old key no longer opens the volume.",
            kdf_human(&kdf)
        ),
        json!({"keyslot": slot, "kdf": kdf_json(&kdf)}),
    )?;
    Ok(())
}

fn confirm(batch_mode: bool, question: &str) -> Result<()> {
    if batch_mode {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Refusing without a terminal to ask; pass --batch-mode");
    }
    eprint!("{question} Type YES (in capitals) to go on: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim_end() != "YES" {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

const BACKUP_WARNING: &str = "Any header backup made earlier (sealvol header-backup, cryptsetup \
luksHeaderBackup, a copy of the file) still holds the keyslots and brings the key back: destroy \
those copies too.";

fn erase(a: EraseArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    confirm(
        a.batch_mode,
        &format!(
            "This wipes every keyslot of {}: its data becomes unreadable.",
            a.volume_path.display()
        ),
    )?;
    let slots: Vec<u32> = vol.keyslots();
    vol.erase().context("cannot erase the keyslots")?;
    tracing::info!(uuid = vol.uuid(), "keyslots erased");
    out.note(&format!("sealvol: warning: {BACKUP_WARNING}"));
    out.result(
        &format!("Wiped {} keyslot(s): {:?}.", slots.len(), slots),
        json!({"erased_keyslots": slots, "warning": BACKUP_WARNING}),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// header backup / restore / repair

fn header_backup(a: HeaderBackupArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, false)?;
    let bytes = vol.header_backup().context("cannot read the header area")?;
    let write = || -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&a.header_backup_file)
            .with_context(|| {
                format!(
                    "cannot create {} (it must not exist yet)",
                    a.header_backup_file.display()
                )
            })?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() != std::io::ErrorKind::AlreadyExists)
        }) {
            let _ = std::fs::remove_file(&a.header_backup_file);
        }
        return Err(e);
    }
    out.note("sealvol: note: the backup holds the keyslots; anyone with it and an old key can open the volume.");
    out.result(
        &format!(
            "Wrote {} bytes of header to {}.",
            bytes.len(),
            a.header_backup_file.display()
        ),
        json!({"backup": a.header_backup_file, "bytes": bytes.len()}),
    )?;
    Ok(())
}

fn header_restore(a: HeaderRestoreArgs, out: &Output) -> Result<()> {
    let backup = std::fs::read(&a.header_backup_file)
        .with_context(|| format!("cannot read {}", a.header_backup_file.display()))?;
    // Validate the backup fully before asking or writing anything.
    let parsed = Volume::open(std::io::Cursor::new(backup.clone())).with_context(|| {
        format!(
            "{} is not a valid LUKS header backup",
            a.header_backup_file.display()
        )
    })?;
    let uuid = parsed.uuid().to_string();
    let path = header_path(&a.volume_path, &a.volume).to_path_buf();
    confirm(
        a.batch_mode,
        &format!(
            "This replaces the header of {} with the backup (UUID {uuid}).",
            path.display()
        ),
    )?;
    let file = open_file(&path, true)?;
    Volume::header_restore(HeaderFile::new(file), &backup).context("cannot restore the header")?;
    out.result(
        &format!("Restored the header of {} (UUID {uuid}).", path.display()),
        json!({"restored": path, "uuid": uuid}),
    )?;
    Ok(())
}

fn repair(a: RepairArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    let repaired = vol.repair().context("cannot repair the header")?;
    out.result(
        if repaired {
            "Rewrote the damaged header copy."
        } else {
            "Both header copies are valid; nothing to do."
        },
        json!({"repaired": repaired}),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tokens

fn token_add(a: TokenAddArgs, out: &Output) -> Result<()> {
    let text = if a.json_file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the token from stdin")?;
        s
    } else {
        std::fs::read_to_string(&a.json_file)
            .with_context(|| format!("cannot read {}", a.json_file.display()))?
    };
    let token: serde_json::Value =
        serde_json::from_str(&text).context("the token is not valid JSON")?;
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    let id = vol
        .luks2_mut("tokens")?
        .add_token(token, a.token_id)
        .context("cannot add the token")?;
    out.result(&format!("Added token {id}."), json!({"token_id": id}))?;
    Ok(())
}

fn token_remove(a: TokenIdArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, true)?;
    refuse_read_only(&vol)?;
    vol.luks2_mut("tokens")?
        .remove_token(a.token_id)
        .context("cannot remove the token")?;
    out.result(
        &format!("Removed token {}.", a.token_id),
        json!({"removed_token_id": a.token_id}),
    )?;
    Ok(())
}

fn token_export(a: TokenIdArgs, out: &Output) -> Result<()> {
    let mut vol = open_volume(&a.volume_path, &a.volume, false)?;
    let token = vol
        .luks2_mut("tokens")?
        .header()
        .metadata()
        .tokens
        .get(&a.token_id)
        .with_context(|| format!("the volume has no token {}", a.token_id))?;
    out.result(&serde_json::to_string(token)?, token.clone())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// import / export

fn import(a: ImportArgs, out: &Output) -> Result<()> {
    let key_src = a.key.source();
    let src_is_stdin = a.src.as_os_str() == "-";
    if src_is_stdin && key_src == KeySource::Stdin {
        bail!("the plaintext comes from stdin, so the key cannot: give it with --key-file FILE or --key-fd N");
    }
    let mut vol = open_volume(&a.volume_path, &a.volume, false)?;
    refuse_read_only(&vol)?;
    let segment = data_segment(&vol, a.volume.header.is_some())?;
    let mut data = open_file(&a.volume_path, true)?;
    let device_len = data.metadata()?.len();
    let capacity = segment
        .data_len(device_len)
        .context("the data segment does not fit the volume file")?;

    let (mut src, src_len): (Box<dyn Read + Send>, Option<u64>) = if src_is_stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(&a.src).with_context(|| format!("cannot open {}", a.src.display()))?;
        let len = f.metadata()?.len();
        (Box::new(f), Some(len))
    };
    if let Some(len) = src_len {
        if len > capacity {
            bail!(
                "{} is {len} bytes but the volume's data area holds {capacity}; make the volume larger (format --size) or import less",
                a.src.display()
            );
        }
    }
    let unlocked = unlock(&mut vol, &key_src, None)?;
    let bar = out.progress(src_len, "import");
    let started = Instant::now();
    let copied = sealvol_luks::data::import(
        &mut src,
        &mut data,
        &segment,
        &unlocked.volume_key,
        Some(capacity),
        &mut |n| bar.set_position(n),
    )
    .context("import failed")?;
    data.sync_all().context("cannot sync the volume")?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    out.result(
        &format!(
            "Imported {} bytes into {} ({:.0} MB/s).",
            copied.bytes,
            a.volume_path.display(),
            copied.bytes as f64 / secs.max(1e-9) / 1e6
        ),
        json!({"bytes": copied.bytes, "seconds": secs}),
    )?;
    Ok(())
}

fn export(a: ExportArgs, out: &Output) -> Result<()> {
    let key_src = a.key.source();
    let mut vol = open_volume(&a.volume_path, &a.volume, false)?;
    let segment = data_segment(&vol, a.volume.header.is_some())?;
    let mut data = open_file(&a.volume_path, false)?;
    let device_len = data.metadata()?.len();
    let len = segment
        .data_len(device_len)
        .context("the data segment does not fit the volume file")?;
    let unlocked = unlock(&mut vol, &key_src, None)?;

    let dst_is_stdout = a.dst.as_os_str() == "-";
    let created = !dst_is_stdout && !a.dst.exists();
    // An existing DST is overwritten in place and then cut to length (as `qemu-img convert -n`
    // does), which spares the kernel freeing and reallocating every page of it.
    let dst_file = if dst_is_stdout {
        None
    } else {
        Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&a.dst)
                .with_context(|| format!("cannot create {}", a.dst.display()))?,
        )
    };
    let bar = out.progress(Some(len), "export");
    let started = Instant::now();
    let result = (|| -> Result<sealvol_luks::data::Copied> {
        let mut progress = |n| bar.set_position(n);
        let copied = match &dst_file {
            Some(f) => {
                let mut w = f;
                let c = sealvol_luks::data::export(
                    &mut data,
                    &mut w,
                    &segment,
                    &unlocked.volume_key,
                    len,
                    &mut progress,
                )?;
                if f.metadata()?.is_file() {
                    f.set_len(c.bytes)
                        .with_context(|| format!("cannot cut {} to length", a.dst.display()))?;
                }
                c
            }
            None => {
                let mut w = std::io::stdout().lock();
                sealvol_luks::data::export(
                    &mut data,
                    &mut w,
                    &segment,
                    &unlocked.volume_key,
                    len,
                    &mut progress,
                )?
            }
        };
        Ok(copied)
    })();
    bar.finish_and_clear();
    let copied = match result {
        Ok(c) => c,
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(&a.dst);
            }
            return Err(e.context("export failed"));
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if !dst_is_stdout || out.json() {
        // With `-` as DST stdout carries the data; the summary goes to stderr then.
        let summary = format!(
            "Exported {} bytes to {} ({:.0} MB/s).",
            copied.bytes,
            a.dst.display(),
            copied.bytes as f64 / secs.max(1e-9) / 1e6
        );
        if dst_is_stdout {
            out.note(&summary);
        } else {
            out.result(&summary, json!({"bytes": copied.bytes, "seconds": secs}))?;
        }
    }
    Ok(())
}
