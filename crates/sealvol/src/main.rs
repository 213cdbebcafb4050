//! `sealvol`: the command-line front end. Thin: parse, run, map errors to exit codes.

#![forbid(unsafe_code)]

mod cli;
mod output;
mod verbs;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::verity::VerityCommand;
use crate::cli::{Cli, Command, TokenCommand};
use crate::output::{CleanNo, CleanNoWith, Output};
use crate::verbs::{daemon, export, luks, overlay, verity, vm, volume};

/// Runs one verb: each module's function makes its library call and prints the result.
fn run(command: Command, out: &Output, verbose: u8) -> anyhow::Result<()> {
    match command {
        Command::Daemon(a) => daemon::run(a, verbose),
        Command::Format(a) => luks::format(a, out),
        Command::Dump(a) => luks::dump(a, out),
        Command::TestKey(a) => luks::test_key(a, out),
        Command::AddKey(a) => luks::add_key(a, out),
        Command::RemoveKey(a) => luks::remove_key(a, out),
        Command::ChangeKey(a) => luks::change_key(a, out),
        Command::Erase(a) => luks::erase(a, out),
        Command::HeaderBackup(a) => luks::header_backup(a, out),
        Command::HeaderRestore(a) => luks::header_restore(a, out),
        Command::Repair(a) => luks::repair(a, out),
        Command::Token(TokenCommand::Add(a)) => luks::token_add(a, out),
        Command::Token(TokenCommand::Remove(a)) => luks::token_remove(a, out),
        Command::Token(TokenCommand::Export(a)) => luks::token_export(a, out),
        Command::Import(a) => luks::import(a, out),
        Command::Export(a) => luks::export(a, out),
        Command::Verity(VerityCommand::Format(a)) => verity::format(a, out),
        Command::Verity(VerityCommand::Verify(a)) => verity::verify(a, out),
        Command::Verity(VerityCommand::Dump(a)) => verity::dump(a, out),
        Command::Verity(VerityCommand::Sign(a)) => verity::sign(a, out),
        Command::Verity(VerityCommand::Keygen(a)) => verity::keygen(a, out),
        Command::Verity(VerityCommand::Read(a)) => verity::read(a, out),
        Command::Verity(VerityCommand::Open(a)) => export::verity_open(a, out),
        Command::Open(a) => export::open(a, out),
        Command::Close(a) => export::close(a, out),
        Command::Serve(c) => export::serve(c, out),
        Command::InternalExport => export::internal_export(out),
        Command::Overlay(c) => overlay::run(c, out),
        Command::Volume(c) => volume::run(c, out),
        Command::Vm(c) => vm::run(c, out),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A background export logs what it does (at info level) to its log file.
    let verbose = match cli.command {
        cli::Command::InternalExport => cli.verbose.max(1),
        _ => cli.verbose,
    };
    // The daemon sets up its own logging (info by default, JSON on request).
    if !matches!(cli.command, cli::Command::Daemon(_)) {
        init_logging(verbose);
    }
    let out = Output::new(cli.json);
    cli::set_kdf_limits(cli.limits.limits());
    match run(cli.command, &out, cli.verbose) {
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

/// 1 for a clean "no" (wrong key, refused signature, a verity root or data that does not
/// verify), 2 for
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
        "sealvol={level},sealvol_luks={level},sealvol_crypto={level},sealvol_verity={level},sealvol_block={level},sealvol_export={level},sealvol_host={level},sealvol_overlay={level}"
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
