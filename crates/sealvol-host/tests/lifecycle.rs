//! The volume and VM managers through their library API, against real peers (loop devices,
//! FUSE, mkfs.ext4, mounts, qemu-img, genisoimage), in temporary state and runtime
//! directories. A missing tool fails the test with an install hint.
//!
//! This test binary is a program that embeds `sealvol_host` the way a daemon would: its
//! exports run as this very executable (the default [`Launcher`]), which handles the hidden
//! export verb with one call to the library's child entry point. So it has its own `main`
//! (`harness = false`) and runs its tests one after the other.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sealvol_crypto::SecretBytes;
use sealvol_host::export::child;
use sealvol_host::state::StateDir;
use sealvol_host::vm::manager::{CreateInput, DataVia, VmId, VmManager, VmParams};
use sealvol_host::volume::{CreateOptions, LuksType, Manager, Params, Phase, VolumeId};
use sealvol_host::{Error, Subject};
use sealvol_luks::KdfPolicy;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == child::VERB) {
        return match child::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("export: {e}");
                ExitCode::from(2)
            }
        };
    }
    let filter = args.iter().skip(1).find_map(|a| {
        let a = a.to_str()?;
        (!a.starts_with('-')).then(|| a.to_string())
    });
    let tests: &[(&str, fn())] = &[
        (
            "volume_round_trip_with_a_wrong_key_changing_nothing",
            volume_round_trip_with_a_wrong_key_changing_nothing,
        ),
        (
            "a_failing_export_step_rolls_create_back_completely",
            a_failing_export_step_rolls_create_back_completely,
        ),
        (
            "vm_create_and_destroy_with_its_data_volume_and_a_refused_start",
            vm_create_and_destroy_with_its_data_volume_and_a_refused_start,
        ),
    ];
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            filtered += 1;
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The path of `tool`, or a failure naming the package that has it.
fn need(tool: &str) -> PathBuf {
    let hint = match tool {
        "mkfs.ext4" => "apt-get install -y e2fsprogs",
        "losetup" | "mount" => "apt-get install -y util-linux mount",
        "qemu-img" => "apt-get install -y qemu-utils",
        "genisoimage" => "apt-get install -y genisoimage",
        _ => "install it with apt-get",
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is required by this test but is not installed: run `{hint}` (scripts/test installs it)"
            )
        })
}

/// A 32-byte machine key (not UTF-8: a PBKDF2 keyslot at 1000 iterations, fast).
fn machine_key(byte: u8) -> SecretBytes {
    let mut k = vec![0xff; 32];
    k[0] = byte;
    SecretBytes::from_vec(k)
}

/// A state and a runtime directory of the test's own, and a volume manager over them.
struct Host {
    tmp: tempfile::TempDir,
    m: Manager,
    run: StateDir,
}

impl Host {
    fn new() -> Self {
        for t in ["mkfs.ext4", "losetup", "mount"] {
            need(t);
        }
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is required: modprobe fuse (apt-get install -y fuse3)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let run = StateDir::new(tmp.path().join("run"));
        // The default launcher: this test binary itself.
        let m = Manager::new(tmp.path().join("state"), run.clone());
        Host { tmp, m, run }
    }

    fn params(&self) -> Params {
        Params {
            size: 16 << 20,
            fs: "ext4".into(),
            detached_header: false,
            luks_type: LuksType::Luks2,
            base: None,
        }
    }

