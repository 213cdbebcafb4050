//! `sealvol`: the command-line front end. Thin: parse, run, map errors to exit codes.

mod cli;
mod commands;
mod dump;
mod export_args;
mod keys;
mod open;
mod output;
mod verity;
mod vm;
mod volume;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::output::Output;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A background export logs what it does (at info level) to its log file.
    let verbose = match cli.command {
        cli::Command::InternalExport(_) => cli.verbose.max(1),
        _ => cli.verbose,
    };
    init_logging(verbose);
    let out = Output::new(cli.json);
    commands::set_kdf_limits(cli.limits.limits());
    match commands::run(cli.command, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let code = exit_code(&err);
            out.error(&err, code);
            ExitCode::from(code)
        }
    }
}

/// 1 for a clean "no" (wrong key, a verity root or signature that does not verify), 2 for
/// every other error.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<CleanNo>().is_some()
            || cause.downcast_ref::<CleanNoWith>().is_some()
        {
            return 1;
        }
        if let Some(sealvol_luks::Error::WrongKey) = cause.downcast_ref::<sealvol_luks::Error>() {
            return 1;
        }
        if cause
            .downcast_ref::<sealvol_host::Error>()
            .is_some_and(sealvol_host::Error::is_clean_no)
        {
            return 1;
        }
    }
    2
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "sealvol={level},sealvol_luks={level},sealvol_crypto={level},sealvol_verity={level},sealvol_block={level},sealvol_export={level},sealvol_host={level}"
    ));
    // Colour codes only for a terminal: an export's stderr is its log file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
