//! `sealvol verity …`: dm-verity hash trees and signed root hashes (issue 3).

use anyhow::Result;
use clap::Subcommand;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum VerityCommand {}

pub fn run(command: VerityCommand, _out: &Output) -> Result<()> {
    match command {}
}
