//! Results on stdout (human or JSON), diagnostics on stderr, progress bars on a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

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

    /// Reports a failed command: message (with its causes) on stderr, and in JSON mode a
    /// `{"error", "exit_code"}` object on stdout.
    pub fn error(&self, err: &anyhow::Error, code: u8) {
        let message = format!("{err:#}");
        eprintln!("sealvol: {message}");
        if self.json {
            let mut v = err
                .chain()
                .find_map(|c| c.downcast_ref::<crate::CleanNoWith>())
                .map(|c| c.details.clone())
                .filter(Value::is_object)
                .unwrap_or_else(|| serde_json::json!({}));
            v["ok"] = false.into();
            v["error"] = message.into();
            v["exit_code"] = code.into();
            let _ = writeln!(std::io::stdout(), "{v}");
        }
    }

    /// A byte-count progress bar on a terminal (stderr); hidden otherwise and in JSON mode.
    pub fn progress(&self, total: Option<u64>, what: &str) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }
}
