//! Running programs: one helper that logs what it runs and what came of it.

use std::process::{Command, Stdio};

use crate::{Error, Result};

/// The Debian package that provides `program`, for error messages.
fn package_of(program: &str) -> &'static str {
    match program {
        "losetup" | "mount" | "umount" | "blkid" => "mount / util-linux",
        p if p.starts_with("mkfs.ext") || p.starts_with("e2") => "e2fsprogs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        "mkfs.vfat" | "mkfs.fat" => "dosfstools",
        "fusermount3" => "fuse3",
        "qemu-img" => "qemu-utils",
        "genisoimage" => "genisoimage",
        _ => "?",
    }
}

/// The command line as text, for logs and errors. Arguments never carry keys.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin closed; returns its stdout.
///
/// Logs the command line before, and the exit status and stderr after (`tracing`, target
/// `sealvol_host`).
///
/// # Errors
/// [`Error::Spawn`] when it cannot start, [`Error::Command`] (with its stderr) when it exits
/// with a failure.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    tracing::info!(command = %line, "running");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| Error::Spawn {
            package: package_of(&program),
            program,
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    tracing::info!(command = %line, status = %out.status, stderr = %stderr, "finished");
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_the_command_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sh -c") && msg.contains("oops") && msg.contains('3'),
            "{msg}"
        );
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let err = run(&mut Command::new("/nonexistent/losetup")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }
}
