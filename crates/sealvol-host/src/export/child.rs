//! The background export, and its one readiness handshake (the same for mounts and NBD).
//!
//! The parent ([`super::export`] in [`super::Mode::Child`]) runs `EXE __export` ([`VERB`]):
//! nothing else on the command line. Its pipes:
//!
//! - stdin: one line of JSON, the [`ChildSpec`] (what to open and how to serve it: paths,
//!   flags and limits, never a key), then the volume key's bytes (nothing for a verity
//!   image; for an overlay its 64-byte layer key, then its LUKS base's volume key, if
//!   any). The parent closes it once written, so the child reads it to end of file;
//! - stdout: a pipe on which the child writes exactly one line, a JSON message: ready (with
//!   the [`Ready`] it set up), wrong key, or error (with its message);
//! - stderr: the export's log (`export.log` in the volume's runtime directory, or a file the
//!   caller made).
//!
//! The child ([`main`]) leaves the caller's session, opens the volume again from its spec and
//! checks the key it was handed against the header, sets up, records itself, reports, and
//! serves until SIGTERM. A set-up that fails is undone before the report; a child that dies
//! before reporting is reported as an error with the end of its log. The parent reads the
//! one message and returns: it never polls for sockets or interprets exit codes. A thread
//! of the parent reaps the child once it stops, so a long-lived caller keeps no zombies.
//!
//! A program that embeds this crate starts exports with its own executable (the default,
//! [`Launcher::default`]) and, when its first argument is [`VERB`], calls [`main`]: the
//! `sealvol` binary does so with its hidden `__export` verb.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{check_serve, replan, OpenSpec, Prepared, Ready, Serve, SourceSpec};
use crate::keys::KeySource;
use crate::state::StateDir;
use crate::{Error, Result};

/// The hidden verb (first argument) that makes a program a background export.
pub const VERB: &str = "__export";

/// Which executable runs background exports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launcher {
    exe: Option<PathBuf>,
}

impl Launcher {
    /// Exports run `exe`, which must handle [`VERB`] (see the module docs).
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Launcher {
            exe: Some(exe.into()),
        }
    }

    /// The executable: the one given, else this process's own ([`std::env::current_exe`]).
    ///
    /// # Errors
    /// [`Error::Io`] when this process's executable cannot be found.
    pub fn exe(&self) -> Result<PathBuf> {
        match &self.exe {
            Some(e) => Ok(e.clone()),
            None => std::env::current_exe().map_err(|e| {
                Error::io(
                    "cannot find this program's executable to start the export",
                    e,
                )
            }),
        }
    }
}

/// What a background export is told on its stdin before the key: everything but the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// The runtime directory it records itself in.
    pub run_dir: PathBuf,
    /// What to open (canonical paths; a verity root already checked, so no signature).
    pub open: OpenSpec,
    /// How to serve it.
    pub serve: Serve,
}

/// The longest spec line a child accepts.
const MAX_SPEC: usize = 64 << 10;

impl ChildSpec {
    /// The spec as the one line that precedes the key on the child's stdin.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a path that is not UTF-8 (the handshake speaks JSON).
    pub fn to_line(&self) -> Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self).map_err(|e| {
            Error::Invalid(format!(
                "a background export needs UTF-8 paths ({e}); rename the file"
            ))
        })?;
        line.push(b'\n');
        Ok(line)
    }

    /// Splits what a child read on stdin into its spec and the key after it.
    ///
    /// # Errors
    /// [`Error::Invalid`] when there is no spec line or it does not parse.
    pub fn from_input(input: &[u8]) -> Result<(Self, &[u8])> {
        let nl = input
            .iter()
            .take(MAX_SPEC)
            .position(|&b| b == b'\n')
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no export spec line (of at most {MAX_SPEC} bytes) on stdin; `{VERB}` is started by sealvol itself"
                ))
            })?;
        let spec = serde_json::from_slice(&input[..nl])
            .map_err(|e| Error::Invalid(format!("the export spec does not parse: {e}")))?;
        Ok((spec, &input[nl + 1..]))
    }
}

/// The one line a background export writes on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Message {
    /// Set up and serving.
    Ready {
        /// What was set up.
        ready: Ready,
    },
    /// The key handed over does not open the volume; nothing was set up.
    WrongKey {
        /// Why.
        message: String,
    },
    /// The set-up failed and was undone.
    Error {
        /// Why.
        message: String,
    },
}

/// The last lines of the log `f` (for a child that stopped without a report).
fn log_tail(f: &mut File) -> String {
    let mut text = String::new();
    let _ = f.rewind().and_then(|()| f.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..]
        .join("\n")
        .trim()
        .to_string()
}

