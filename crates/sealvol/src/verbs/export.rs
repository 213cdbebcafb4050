//! `sealvol open`, `close`, `serve nbd`, `verity open` and the hidden `__export`: the command
//! line of `sealvol_host::export`, which checks, unlocks and serves. `open` (and `verity
//! open`) return once a background export serves the volume (it got the key on a pipe,
//! never argv or the environment); with `--foreground`, and for `serve nbd`, this process
//! serves until SIGTERM or SIGINT. `close` stops an export from outside.

use std::time::Duration;

use anyhow::Result;
use sealvol_host::export::{
    self, KeyInput, Launcher, Mode, MountSpec, NbdEndpoint, NbdSpec, OpenSpec, Ready,
    RootSignature, Serve, SourceSpec, VeritySpec,
};
use sealvol_host::state::StateDir;
use serde_json::json;

use crate::cli::export::{CloseArgs, OpenArgs, OverlayOpenArgs, ServeCommand, VerityOpenArgs};
use crate::output::Output;
use sealvol_host::keys::KeySource;

/// How long `close` waits for an export to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// open, verity open, serve nbd: typed options, one library call, the report

/// What `open`, `verity open` and `serve nbd` print once the volume is served.
fn print_ready(out: &Output, r: &Ready) -> Result<()> {
    Ok(match r {
        Ready::Mounted(m) => out.result(
            &format!(
                "Opened {} on {} (loop device {}, export process {}).{}",
                m.volume.display(),
                m.mount_point.display(),
                m.loop_device.display(),
                m.pid,
                m.checkpoint
                    .as_ref()
                    .map(|c| format!("\ncheckpoint: {c}"))
                    .unwrap_or_default()
            ),
            json!({
                "ok": true,
                "volume": m.volume,
                "mount_point": m.mount_point,
                "loop_device": m.loop_device,
                "fuse_file": m.fuse_file,
                "pid": m.pid,
                "read_only": m.read_only,
                "size": m.size,
                "mkfs": m.mkfs,
                "checkpoint": m.checkpoint,
            }),
        ),
        Ready::Nbd(n) => out.result(
            &format!(
                "Serving {} over NBD at {} ({}{}); stop with SIGTERM, Ctrl-C or `sealvol close`.",
                n.volume.display(),
                n.endpoint,
                n.uri,
                if n.tls {
                    ", TLS only, with a client certificate"
                } else {
                    ""
                }
            ),
            json!({"volume": n.volume, "endpoint": n.endpoint, "uri": n.uri, "tls": n.tls, "pid": n.pid, "read_only": n.read_only, "checkpoint": n.checkpoint}),
        ),
    }?)
}

/// Serves `spec` as `serve`: in this process when `foreground` (reporting once it serves),
/// else in a background export of this binary (reporting once it returns).
fn start(
    spec: &OpenSpec,
    key: KeyInput<'_>,
    serve: &Serve,
    foreground: bool,
    out: &Output,
) -> Result<()> {
    let run = StateDir::from_env();
    let limits = crate::cli::kdf_limits();
    if foreground {
        let mut report = |r: &Ready| {
            let _ = print_ready(out, r);
        };
        let done = export::export(&run, spec, key, limits, serve, Mode::Here(&mut report))?;
        // An overlay's last commit: where it stands now (give it back with
        // --expect-checkpoint next time).
        let cp = match &done {
            Ready::Mounted(m) => m.checkpoint.clone(),
            Ready::Nbd(n) => n.checkpoint.clone(),
        };
        if let Some(cp) = cp {
            out.result(
                &format!("Stopped.\ncheckpoint: {cp}"),
                json!({"stopped": true, "checkpoint": cp}),
            )?;
        }
        return Ok(());
    }
    let launcher = Launcher::default();
    let ready = export::export(
        &run,
        spec,
        key,
        limits,
        serve,
        Mode::Child {
            launcher: &launcher,
            log: None,
        },
    )?;
    print_ready(out, &ready)
}

/// The open spec of `open` and `serve nbd`: a LUKS volume, or an overlay over its base.
fn spec_of(
    volume: std::path::PathBuf,
    header: Option<std::path::PathBuf>,
    read_only: bool,
    o: &OverlayOpenArgs,
) -> Result<OpenSpec> {
    Ok(OpenSpec::for_volume(
        volume,
        header,
        read_only,
        super::overlay::base_spec(&o.base),
        o.expect_checkpoint.clone(),
    )?)
}

