//! The kernel oracle: a throwaway Linux guest whose kernel has device-mapper (dm-crypt,
//! dm-verity), booted under qemu TCG with image files as virtio disks, that runs a busybox
//! shell script with `cryptsetup` and `veritysetup` and reports its exit status. It answers
//! "does the real kernel accept these bytes?" on hosts without device-mapper (these hosts
//! have none). Load with `#[path = "common/guest.rs"] mod guest;` and
//! `#[path = "common/oracle.rs"] mod oracle;`.
//!
//! The guest: the installed Debian kernel (uncompressed, ~2 s to boot under TCG), an
//! initramfs with busybox, the host's `cryptsetup` and `veritysetup` with their libraries, and
//! the modules dm-crypt, dm-verity, xts, ext4, squashfs, erofs, loop, overlay (plus any the
//! caller adds) loaded before the script runs. Files the caller hands over are in `/in`; the
//! script runs there as root. The base initramfs is cached in the test target directory per
//! kernel version and module list; each run adds the script and files as a second archive.
//!
//! Needs (Debian): linux-image-amd64 qemu-system-x86 busybox-static cryptsetup-bin cpio kmod
//! xz-utils; scripts/test installs them. A missing one fails the test with that hint.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::need;
use crate::guest::{bootable_kernel, copy_modules, installed_kernel, sh};

/// Modules every oracle guest loads.
const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "dm-crypt",
    "dm-verity",
    "xts",
    "aesni-intel",
    "ecb",
    "ext4",
    "squashfs",
    "erofs",
    "loop",
    "overlay",
];

/// Printed by /init around the script's output and with its exit status.
const BEGIN: &str = "SEALVOL-ORACLE-BEGIN";
const EXIT: &str = "SEALVOL-ORACLE-EXIT=";

/// What a guest run printed and how its script ended.
#[derive(Debug)]
pub struct OracleRun {
    /// The script's exit status; `None` when the guest never reported one (boot failure,
    /// timeout).
    pub code: Option<i32>,
    /// The script's output (stdout and stderr, as the console showed it).
    pub output: String,
    /// The whole console, for diagnosing a guest that did not report.
    pub console: String,
}

impl OracleRun {
    /// Asserts the script exited 0; returns its output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "the kernel oracle's script failed\n--- script output ---\n{}\n--- console tail ---\n{}",
            self.output,
            tail(&self.console, 30)
        );
        &self.output
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A guest to be: disks, files and extra modules, then [`KernelOracle::run`].
#[derive(Debug, Default)]
pub struct KernelOracle {
    disks: Vec<(PathBuf, bool)>,
    files: Vec<PathBuf>,
    modules: Vec<String>,
    memory_mb: Option<u32>,
    timeout: Option<Duration>,
}

