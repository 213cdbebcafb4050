//! `sealvol verity …`: dm-verity hash trees and signed root hashes (issue 3).
//!
//! The verbs follow `veritysetup` (cryptsetup 2.6): `format DATA HASH` prints the root hash,
//! `verify DATA HASH ROOT` exits 0 when every block matches and 1 naming the first bad block;
//! `dump HASH` prints the superblock. On top: `sign`, `verify --signature`, `keygen`, and
//! `read` (verified reads of the image, what the kernel target would serve). The work is
//! `sealvol_host::verity_file`'s; here are the options and the printing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use sealvol_host::verity_file::{
    self as vf, FormatTree, ReadTo, ReadTree, Root, SignTree, SignatureCheck, TreeInfo,
    TreeOptions, Verification, VerifyTree,
};
use sealvol_verity::{HashAlgorithm, HashType, Salt, Uuid};
use serde_json::json;

use crate::cli::verity::{
    DumpArgs, FormatArgs, KeygenArgs, ReadArgs, SignArgs, TreeArgs, VerifyArgs,
};
use crate::output::{CleanNoWith, Output};

impl TreeArgs {
    /// The library's tree options.
    fn options(&self) -> Result<TreeOptions> {
        Ok(TreeOptions {
            algorithm: self
                .hash
                .as_deref()
                .map(HashAlgorithm::from_name)
                .transpose()?,
            hash_type: self.format.map(HashType::from_number).transpose()?,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt: self.salt.as_deref().map(Salt::from_hex).transpose()?,
            hash_offset: self.hash_offset,
            no_superblock: self.no_superblock,
        })
    }
}

/// ROOT, or else --root-hash-file.
fn root(root: Option<String>, file: Option<PathBuf>) -> Result<Root> {
    match (root, file) {
        (Some(r), _) => Ok(Root::Hex(r)),
        (None, Some(f)) => Ok(Root::File(f)),
        (None, None) => bail!("give the root hash (ROOT) or --root-hash-file"),
    }
}

/// veritysetup's format/dump listing.
fn header_lines(hash_path: &Path, t: &TreeInfo, root: Option<&str>) -> String {
    let mut s = format!("VERITY header information for {}\n", hash_path.display());
    s += &format!(
        "UUID:            \t{}\n",
        t.uuid.as_deref().unwrap_or_default()
    );
    s += &format!("Hash type:       \t{}\n", t.hash_type);
    s += &format!("Data blocks:     \t{}\n", t.data_blocks);
    s += &format!("Data block size: \t{}\n", t.data_block_size);
    s += &format!("Hash blocks:     \t{}\n", t.hash_blocks);
    s += &format!("Hash block size: \t{}\n", t.hash_block_size);
    s += &format!("Hash algorithm:  \t{}\n", t.hash_algorithm);
    s += &format!("Salt:            \t{}\n", t.salt);
    if let Some(r) = root {
        s += &format!("Root hash:      \t{r}\n");
    }
    if t.hash_offset == 0 {
        s += &format!("Hash device size: \t{} [bytes]\n", t.hash_device_size);
    }
    s.trim_end().to_owned()
}

pub fn format(a: FormatArgs, out: &Output) -> Result<()> {
    let req = FormatTree {
        tree: a.tree.options()?,
        uuid: a.uuid.as_deref().map(Uuid::parse).transpose()?,
        data: a.data,
        hash: a.hash_device,
        root_hash_file: a.root_hash_file,
    };
    let made = vf::format(&req, &mut out.bar("verity format"))?;
    if let Some(w) = &made.warning {
        out.note(&format!("warning: {w}"));
    }
    let human = header_lines(&made.hash_device, &made.tree, Some(&made.root_hash));
    Ok(out.result(&human, serde_json::to_value(&made)?)?)
}

