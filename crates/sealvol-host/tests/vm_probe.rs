//! The accelerator probe against the real qemu (qemu-system-x86_64 must be installed; a
//! missing qemu fails the test).

use std::time::Duration;

use sealvol_host::safe_dir::SafeDir;
use sealvol_host::vm::{probe_accel, run_probe_guest, Accel, AccelChoice};

/// The probe guest itself is sound: under TCG it reaches the exit port quickly, so a KVM
/// probe that does not is KVM's fault, not the guest's.
#[test]
fn vm_probe_guest_exits_under_tcg() {
    let d = tempfile::tempdir().unwrap();
    let r = run_probe_guest(
        &SafeDir::open_root(d.path()).unwrap(),
        Accel::Tcg,
        Duration::from_secs(20),
    )
    .expect("qemu-system-x86_64 must be installed (apt-get install qemu-system-x86)");
    let t = r.expect("the probe guest must reach isa-debug-exit under TCG");
    assert!(t < Duration::from_secs(20));
}

/// On these hosts /dev/kvm exists but a KVM guest cannot run (nested PVM): auto picks TCG
/// and says why; the verdict is cached for this boot; explicit choices skip the probe.
#[test]
fn vm_auto_picks_tcg_here_and_caches_the_verdict() {
    let d = tempfile::tempdir().unwrap();
    let v = probe_accel(
        &SafeDir::open_root(d.path()).unwrap(),
        AccelChoice::Auto,
        Duration::from_secs(4),
    )
    .unwrap();
    assert!(!v.cached);
    if std::path::Path::new("/dev/kvm").exists() {
        // The DESIGN facts: KVM present but unusable here.
        assert_eq!(v.accel, Accel::Tcg, "{}", v.reason);
        assert!(v.reason.contains("KVM cannot run a guest"), "{}", v.reason);
    } else {
        assert_eq!(v.accel, Accel::Tcg);
        assert!(v.reason.contains("no /dev/kvm"), "{}", v.reason);
    }
    let again = probe_accel(
        &SafeDir::open_root(d.path()).unwrap(),
        AccelChoice::Auto,
        Duration::from_secs(4),
    )
    .unwrap();
    assert!(again.cached);
    assert_eq!((again.accel, &again.reason), (v.accel, &v.reason));
    let cache = std::fs::read_to_string(d.path().join("accel.json")).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(cache.contains(boot.trim()));
    let forced = probe_accel(
        &SafeDir::open_root(d.path()).unwrap(),
        AccelChoice::Kvm,
        Duration::from_secs(4),
    )
    .unwrap();
    assert_eq!(forced.accel, Accel::Kvm);
}