/// Starts with the key (and a LUKS base's key, which cannot come from the same stream).
fn start_keyed(
    spec: &OpenSpec,
    key: &KeySource,
    o: &OverlayOpenArgs,
    serve: &Serve,
    foreground: bool,
    out: &Output,
) -> Result<()> {
    let main = KeyInput::Source(key);
    match super::overlay::base_key_source(&o.base) {
        Some(base) => {
            if base == *key {
                anyhow::bail!(
                    "the overlay's key and its base's key cannot both come from {}; give one with --key-file FILE or --base-key-file FILE",
                    key.describe()
                );
            }
            let base = KeyInput::Source(&base);
            start(
                spec,
                KeyInput::WithBase(&main, &base),
                serve,
                foreground,
                out,
            )
        }
        None => start(spec, main, serve, foreground, out),
    }
}

pub fn open(a: OpenArgs, out: &Output) -> Result<()> {
    let spec = spec_of(a.volume_path, a.volume.header, a.read_only, &a.overlay)?;
    let serve = Serve::Mount(MountSpec {
        mount_point: a.mount,
        mkfs: a.mkfs,
    });
    start_keyed(
        &spec,
        &a.key.source(),
        &a.overlay,
        &serve,
        a.foreground,
        out,
    )
}

/// `sealvol verity open`: checks the signature and the root hash, then mounts the image
/// read-only through verified reads (FUSE → loop → mount). A corrupt block fails the reads
/// that touch it with EIO.
pub fn verity_open(a: VerityOpenArgs, out: &Output) -> Result<()> {
    let spec = OpenSpec {
        volume: a.image,
        read_only: true,
        source: SourceSpec::Verity(VeritySpec {
            hash: a.hash_file,
            hash_offset: a.hash_offset,
            root: a.root,
            signature: match (a.signature, a.public_key) {
                (Some(signature), Some(public_key)) => Some(RootSignature {
                    signature,
                    public_key,
                }),
                _ => None,
            },
        }),
    };
    let serve = Serve::Mount(MountSpec {
        mount_point: a.mount,
        mkfs: None,
    });
    start(&spec, KeyInput::None, &serve, a.foreground, out)
}

pub fn serve(c: ServeCommand, out: &Output) -> Result<()> {
    match c {
        ServeCommand::Nbd(a) => {
            let spec = spec_of(a.volume_path, a.volume.header, a.read_only, &a.overlay)?;
            let endpoint = match (a.socket, a.listen) {
                (Some(p), _) => NbdEndpoint::Socket(p),
                (None, Some(addr)) => NbdEndpoint::Tcp(addr),
                (None, None) => anyhow::bail!("give --socket PATH or --listen 127.0.0.1:PORT"),
            };
            let serve = Serve::Nbd(NbdSpec {
                endpoint,
                tls_creds: a.tls_creds,
                insecure_plaintext: a.insecure_plaintext,
                name: a.name,
                max_connections: a.shared,
                handshake_limit: Duration::from_secs(a.handshake_limit),
                send_timeout: Duration::from_secs(a.send_timeout),
                max_in_flight: a.max_in_flight,
            });
            start_keyed(&spec, &a.key.source(), &a.overlay, &serve, true, out)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// close

pub fn close(a: CloseArgs, out: &Output) -> Result<()> {
    let closed = export::close(&StateDir::from_env(), &a.target, STOP_TIMEOUT)?;
    let Some(c) = closed else {
        let target = std::fs::canonicalize(&a.target).unwrap_or_else(|_| a.target.clone());
        out.result(
            &format!("{} is not open; nothing to do.", a.target.display()),
            json!({"closed": false, "target": target}),
        )?;
        return Ok(());
    };
    let e = &c.entry;
    let where_ = e
        .mount_point
        .as_ref()
        .map(|m| format!(" (was mounted on {})", m.display()))
        .or_else(|| e.nbd.as_ref().map(|n| format!(" (was served at {n})")))
        .unwrap_or_default();
    let cp = c.stopped.checkpoint.map(|c| c.to_string());
    out.result(
        &format!(
            "Closed {}{where_}.{}",
            e.volume.display(),
            cp.as_ref()
                .map(|c| format!("\ncheckpoint: {c}"))
                .unwrap_or_default()
        ),
        json!({
            "closed": true,
            "volume": e.volume,
            "mount_point": e.mount_point,
            "loop_device": e.loop_device,
            "pid": e.pid,
            "export_was_running": c.stopped.export_was_running,
            "checkpoint": cp,
        }),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// __export

/// The background export of `open`, `verity open`, `volume` and `vm`: the library's child,
/// which reads its spec and key on stdin.
pub fn internal_export(_out: &Output) -> Result<()> {
    Ok(export::child::main()?)
}
