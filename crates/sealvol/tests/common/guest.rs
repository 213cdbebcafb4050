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

/// The kernel (uncompressed vmlinux when it can be extracted) and a busybox initramfs with
/// `modules` (and their dependencies) and `guest` as the script run by /init.
pub fn kernel_and_initrd(dir: &Path, modules: &[&str], guest: &str) -> (PathBuf, PathBuf) {
    for t in ["busybox", "cpio", "modprobe", "xz", "qemu-system-x86_64"] {
        need(t);
    }
    let kver = sh("ls /lib/modules | sort -V | tail -1");
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    assert!(
        vmlinuz.exists(),
        "no /boot/vmlinuz-{kver}: apt-get install -y linux-image-amd64"
    );
    let vmlinux = dir.join("vmlinux");
    sh(&format!(
        "off=$(LC_ALL=C grep -abo \"$(printf '\\3757zXZ\\000')\" {z} | head -1 | cut -d: -f1); \
         if [ -n \"$off\" ]; then tail -c +$((off + 1)) {z} | xz -dc 2>/dev/null > {o} || true; fi",
        z = vmlinuz.display(),
        o = vmlinux.display()
    ));
    let is_elf = std::fs::read(&vmlinux).is_ok_and(|b| b.starts_with(b"\x7fELF"));
    let kernel = if is_elf { vmlinux } else { vmlinuz };
    let root = dir.join("initrd-root");
    for d in ["bin", "proc", "sys", "dev", "mods"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(sh("command -v busybox"), root.join("bin/busybox")).unwrap();
    sh(&format!(
        "cd {r}; : > mods/order; for m in {mods}; do \
           modprobe -S {kver} --show-depends $m | awk '$1==\"insmod\"{{print $2}}' | while read ko; do \
             n=$(basename $ko); case $ko in *.xz) xz -dc $ko > mods/${{n%.xz}}; n=${{n%.xz}};; *) cp $ko mods/$n;; esac; \
             grep -qx $n mods/order || echo $n >> mods/order; done; done",
        r = root.display(),
        mods = modules.join(" ")
    ));
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
