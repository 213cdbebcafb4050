//! Processes: liveness, signals, and the I/O-flusher flag for exports.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Whether process `pid` exists with at least one thread that has not exited.
///
/// A multi-threaded process (qemu) whose leader thread has exited shows as a zombie while its
/// other threads are still tearing down; until the last of them is gone the process still
/// holds its file descriptors (and so its `flock` claims). So a process is alive while any
/// of its threads is neither a zombie nor dead, not merely while its leader is.
pub fn alive(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    if rustix::process::test_kill_process(p).is_err() {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu exits thread by thread: its leader can be a zombie while other threads still hold
    /// its file descriptors. Such a process is alive until its last thread is gone.
    #[test]
    fn a_process_whose_leader_exited_first_is_alive_until_its_last_thread_is_gone() {
        let script = "import threading, ctypes, time\n\
                      threading.Thread(target=lambda: time.sleep(3)).start()\n\
                      ctypes.CDLL(None).pthread_exit(None)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("python3 (the test suite installs it) runs");
        let pid = child.id();
        let leader_zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        };
        let t = Instant::now();
        while !leader_zombie() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the leader never exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(alive(pid), "a live thread remains, so the process is alive");
        assert!(wait_gone(pid, Duration::from_secs(10)), "the thread ends");
        assert!(!alive(pid));
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn absent_processes_are_not_alive() {
        assert!(alive(this_pid()));
        assert!(!alive(0));
        assert!(!alive(i32::MAX as u32));
    }
}
