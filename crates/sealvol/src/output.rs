//! Results on stdout (human or JSON), diagnostics on stderr, progress bars on a terminal;
//! the clean "no"s a verb ends with (exit code 1).

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use sealvol_host::Progress;
use serde_json::Value;

/// A clean "no": the key does not open the volume, or a check failed. Exit code 1.
#[derive(Debug)]
pub struct CleanNo(pub String);

impl std::fmt::Display for CleanNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CleanNo {}

/// A clean "no" (exit code 1) whose JSON error document carries details next to `error`
/// and `exit_code` (`failures` of a verification, `signature` ...).
#[derive(Debug)]
pub struct CleanNoWith {
    /// What the user reads.
    pub message: String,
    /// Merged into the JSON error document.
    pub details: serde_json::Value,
}

impl std::fmt::Display for CleanNoWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CleanNoWith {}

/// How results are printed.
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints a result: `human` in text mode, `json` as one JSON document in JSON mode.
    pub fn result(&self, human: &str, json: Value) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, &json)?;
            writeln!(stdout)?;
        } else if !human.is_empty() {
            writeln!(stdout, "{human}")?;
        }
        stdout.flush()
    }

    /// A note for the user on stderr (warnings, hints); never on stdout.
    pub fn note(&self, msg: &str) {
        eprintln!("{msg}");
    }

    /// Reports a failed command: message (with its causes, each once: a library error's
    /// message often ends with its cause already) on stderr, and in JSON mode a
    /// `{"error", "exit_code"}` object on stdout.
    pub fn error(&self, err: &anyhow::Error, code: u8) {
        let message = error_message(err);
        eprintln!("sealvol: {message}");
        if self.json {
            let mut v = err
                .chain()
                .find_map(|c| c.downcast_ref::<CleanNoWith>())
                .map(|c| c.details.clone())
                .filter(Value::is_object)
                .unwrap_or_else(|| serde_json::json!({}));
            v["ok"] = false.into();
            v["error"] = message.into();
            v["exit_code"] = code.into();
            let _ = writeln!(std::io::stdout(), "{v}");
        }
    }

    /// A byte-count progress bar for a long copy, drawn on a terminal (stderr) from the
    /// moment the copy starts; hidden otherwise and in JSON mode.
    pub fn bar(&self, what: &'static str) -> Bar {
        Bar {
            what,
            shown: !self.json && std::io::stderr().is_terminal(),
            bar: None,
        }
    }
}

/// A progress bar a library copy drives ([`Progress`]); cleared when dropped.
pub struct Bar {
    what: &'static str,
    shown: bool,
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn start(&mut self, total: Option<u64>) {
        if !self.shown {
            return;
        }
        let (bar, template) = match total {
            Some(t) => (
                ProgressBar::new(t),
                "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ),
            None => (
                ProgressBar::new_spinner(),
                "{msg} {spinner} {bytes} {binary_bytes_per_sec}",
            ),
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(self.what);
        self.bar = Some(bar);
    }

    fn at(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// An error with its causes, each once: a library error's message often ends with its cause
/// already.
fn error_message(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1).map(ToString::to_string) {
        if !message.ends_with(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let missing = std::fs::File::open("/nonexistent/sealvol-test").unwrap_err();
        let os = missing.to_string();
        let host = sealvol_host::luks_file::LuksFile::open_file(
            std::path::Path::new("/nonexistent/sealvol-test"),
            sealvol_host::luks_file::Access::Read,
        )
        .unwrap_err();
        let err = anyhow::Error::new(host).context("cannot go on");
        let message = error_message(&err);
        assert_eq!(message.matches(&os).count(), 1, "{message}");
        assert!(message.starts_with("cannot go on: /nonexistent/sealvol-test does not exist"));
        // A cause its error does not repeat is kept.
        let err = anyhow::Error::new(missing).context("cannot read the key");
        assert_eq!(error_message(&err), format!("cannot read the key: {os}"));
    }
}
