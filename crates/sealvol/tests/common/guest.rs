//! The Debian kernel and a busybox initramfs as a VM "base image" stand-in: the uncompressed
//! vmlinux boots in about 2 s under TCG. `/init` loads the named modules (with their
//! dependencies) and runs a shell script. Load with `#[path = "common/guest.rs"] mod guest;`.
//!
//! Needs linux-image-amd64, busybox-static, cpio, kmod, xz-utils, qemu-system-x86: a missing
//! one fails the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::need;

/// Runs a shell script; panics with its stderr when it fails.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The newest installed kernel: its version and `/boot/vmlinuz-VERSION`.
///
/// # Panics
/// With the install command when there is none (a fresh machine has no kernel package).
pub fn installed_kernel() -> (String, PathBuf) {
    let versions: Vec<String> = std::fs::read_dir("/lib/modules")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let kver = versions
        .into_iter()
        .filter(|v| Path::new(&format!("/boot/vmlinuz-{v}")).exists())
        .max_by(|a, b| version_cmp(a, b))
        .expect("no kernel in /lib/modules with a /boot/vmlinuz: apt-get install -y linux-image-amd64 (scripts/test installs it)");
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    (kver, vmlinuz)
}

/// Orders kernel versions by their numeric parts (`6.1.0-9` < `6.1.0-10`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    nums(a).cmp(&nums(b))
}

/// The kernel to boot: the uncompressed vmlinux inside `vmlinuz` when it can be extracted
/// into `dir` (it boots in about 2 s under TCG through the PVH entry, the bzImage in about 5),
/// else `vmlinuz` itself.
pub fn bootable_kernel(vmlinuz: &Path, dir: &Path) -> PathBuf {
    need("xz");
    let vmlinux = dir.join("vmlinux");
    if std::fs::read(&vmlinux).is_ok_and(|b| b.starts_with(b"\x7fELF")) {
        return vmlinux;
    }
    let tmp = dir.join(format!("vmlinux.{}.tmp", std::process::id()));
    // The bzImage carries the kernel as an xz stream; xz stops with an error at the
    // trailing bytes after it, having written the whole ELF.
    sh(&format!(
        "off=$(LC_ALL=C grep -abo \"$(printf '\\3757zXZ\\000')\" {z} | head -1 | cut -d: -f1); \
         if [ -n \"$off\" ]; then tail -c +$((off + 1)) {z} | xz -dc 2>/dev/null > {o} || true; fi",
        z = vmlinuz.display(),
        o = tmp.display()
    ));
    if std::fs::read(&tmp).is_ok_and(|b| b.starts_with(b"\x7fELF")) {
        std::fs::rename(&tmp, &vmlinux).unwrap();
        vmlinux
    } else {
        let _ = std::fs::remove_file(&tmp);
        vmlinuz.to_path_buf()
    }
}

/// Copies the kernel modules `modules` and their dependencies (decompressed) into
/// `root/mods`, and their load order into `root/mods/order`.
pub fn copy_modules(kver: &str, modules: &[&str], root: &Path) {
    std::fs::create_dir_all(root.join("mods")).unwrap();
    sh(&format!(
        "cd {r}; : > mods/order; for m in {mods}; do \
           modprobe -S {kver} --show-depends $m | awk '$1==\"insmod\"{{print $2}}' | while read ko; do \
             n=$(basename $ko); grep -qx \"${{n%.xz}}\" mods/order && continue; \
             case $ko in *.xz) xz -dc $ko > mods/${{n%.xz}}; n=${{n%.xz}};; *) cp $ko mods/$n;; esac; \
             echo $n >> mods/order; done; done",
        r = root.display(),
        mods = modules.join(" ")
    ));
}

/// The kernel (uncompressed vmlinux when it can be extracted) and a busybox initramfs with
/// `modules` (and their dependencies) and `guest` as the script run by /init.
pub fn kernel_and_initrd(dir: &Path, modules: &[&str], guest: &str) -> (PathBuf, PathBuf) {
    for t in ["busybox", "cpio", "modprobe", "xz", "qemu-system-x86_64"] {
        need(t);
    }
    let (kver, vmlinuz) = installed_kernel();
    let kernel = bootable_kernel(&vmlinuz, dir);
    let root = dir.join("initrd-root");
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(sh("command -v busybox"), root.join("bin/busybox")).unwrap();
    copy_modules(&kver, modules, &root);
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done\n\
         i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         {guest}\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    sh(&format!("chmod +x {}/init", root.display()));
    let initrd = dir.join("initrd.cpio");
    sh(&format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        root.display(),
        initrd.display()
    ));
    (kernel, initrd)
}