impl KernelOracle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `path` read-write; returns its device in the guest (`/dev/vda`, `/dev/vdb` ...).
    pub fn disk(&mut self, path: &Path) -> String {
        self.attach(path, true)
    }

    /// Attaches `path` read-only; returns its device in the guest.
    pub fn ro_disk(&mut self, path: &Path) -> String {
        self.attach(path, false)
    }

    fn attach(&mut self, path: &Path, writable: bool) -> String {
        assert!(self.disks.len() < 26, "at most 26 disks");
        self.disks.push((path.to_path_buf(), writable));
        format!("/dev/vd{}", (b'a' + self.disks.len() as u8 - 1) as char)
    }

    /// Copies `path` into the guest; returns its path there (`/in/NAME`).
    pub fn file(&mut self, path: &Path) -> String {
        self.files.push(path.to_path_buf());
        format!(
            "/in/{}",
            path.file_name().expect("a file name").to_string_lossy()
        )
    }

    /// Loads these modules (and their dependencies) too.
    pub fn modules(&mut self, modules: &[&str]) -> &mut Self {
        self.modules.extend(modules.iter().map(|m| m.to_string()));
        self
    }

    /// Guest memory (default 768 MiB).
    pub fn memory_mb(&mut self, mb: u32) -> &mut Self {
        self.memory_mb = Some(mb);
        self
    }

    /// How long the guest may run (default 240 s under TCG).
    pub fn timeout(&mut self, t: Duration) -> &mut Self {
        self.timeout = Some(t);
        self
    }

    /// Boots the guest, runs `script` (busybox sh, in `/in`) and returns what it reported.
    pub fn run(&self, script: &str) -> OracleRun {
        for t in [
            "qemu-system-x86_64",
            "busybox",
            "cpio",
            "modprobe",
            "xz",
            "cryptsetup",
            "veritysetup",
        ] {
            need(t);
        }
        let (kver, vmlinuz) = installed_kernel();
        let mut modules: Vec<&str> = BASE_MODULES.to_vec();
        modules.extend(self.modules.iter().map(String::as_str));
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kernel-oracle")
            .join(&kver);
        std::fs::create_dir_all(&cache).unwrap();
        let kernel = bootable_kernel(&vmlinuz, &cache);
        let base = base_initramfs(&cache, &kver, &modules);

        let work = tempfile::Builder::new()
            .prefix("sealvol-oracle-")
            .tempdir()
            .unwrap();
        let run_root = work.path().join("root");
        std::fs::create_dir_all(run_root.join("in")).unwrap();
        std::fs::write(run_root.join("in/guest.sh"), script).unwrap();
        for f in &self.files {
            std::fs::copy(f, run_root.join("in").join(f.file_name().unwrap()))
                .unwrap_or_else(|e| panic!("copy {} into the guest: {e}", f.display()));
        }
        let initrd = work.path().join("initrd.cpio");
        // Two concatenated newc archives: the kernel unpacks both.
        sh(&format!(
            "cp {base} {out} && cd {root} && find in | cpio -o -H newc --quiet >> {out}",
            base = base.display(),
            out = initrd.display(),
            root = run_root.display()
        ));

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &self.memory_mb.unwrap_or(768).to_string()])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]);
        for (i, (path, writable)) in self.disks.iter().enumerate() {
            let ro = if *writable { "off" } else { "on" };
            cmd.arg("-blockdev")
                .arg(format!(
                    "driver=file,node-name=f{i},filename={},read-only={ro}",
                    path.display()
                ))
                .arg("-blockdev")
                .arg(format!(
                    "driver=raw,node-name=d{i},file=f{i},read-only={ro}"
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=d{i}"));
        }
        let console_path = work.path().join("console.log");
        let console_file = std::fs::File::create(&console_path).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(console_file.try_clone().unwrap())
            .stderr(console_file)
            .spawn()
            .expect("start qemu-system-x86_64");
        let limit = self.timeout.unwrap_or(Duration::from_secs(240));
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut raw = Vec::new();
        std::fs::File::open(&console_path)
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        let console = String::from_utf8_lossy(&raw).replace('\r', "");
        let after = console.split_once(BEGIN).map_or("", |(_, a)| a);
        let code = after
            .lines()
            .filter_map(|l| l.split_once(EXIT).map(|(_, c)| c.trim()))
            .filter_map(|c| c.parse().ok())
            .next_back();
        let output = after
            .lines()
            .skip(1)
            .filter(|l| !l.contains(EXIT))
            .collect::<Vec<_>>()
            .join("\n");
        OracleRun {
            code,
            output,
            console,
        }
    }
}

/// The cached base initramfs for `kver` with `modules`: busybox, cryptsetup, veritysetup and
/// their libraries, the modules, and an /init that runs `/in/guest.sh`. Built once (in a
/// temporary directory, then renamed into place, so parallel tests never see half of one).
fn base_initramfs(cache: &Path, kver: &str, modules: &[&str]) -> PathBuf {
    let mut key = modules.to_vec();
    key.sort_unstable();
    key.dedup();
    let name = format!("base-{}.cpio", key.join("+").replace(['/', ' '], "_"));
    let base = cache.join(name);
    if base.exists() {
        return base;
    }
    let build = tempfile::Builder::new()
        .prefix("oracle-base-")
        .tempdir_in(cache)
        .unwrap();
    let root = build.path().join("root");
    for d in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "run/cryptsetup",
        "tmp",
        "mnt",
        "in",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(sh("command -v busybox"), root.join("bin/busybox")).unwrap();
    // cryptsetup and veritysetup with every library they link; and libgcc_s, which glibc
    // loads at run time (pthread cancellation) and cryptsetup aborts without.
    sh(&format!(
        "cd {r}; for b in cryptsetup veritysetup; do p=$(command -v $b); cp $p sbin/$b; \
           for lib in $(ldd $p | grep -oE '/[^ ]+\\.so[^ ]*'); do mkdir -p .$(dirname $lib); cp -L $lib .$lib; done; done; \
         g=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64/{{print $NF; exit}}'); \
         if [ -n \"$g\" ]; then mkdir -p .$(dirname $g); cp -L $g .$g; fi",
        r = root.display()
    ));
    copy_modules(kver, modules, &root);
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/sbin:/bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mkdir -p /dev/shm /run/cryptsetup\n\
         for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done\n\
         mdev -s 2>/dev/null\n\
         i=0; while [ ! -b /dev/vda ] && [ -n \"$(ls /sys/bus/virtio/devices 2>/dev/null)\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
         cd /in\n\
         echo {BEGIN}\n\
         sh /in/guest.sh 2>&1; rc=$?\n\
         echo {EXIT}$rc\n\
         sync; poweroff -f\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    let tmp = build.path().join("base.cpio");
    sh(&format!(
        "chmod +x {r}/init && cd {r} && find . | cpio -o -H newc --quiet > {t}",
        r = root.display(),
        t = tmp.display()
    ));
    // Another test may have finished the same archive meanwhile: either copy is whole.
    std::fs::rename(&tmp, &base).unwrap();
    base
}
