//! The host side of sealvol: everything that touches the running system to put a volume to
//! use — opening and serving it, subprocesses, loop devices, `mkfs`, mounts, the runtime
//! state directory and the per-volume lock, and the volume and VM managers.
//!
//! - [`cmd::run`]: the one way this workspace runs a program: it logs the command line, the
//!   exit status and stderr (never a key: keys are never arguments), and turns a failure
//!   into an [`Error::Command`] carrying them.
//! - [`loopdev`]: attach a file to a loop device, find and detach it (`losetup`).
//! - [`mount`]: `mkfs`, `mount`, `umount`, and checks of mount points (`/proc/self/mountinfo`).
//! - [`state`]: which export serves which volume, in atomically replaced JSON files under
//!   `/run/sealvol`.
//! - [`lock::VolumeLock`]: an exclusive `flock` per volume, held for as long as it is served,
//!   so a volume is never served twice.
//! - [`process`]: signals, liveness, and marking an export process as an I/O flusher.
//! - [`safe_dir::SafeDir`]: the one way the state and runtime directories are touched: by
//!   descriptor, beneath the directory, never through a symbolic link; exclusive creates,
//!   explicit modes, and wipes only of regular files with one link.
//! - [`keys`]: reading keys from key files, stdin or inherited descriptors (never from argv
//!   or the environment).
//! - [`luks_file`]: a LUKS volume on files, opened under KDF limits, unlocked with a typed
//!   wrong key, and every `cryptsetup` verb on it (format, keys, header backup, tokens,
//!   import and export of plaintext) as one typed call each.
//! - [`verity_file`]: dm-verity trees on files, the `veritysetup` verbs (format, verify,
//!   dump), signatures of root hashes, verified reads.
//! - [`Progress`]: how long copies report.
//! - [`crash`]: named crash points (debug builds only) where tests kill the process, to
//!   check that the next run repairs what a crash there leaves.
//! - [`export`]: opening a volume (checks, unlock, the device stack) and serving it: FUSE
//!   file → loop → mount, or NBD, in this process or in a background process started
//!   through one readiness handshake (the key on an inherited pipe); and closing it.
//! - [`store`]: what both managers stand on: workload ids, a directory of atomically
//!   replaced records (the journal of each id: phase and steps done), a lock per id and a
//!   global one, and the skeleton of the sweep that repairs what crashes left.
//! - [`volume`]: workload volumes over a state directory (`/var/lib/sealvol`): create, open,
//!   close, destroy with crypto-erase, and the sweep; a [`store`] of its own. It takes the key
//!   as bytes and formats and opens through [`export`] itself.
//! - [`keyring`]: keys held in memory under names, and key references (a registered key's
//!   name, or a key file only root can read) that records may keep instead of keys.
//! - [`service`]: what a daemon serves: the volume manager's volumes with their key sources,
//!   users (reference counts across mounts) and recovery after restarts.
//! - [`overlay`]: encrypted copy-on-write overlay files (`sealvol-overlay`): their bases,
//!   the files of their chains (locators), and the `sealvol overlay` verbs as typed calls;
//!   [`export`] serves them like any volume.
//! - [`vm`]: qemu VMs with an encrypted data disk (qemu's LUKS driver, or an [`export`] over
//!   NBD), and their manager (a [`store`] in the state directory's `vm/`).
//!
//! What it does not do: no formats and no crypto (those are `sealvol-luks`,
//! `sealvol-verity`, `sealvol-block`), no protocols (the FUSE file and the NBD server are
//! `sealvol-export`), no prompting and no printing (the `sealvol` binary translates its
//! options into these calls and renders their results).
//!
//! ```no_run
//! use std::path::Path;
//! use sealvol_host::{loopdev, mount};
//! let dev = loopdev::attach(Path::new("/run/sealvol/x/disk"), &loopdev::LoopOptions::default())?;
//! mount::mount(&dev, Path::new("/mnt/work"), None, false)?;
//! # Ok::<(), sealvol_host::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cmd;
pub mod config;
pub mod crash;
mod error;
pub mod export;
pub mod keyring;
pub mod keys;
pub mod lock;
pub mod loopdev;
pub mod luks_file;
pub mod mount;
pub mod overlay;
pub mod process;
pub mod progress;
pub mod safe_dir;
pub mod service;
pub mod state;
pub mod store;
pub mod verity_file;
pub mod vm;
pub mod volume;

pub use error::{Error, Result, Subject};
pub use progress::Progress;
