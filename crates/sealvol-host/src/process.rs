//! Processes: liveness, signals, and the I/O-flusher flag for exports.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Whether process `pid` exists (and is not a zombie we could reap).
pub fn alive(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    if rustix::process::test_kill_process(p).is_err() {
        return false;
    }
    // A zombie still answers signal 0; /proc tells it apart.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends SIGTERM to `pid` and waits up to `timeout` for it to exit. Returns whether it is gone.
pub fn terminate(pid: u32, timeout: Duration) -> bool {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, Signal::TERM);
    }
    wait_gone(pid, timeout)
}

/// Sends SIGKILL to `pid` (best effort).
pub fn kill(pid: u32) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
}

/// Waits up to `timeout` for `pid` to exit.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Marks this process as one that writes back memory for the kernel (`PR_SET_IO_FLUSHER`),
/// so its allocations do not recurse into writeback of the device it serves. Best effort.
pub fn set_io_flusher() {
    if let Err(e) = rustix::process::configure_io_flusher_behavior(true) {
        tracing::debug!(error = %e, "PR_SET_IO_FLUSHER not available");
    }
}

/// This process's id.
pub fn this_pid() -> u32 {
    std::process::id()
}
