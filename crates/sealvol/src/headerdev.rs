//! The file that holds a LUKS header, as the format crates see it.
//!
//! A thin wrapper over [`File`]. In debug builds it carries the crash-injection hook the
//! tests use to prove header updates are crash-safe: with `SEALVOL_TEST_CRASH_AT=header-write:N`
//! the N-th `write` call to the header file writes only the first half of its buffer (a torn
//! write) and then kills the process with SIGKILL. The variable names a step, never a key.
//! Release builds have no hook.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// A header device: a file plus, in debug builds, the crash hook's write counter.
#[derive(Debug)]
pub struct HeaderDev {
    file: File,
    #[cfg(debug_assertions)]
    crash_at: Option<u64>,
    #[cfg(debug_assertions)]
    writes: u64,
}

impl HeaderDev {
    pub fn new(file: File) -> Self {
        HeaderDev {
            file,
            #[cfg(debug_assertions)]
            crash_at: std::env::var(sealvol_host::volume::CRASH_ENV)
                .ok()
                .and_then(|v| v.strip_prefix("header-write:").and_then(|n| n.parse().ok())),
            #[cfg(debug_assertions)]
            writes: 0,
        }
    }
}

impl Read for HeaderDev {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for HeaderDev {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Write for HeaderDev {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(debug_assertions)]
        {
            self.writes += 1;
            if self.crash_at == Some(self.writes) {
                let half = buf.len() / 2;
                self.file.write_all(&buf[..half])?;
                self.file.sync_data()?;
                tracing::warn!(
                    write = self.writes,
                    "test hook: torn header write, killing this process"
                );
                sealvol_host::process::kill(sealvol_host::process::this_pid());
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl sealvol_luks::Storage for HeaderDev {
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