pub fn verify(a: VerifyArgs, out: &Output) -> Result<()> {
    let req = VerifyTree {
        tree: a.tree.options()?,
        root: root(a.root, a.root_hash_file)?,
        signature: match (a.signature, a.public_key) {
            (Some(signature), Some(public_key)) => Some(SignatureCheck {
                signature,
                public_key,
            }),
            _ => None,
        },
        data: a.data,
        hash: a.hash_device,
        all: a.all,
    };
    let v = match vf::verify(&req, &mut out.bar("verity verify")) {
        Err(e @ sealvol_host::Error::SignatureRefused { .. }) => {
            let details = json!({"signature": {"valid": false}});
            return Err(clean_no(e.to_string(), details));
        }
        r => r?,
    };
    report_verification(&req.data, req.all, &v, out)
}

/// A clean "no" (exit 1) whose JSON error document carries `details` (`failures`, …) next
/// to the `ok`, `error` and `exit_code` fields every failed command prints.
fn clean_no(message: String, details: serde_json::Value) -> anyhow::Error {
    anyhow!(CleanNoWith { message, details })
}

fn report_verification(data: &Path, all: bool, v: &Verification, out: &Output) -> Result<()> {
    if v.ok {
        let signed = match v.signature {
            Some(_) => " (signature valid)",
            None => "",
        };
        let human = format!(
            "Verification of {} succeeded: {} data blocks of {} bytes match root hash {}{signed}.",
            data.display(),
            v.tree.data_blocks,
            v.tree.data_block_size,
            v.root_hash
        );
        return Ok(out.result(&human, serde_json::to_value(v)?)?);
    }
    if all && !out.json() {
        for f in &v.failures {
            out.note(&format!("verification failed: {}", f.message));
        }
    }
    let more = match v.failures.len() {
        1 => String::new(),
        n => format!(" ({n} corrupt blocks in all)"),
    };
    let unverifiable = match v.data_blocks_unverifiable {
        0 => String::new(),
        n => format!("; {n} data blocks could not be checked below corrupt hash blocks"),
    };
    let msg = format!(
        "verification of {} failed: {}{more}{unverifiable}",
        data.display(),
        v.failures[0].message
    );
    Err(clean_no(msg, serde_json::to_value(v)?))
}

pub fn dump(a: DumpArgs, out: &Output) -> Result<()> {
    let info = vf::dump(&a.hash_device, a.hash_offset)?;
    let human = header_lines(&a.hash_device, &info, None);
    Ok(out.result(&human, serde_json::to_value(&info)?)?)
}

pub fn sign(a: SignArgs, out: &Output) -> Result<()> {
    let req = SignTree {
        tree: a.tree.options()?,
        root: root(a.root, a.root_hash_file)?,
        hash: a.hash_device,
        private_key: a.private_key,
        signature_out: a.signature_out,
        message_out: a.message_out,
    };
    let s = vf::sign(&req)?;
    let human = format!(
        "Signed root hash {} and its parameters with ed25519 key {}: {}",
        s.root_hash,
        s.public_key,
        s.signature.display()
    );
    Ok(out.result(&human, serde_json::to_value(&s)?)?)
}

pub fn keygen(a: KeygenArgs, out: &Output) -> Result<()> {
    let k = vf::keygen(&a.private_key, a.public_out.as_deref())?;
    let human = format!(
        "ed25519 key pair: private {} (PKCS#8 PEM, mode 0600), public {} (SPKI PEM), \
         public key {}",
        k.private_key.display(),
        k.public_key_file.display(),
        k.public_key
    );
    Ok(out.result(&human, serde_json::to_value(&k)?)?)
}

pub fn read(a: ReadArgs, out: &Output) -> Result<()> {
    let req = ReadTree {
        tree: a.tree.options()?,
        root: Root::Hex(a.root),
        data: a.data,
        hash: a.hash_device,
    };
    let to_stdout = a.output.as_os_str() == "-";
    let mut stdout = std::io::stdout().lock();
    let to = match to_stdout {
        true => ReadTo::Stream(&mut stdout),
        false => ReadTo::File(&a.output),
    };
    let bytes = vf::read(&req, to, &mut out.bar("verity read"))?;
    drop(stdout);
    if !to_stdout {
        let human = format!("{bytes} verified bytes written to {}", a.output.display());
        let json = json!({"ok": true, "bytes": bytes, "output": a.output});
        out.result(&human, json)?;
    }
    Ok(())
}
