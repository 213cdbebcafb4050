//! Serving a [`BlockDevice`](sealvol_block::BlockDevice) to the kernel and to qemu.
//!
//! - [`fuse::FileExport`]: the device as one regular file through FUSE (mounted *on a file*,
//!   as `qemu-storage-daemon --export type=fuse` does), ready for `losetup`. Many worker
//!   threads, 1 MiB requests, `fsync` → [`flush`](sealvol_block::BlockDevice::flush),
//!   `fallocate` punch-hole and zero-range → zeros.
//! - [`nbd::Server`]: the NBD protocol (fixed newstyle handshake; `NBD_OPT_GO`, `INFO`,
//!   `EXPORT_NAME`, `LIST`, `ABORT`, `STARTTLS`; read, write, flush, trim, write-zeroes;
//!   simple replies) on a unix socket (mode 0600) or a loopback TCP port (TLS with client
//!   certificates, rustls), with a read-only mode, a connection cap, a handshake time limit,
//!   a send timeout and a server-wide bound on in-flight request bytes, so that no client can
//!   wedge it or keep it from stopping.
//!
//! What it does not do: it never sees a key or a header (it serves any `BlockDevice`), it
//! makes no loop device and mounts no file system (that is `sealvol-host`), and it listens
//! on no address but loopback.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sealvol_block::{BlockDevice, MemDevice};
//! use sealvol_export::fuse::{FileExport, FuseOptions};
//! let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
//! let export = FileExport::mount(dev, "/run/example/disk".as_ref(), &FuseOptions::default())?;
//! // ... losetup /run/example/disk ...
//! export.unmount()?;
//! # Ok::<(), sealvol_export::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod fuse;
pub mod nbd;

pub use error::{Error, Result};
