//! The verbs: each takes its options (from [`crate::cli`]), makes one library call and prints
//! the result through [`crate::output::Output`]. Errors go back to `main`, which alone picks
//! the exit code.

pub mod daemon;
pub mod export;
pub mod luks;
pub mod overlay;
pub mod verity;
pub mod vm;
pub mod volume;
