//! Crash points: a test hook, compiled into debug builds only, that kills the process at a
//! named step, as a power cut or an OOM kill would, so that tests can check that the next
//! run (or a sweep) repairs whatever a crash there leaves.
//!
//! `SEALVOL_TEST_CRASH_AT` ([`CRASH_ENV`]) names the step; every step there is is listed in
//! [`CRASH_STEPS`]. The same variable also arms the torn-write hook of LUKS header updates
//! (`header-write:N`, see [`crate::luks_file::HeaderFile`]), which counts writes instead of
//! naming steps. The variable carries a step name, never a key; release builds ignore it.

use std::time::Duration;

/// Debug builds only: `kill -9` this process when it reaches the named step (see [`point`]).
pub const CRASH_ENV: &str = "SEALVOL_TEST_CRASH_AT";

/// Every step a crash can be injected at, in order: a volume's `create:…` and `destroy:…`,
/// `export:mounted` (an export process, inheriting the variable, killed after it mounted the
/// file system and before it recorded itself), then a VM's `vm-create:…`, `vm-start:…` and
/// `vm-destroy:…`.
pub const CRASH_STEPS: &[&str] = &[
    "create:journal",
    "create:image",
    "create:format",
    "create:mkfs",
    "create:close",
    "create:ready",
    "destroy:journal",
    "destroy:unmount",
    "destroy:erase",
    "destroy:delete",
    "export:mounted",
    "vm-create:journal",
    "vm-create:overlay",
    "vm-create:seed",
    "vm-create:ready",
    "vm-start:spawned",
    "vm-destroy:journal",
    "vm-destroy:stop",
    "vm-destroy:data",
    "vm-destroy:files",
];

/// Whether the hook is armed at `step` in this process (debug builds only; always `false`
/// in release builds).
pub fn armed(step: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        std::env::var_os(CRASH_ENV).is_some_and(|v| v == step)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = step;
        false
    }
}

/// The test hook: when [`CRASH_ENV`] names `step`, the process kills itself with SIGKILL.
/// A step missing from [`CRASH_STEPS`] is a programming error (a debug assertion), so the
/// list stays the whole list. Release builds do nothing.
pub fn point(step: &str) {
    debug_assert!(
        CRASH_STEPS.contains(&step),
        "crash point {step:?} is not listed in CRASH_STEPS"
    );
    if armed(step) {
        tracing::warn!(step, "test hook: killing this process");
        crate::process::kill(crate::process::this_pid());
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_unique_and_names_verb_and_step() {
        let mut seen = std::collections::HashSet::new();
        for s in CRASH_STEPS {
            assert!(seen.insert(s), "{s} is listed twice");
            let (verb, step) = s.split_once(':').expect("verb:step");
            assert!(!verb.is_empty() && !step.is_empty(), "{s}");
        }
        // What the integration tests crash at, by prefix.
        let count = |p: &str| CRASH_STEPS.iter().filter(|s| s.starts_with(p)).count();
        assert_eq!(
            (count("create:"), count("destroy:"), count("vm-")),
            (6, 4, 9)
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not listed in CRASH_STEPS")]
    fn an_unlisted_step_is_a_programming_error() {
        point("create:nowhere");
    }

    /// The hook fires only in a process whose variable names the step: run this test binary
    /// again with the variable set and see it killed by SIGKILL at that step, and not at
    /// another.
    #[test]
    #[cfg(debug_assertions)]
    fn an_armed_step_kills_the_process() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "SEALVOL_TEST_CRASH_CHILD";
        if let Some(step) = std::env::var_os(CHILD) {
            // The child: pass an unarmed step, then the armed one.
            point("destroy:delete");
            point(step.to_str().unwrap());
            std::process::exit(0);
        }
        let run = |armed: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "crash::tests::an_armed_step_kills_the_process",
                    "--test-threads=1",
                ])
                .env(CHILD, "create:mkfs")
                .env(CRASH_ENV, armed)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
        };
        assert_eq!(run("create:mkfs").signal(), Some(9));
        let s = run("create:image");
        assert_eq!((s.signal(), s.code()), (None, Some(0)));
        assert!(!armed("create:mkfs"));
    }
}