/// Starts the background export of `prepared` as `serve`, hands it the volume key, and
/// returns what it set up once it serves.
pub(super) fn spawn(
    run: &StateDir,
    prepared: Prepared,
    serve: &Serve,
    launcher: &Launcher,
    log: Option<(&Path, &File)>,
) -> Result<Ready> {
    let Prepared {
        plan,
        volume_key,
        base_key,
    } = prepared;
    let spec = ChildSpec {
        run_dir: run.root().to_path_buf(),
        open: plan.spec(),
        serve: serve.clone(),
    };
    // A new log, made through the runtime directory (a link planted there is unlinked, never
    // written through), or the caller's; read back through its descriptor on failure.
    let (log_path, log_file) = match log {
        Some((p, f)) => (
            p.to_path_buf(),
            f.try_clone()
                .map_err(|e| Error::io(format!("cannot use the log {}", p.display()), e))?,
        ),
        None => run.create_log(&plan.id)?,
    };
    let mut log_reader = log_file
        .try_clone()
        .map_err(|e| Error::io(format!("cannot read back {}", log_path.display()), e))?;
    let exe = launcher.exe()?;
    let spec_line = spec.to_line()?;
    let mut child = Command::new(&exe)
        .arg(VERB)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|source| Error::Spawn {
            program: exe.display().to_string(),
            package: "sealvol",
            source,
        })?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A child that died already is reported below, from its message or its log.
        let handed = stdin
            .write_all(&spec_line)
            .and_then(|()| match &volume_key {
                Some(key) => stdin.write_all(key.expose()),
                None => Ok(()),
            })
            .and_then(|()| match &base_key {
                Some(key) => stdin.write_all(key.expose()),
                None => Ok(()),
            });
        if let Err(e) = handed {
            tracing::warn!(error = %e, "cannot hand the spec and key to the export process");
        }
        // Dropping closes the pipe: the export reads to end of file.
    }
    drop(volume_key);
    drop(base_key);
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let message = read
        .ok()
        .and_then(|_| serde_json::from_str::<Message>(line.trim()).ok());
    match message {
        Some(Message::Ready { ready }) => {
            // It serves on until it is stopped; reap it then, so that a long-lived caller
            // (a daemon) keeps no zombie. A caller that exits first leaves it to init.
            let reaper = std::thread::Builder::new()
                .name(format!("reap-export-{}", child.id()))
                .spawn(move || {
                    let _ = child.wait();
                });
            if let Err(e) = reaper {
                tracing::warn!(error = %e, "cannot start a thread to reap the export later");
            }
            Ok(ready)
        }
        other => {
            // Its set-up is undone by the time it reports; wait for it to exit.
            let status = child.wait();
            Err(match other {
                Some(Message::WrongKey { message }) => Error::WrongKey(message),
                Some(Message::Error { message }) => Error::Export { message },
                _ => Error::Export {
                    message: format!(
                        "the export process stopped ({}) without reporting: {}",
                        status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                        match log_tail(&mut log_reader) {
                            t if t.is_empty() => format!("see {}", log_path.display()),
                            t => t,
                        }
                    ),
                },
            })
        }
    }
}

/// The background export's entry point (the hidden [`VERB`]): reads its spec and the volume
/// key from stdin, then [`run`]s.
///
/// # Errors
/// A missing or unreadable spec; then as [`run`].
pub fn main() -> Result<()> {
    let input = KeySource::Stdin.read_with_limit(MAX_SPEC as u64 + crate::keys::MAX_KEY_BYTES)?;
    let (spec, key) = ChildSpec::from_input(input.expose())?;
    let (key, base_key) = match &spec.open.source {
        SourceSpec::Luks { .. } if key.is_empty() => {
            return Err(Error::Invalid("no volume key after the export spec".into()))
        }
        SourceSpec::Luks { .. } => (Some(sealvol_crypto::SecretBytes::from_slice(key)), None),
        SourceSpec::Verity(_) => (None, None),
        SourceSpec::Overlay(_) if key.len() < LAYER_KEY => {
            return Err(Error::Invalid(
                "no overlay layer key after the export spec".into(),
            ))
        }
        SourceSpec::Overlay(o) => {
            let (layer, base) = key.split_at(LAYER_KEY);
            let base = (o.base.needs_key() && !base.is_empty())
                .then(|| sealvol_crypto::SecretBytes::from_slice(base));
            (Some(sealvol_crypto::SecretBytes::from_slice(layer)), base)
        }
    };
    drop(input);
    run_with_base(&spec, key, base_key)
}

/// The length of an overlay's layer key: what comes first after the spec line.
const LAYER_KEY: usize = 64;

/// The background export: opens `spec.open` again and checks `key` against its header,
/// serves it as `spec.serve`, and reports on stdout once (see the module docs); then serves
/// until SIGTERM or SIGINT.
///
/// # Errors
/// Whatever failed (reported on stdout first, when before the report).
pub fn run(spec: &ChildSpec, key: Option<sealvol_crypto::SecretBytes>) -> Result<()> {
    run_with_base(spec, key, None)
}

/// [`run`] with an overlay's LUKS base's volume key.
///
/// # Errors
/// As [`run`].
pub fn run_with_base(
    spec: &ChildSpec,
    key: Option<sealvol_crypto::SecretBytes>,
    base_key: Option<sealvol_crypto::SecretBytes>,
) -> Result<()> {
    // Leave the caller's session: its terminal's signals are not ours.
    let _ = rustix::process::setsid();
    let run = StateDir::new(&spec.run_dir);
    let reported = std::cell::Cell::new(false);
    let say = |m: &Message| -> std::io::Result<()> {
        let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    };
    let result = (|| -> Result<Ready> {
        let (serve, tls) = check_serve(&spec.serve)?;
        let plan = replan(&spec.open, key.as_ref(), base_key.as_ref())?;
        super::serve::serve_here(
            &run,
            Prepared {
                plan,
                volume_key: key,
                base_key,
            },
            &serve,
            tls,
            &mut |ready| {
                if let Err(e) = say(&Message::Ready {
                    ready: ready.clone(),
                }) {
                    tracing::error!(error = %e, "cannot report to the parent");
                }
                reported.set(true);
            },
            true,
        )
    })();
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "export ended with an error");
            if !reported.get() {
                let message = e.to_string();
                let _ = say(&if e.is_wrong_key() {
                    Message::WrongKey { message }
                } else {
                    Message::Error { message }
                });
            }
            Err(e)
        }
    }
}