    /// Everything in the state directory, relative, sorted.
    fn tree(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.m.root(), self.m.root(), &mut out);
        out.sort();
        out
    }

    /// Loop devices on anything under the test's directory, and mounts there.
    fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let dir = self.tmp.path().to_str().unwrap().to_string();
        let loops = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .filter(|b| b.contains(&dir))
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_string)
            .collect();
        (loops, mounts)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Whatever a failed assertion left: the volumes go, with their exports.
        if let Ok(all) = self.m.list() {
            for s in all {
                let _ = self.m.destroy(&s.id);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const MARKER: &[u8] = b"library-lifecycle-marker-7f3a";

/// create (unmounted) → open with a wrong key (a typed clean no; nothing changed) → open →
/// write → close → open again (the file is there) → close → destroy (nothing left). The
/// export is this test binary, started through the handshake, with no key on its command
/// line; the image holds no plaintext.
fn volume_round_trip_with_a_wrong_key_changing_nothing() {
    let h = Host::new();
    let id = VolumeId::parse("round-1").unwrap();
    let key = machine_key(1);
    let c =
        h.m.create(
            &id,
            &h.params(),
            CreateOptions {
                mount: false,
                sparse_ok: true,
            },
            &key,
            &KdfPolicy::default(),
        )
        .unwrap();
    assert!(!c.already_existed);
    assert_eq!(c.status.phase, Phase::Ready);
    assert!(
        !c.status.mounted && !c.status.export_alive,
        "{:?}",
        c.status
    );
    assert!(c.status.stale.is_empty(), "{:?}", c.status.stale);
    assert!(h.run.list().is_empty(), "create left an export running");
    let before = h.tree();

    let e = h.m.open(&id, &machine_key(2)).unwrap_err();
    assert!(e.is_wrong_key(), "{e}");
    assert!(
        matches!(e, Error::Step { subject: Subject::Volume, step: "mount", ref cause, .. }
            if matches!(**cause, Error::WrongKey(_))),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    let st = h.m.status(&id).unwrap().unwrap();
    assert!(
        !st.mounted && !st.export_alive && st.stale.is_empty(),
        "{st:?}"
    );
    assert!(h.run.list().is_empty(), "a wrong key started an export");
    assert_eq!(h.tree(), before);

    let (already, st) = h.m.open(&id, &key).unwrap();
    assert!(!already && st.served(), "{st:?}");
    let pid = st.export_pid.unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        std::env::current_exe().unwrap(),
        "the export is not this program"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(contains(&cmdline, child::VERB.as_bytes()));
    assert!(
        !contains(&cmdline, key.expose())
            && !contains(&cmdline, hex::encode(key.expose()).as_bytes())
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!contains(&environ, key.expose()));
    let file = st.mount_path.join("hello.txt");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(MARKER).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(h.m.open(&id, &key).unwrap().0, "a second open is a no-op");

    assert!(h.m.close(&id).unwrap());
    let st = h.m.status(&id).unwrap().unwrap();
    assert!(!st.mounted && !st.export_alive, "{st:?}");
    // Stopped, and reaped by the library (this program lives on, as a daemon would).
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the export outlived close, or stays a zombie");
    assert!(!h.m.close(&id).unwrap(), "a second close is a no-op");
    let image = std::fs::read(h.m.image(&id)).unwrap();
    assert!(!contains(&image, MARKER), "plaintext on disk");

    let (_, st) = h.m.open(&id, &key).unwrap();
    assert_eq!(
        std::fs::read(st.mount_path.join("hello.txt")).unwrap(),
        MARKER
    );
    h.m.close(&id).unwrap();

    let d = h.m.destroy(&id).unwrap();
    assert!(!d.already_absent && d.refused.is_empty(), "{d:?}");
    assert!(h.m.status(&id).unwrap().is_none());
    assert!(
        h.tree()
            .iter()
            .all(|p| ["records", "volumes", "mnt", "locks", "sweep.lock"].contains(&p.as_str())),
        "{:?}",
        h.tree()
    );
    assert_eq!(h.leftovers(), (vec![], vec![]));
    assert!(h.m.destroy(&id).unwrap().already_absent);
}

/// A create whose export fails inside the background process (its `mkfs` refuses, after
/// the FUSE file and the loop device were set up): the child undoes its set-up and reports
/// the error through the handshake; the manager undoes the image and the format. Nothing is
/// left: no record, no file, no loop device, no mount, no runtime entry.
fn a_failing_export_step_rolls_create_back_completely() {
    let h = Host::new();
    // A mkfs that refuses, found on PATH by the export (a child inherits it).
    let bin = h.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("mkfs.refusing");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho 'mkfs.refusing: refused on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    // One test runs at a time in this program: nothing reads the environment meanwhile.
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());

    let id = VolumeId::parse("rollback-1").unwrap();
    let params = Params {
        fs: "refusing".into(),
        ..h.params()
    };
    let e =
        h.m.create(
            &id,
            &params,
            CreateOptions {
                mount: true,
                sparse_ok: true,
            },
            &machine_key(3),
            &KdfPolicy::default(),
        )
        .unwrap_err();
    std::env::set_var("PATH", path);
    let text = e.to_string();
    assert!(
        matches!(
            e,
            Error::Step {
                subject: Subject::Volume,
                step: "mkfs",
                ..
            }
        ) && !e.is_wrong_key(),
        "{text}"
    );
    assert!(
        text.contains("refused on purpose"),
        "the child's report is lost: {text}"
    );
    assert!(
        text.contains("everything done before it was undone"),
        "{text}"
    );
    assert!(
        h.m.status(&id).unwrap().is_none(),
        "a record survived the rollback"
    );
    assert!(
        h.tree()
            .iter()
            .all(|p| ["records", "volumes", "mnt", "locks", "sweep.lock"].contains(&p.as_str())),
        "{:?}",
        h.tree()
    );
    assert!(h.run.list().is_empty(), "an export record survived");
    let runtime: Vec<_> = std::fs::read_dir(h.run.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(runtime.is_empty(), "runtime leftovers: {runtime:?}");
    assert_eq!(h.leftovers(), (vec![], vec![]));
    assert!(
        h.m.sweep().unwrap().is_empty(),
        "the sweep found more to undo"
    );
}

/// A VM with a data volume: created (qcow2 overlay, seed) without booting; a start with a
/// wrong key fails at the NBD export's handshake, typed, with nothing left running; destroy
/// with its data volume leaves neither.
fn vm_create_and_destroy_with_its_data_volume_and_a_refused_start() {
    for t in ["qemu-img", "genisoimage"] {
        need(t);
    }
    let h = Host::new();
    let vms = VmManager::new(h.m.clone(), h.run.clone());
    let vol = VolumeId::parse("vm-data").unwrap();
    let key = machine_key(4);
    h.m.create(
        &vol,
        &h.params(),
        CreateOptions {
            mount: false,
            sparse_ok: true,
        },
        &key,
        &KdfPolicy::default(),
    )
    .unwrap();
    let base = h.tmp.path().join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let id = VmId::parse("web").unwrap();
    let params = VmParams {
        cpus: 1,
        memory_mib: 64,
        disk_size: 8 << 20,
        base,
        data_volume: Some(vol.clone()),
        data_via: DataVia::Nbd,
        forwards: Vec::new(),
        accel: "tcg".into(),
        kernel: None,
        encrypted_root: false,
    };
    let st = vms.create(&id, &params, &CreateInput::default()).unwrap();
    assert_eq!(st.phase, Phase::Ready);
    assert!(!st.running);
    assert!(st.overlay.is_file() && st.seed_iso.is_file());
    assert_eq!(st.data_image, Some(h.m.image(&vol)));

    let e = vms.start(&id, Some(&machine_key(5))).unwrap_err();
    assert!(e.is_wrong_key(), "{e}");
    assert!(
        matches!(
            e,
            Error::Step {
                subject: Subject::Vm,
                step: "nbd-export",
                ..
            }
        ),
        "{e}"
    );
    let e = vms.start(&id, None).unwrap_err();
    assert!(e.to_string().contains("key is needed"), "{e}");
    assert!(!vms.status(&id).unwrap().unwrap().running);
    assert!(
        h.run.list().is_empty(),
        "an NBD export runs after a refused start"
    );
    assert!(!st.dir.join("data.nbd.sock").exists());

    let d = vms.destroy(&id, true, Duration::from_secs(1)).unwrap();
    assert!(!d.already_absent);
    let data = d.data_destroyed.expect("the data volume was destroyed");
    assert!(!data.already_absent);
    assert!(vms.status(&id).unwrap().is_none());
    assert!(h.m.status(&vol).unwrap().is_none());
    assert!(!st.dir.exists());
    assert!(vms.list().unwrap().is_empty() && vms.sweep().unwrap().is_empty());
    assert_eq!(h.leftovers(), (vec![], vec![]));
}
