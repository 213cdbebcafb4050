use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

const CANARY: &[u8] = b"canary: must never change";

/// A canary file outside the directory under test, and what it looked like.
struct Canary {
    path: PathBuf,
    meta: std::fs::Metadata,
}

impl Canary {
    fn new(dir: &Path) -> Self {
        let path = dir.join("canary");
        std::fs::write(&path, CANARY).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        Canary { path, meta }
    }

    #[track_caller]
    fn untouched(&self, what: &str) {
        let now = std::fs::metadata(&self.path).unwrap();
        assert_eq!(std::fs::read(&self.path).unwrap(), CANARY, "{what}: bytes");
        assert_eq!(now.mode(), self.meta.mode(), "{what}: mode");
        assert_eq!(now.mtime(), self.meta.mtime(), "{what}: mtime");
        assert_eq!(now.mtime_nsec(), self.meta.mtime_nsec(), "{what}: mtime");
        assert_eq!(now.nlink(), 1, "{what}: a link to the canary was left");
    }
}

fn setup() -> (tempfile::TempDir, SafeDir, Canary) {
    let t = tempfile::tempdir().unwrap();
    let canary = Canary::new(t.path());
    let root = SafeDir::open_root(&t.path().join("root")).unwrap();
    (t, root, canary)
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_symlink_at_every_level_is_refused() {
    let (t, root, canary) = setup();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir_all(outside.join("b")).unwrap();
    std::fs::write(outside.join("b/c"), b"x").unwrap();

    // Level 1: the subdirectory itself.
    std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
    let e = root.open_dir("a").unwrap_err();
    assert!(matches!(e, Error::Planted { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(root.ensure_dir("a", 0o700).is_err());
    assert!(root.verify("a/b/c", FileId { dev: 0, ino: 0 }).is_err());
    std::fs::remove_file(root.join("a")).unwrap();

    // Level 2: a link inside a real directory.
    let a = root.ensure_dir("a", 0o700).unwrap();
    std::os::unix::fs::symlink(outside.join("b"), a.join("b")).unwrap();
    assert!(matches!(a.open_dir("b"), Err(Error::Planted { .. })));
    let e = root
        .verify(
            "a/b/c",
            FileId::of(&rustix::fs::stat(outside.join("b/c")).unwrap()),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Planted { .. }), "{e}");
    std::fs::remove_file(a.join("b")).unwrap();

    // Level 3: the file at the end.
    let b = a.ensure_dir("b", 0o700).unwrap();
    std::os::unix::fs::symlink(&canary.path, b.join("c")).unwrap();
    let target = FileId::of(&rustix::fs::stat(&canary.path).unwrap());
    assert!(matches!(
        root.verify("a/b/c", target),
        Err(Error::Planted { .. })
    ));
    assert!(matches!(b.read("c"), Err(Error::Planted { .. })));
    assert!(matches!(b.open_read("c"), Err(Error::Planted { .. })));
    assert!(b.existing_lock_file("c").is_none());
    // Exclusive creates never reuse the name.
    assert!(b.create_new("c", 0o600).is_err());
    canary.untouched("reads and creates through a link");

    // Writers remove the link and never write through it.
    b.write_atomic("c", b"new", 0o600).unwrap();
    assert_eq!(std::fs::read(b.join("c")).unwrap(), b"new");
    assert!(!is_link(&b.join("c")));
    std::os::unix::fs::symlink(&canary.path, b.join("d")).unwrap();
    let _lock = b.lock_file("d").unwrap();
    assert!(!is_link(&b.join("d")));
    std::os::unix::fs::symlink(&canary.path, b.join("e")).unwrap();
    let mut f = b.replace_file("e", 0o600).unwrap();
    f.write_all(b"log").unwrap();
    assert!(!is_link(&b.join("e")));
    // A planted temporary file of an atomic write is removed, never followed.
    std::os::unix::fs::symlink(&canary.path, b.join(".f.tmp")).unwrap();
    b.write_atomic("f", b"rec", 0o600).unwrap();
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"rec");
    assert!(!b.exists(".f.tmp"));
    // Directories: a link where one is kept is removed (replacing) or unlinked (removal).
    std::os::unix::fs::symlink(&outside, b.join("g")).unwrap();
    b.ensure_dir_replacing("g", 0o700).unwrap();
    assert!(!is_link(&b.join("g")));
    std::os::unix::fs::symlink(&outside, b.join("h")).unwrap();
    assert!(b.remove_dir("h").unwrap());
    assert!(
        outside.join("b/c").exists(),
        "the link's target directory was emptied"
    );
    canary.untouched("writers over a link");
}

#[test]
fn the_walk_without_openat2_refuses_links_at_every_level_too() {
    let (t, root, canary) = setup();
    let a = root.ensure_dir("a", 0o700).unwrap();
    let b = a.ensure_dir("b", 0o700).unwrap();
    let f = b.create_new("f", 0o600).unwrap();
    let id = FileId::of_file(&f).unwrap();
    let walked = root.open_path_walk("a/b/f").unwrap();
    assert_eq!(FileId::of_file(&walked).unwrap(), id);
    std::os::unix::fs::symlink(&canary.path, b.join("g")).unwrap();
    assert!(root.open_path_walk("a/b/g").is_err());
    std::os::unix::fs::symlink(b.path(), a.join("c")).unwrap();
    assert!(root.open_path_walk("a/c/f").is_err());
    std::os::unix::fs::symlink(t.path(), root.join("d")).unwrap();
    assert!(root.open_path_walk("d/root/a/b/f").is_err());
}

#[test]
fn dot_dot_and_paths_are_refused_as_names() {
    let (_t, root, _canary) = setup();
    for bad in ["..", ".", "", "a/b", "../x", "/etc", "a\0b"] {
        let e = root.create_new(bad, 0o600).unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{bad:?}: {e}");
        assert!(root.open_dir(bad).is_err(), "{bad:?}");
        assert!(root.remove_file(bad).is_err(), "{bad:?}");
        assert!(root.write_atomic(bad, b"x", 0o600).is_err(), "{bad:?}");
        assert!(root.lock_file(bad).is_err(), "{bad:?}");
        assert!(root.stat(bad).is_err(), "{bad:?}");
    }
    for bad in ["../root/x", "a/../b", "/x", "a//b", "./a"] {
        assert!(
            root.verify(bad, FileId { dev: 0, ino: 0 }).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn exclusive_create_refuses_existing_files() {
    let (_t, root, canary) = setup();
    let f = root.create_new("x", 0o600).unwrap();
    let id = FileId::of_file(&f).unwrap();
    let e = root.create_new("x", 0o600).unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert_eq!(root.verify("x", id).unwrap(), root.join("x"));
    std::fs::hard_link(&canary.path, root.join("y")).unwrap();
    assert!(root.create_new("y", 0o600).is_err());
    std::fs::remove_file(root.join("y")).unwrap();
    // A file replaced after it was made is not what verify hands out.
    std::fs::remove_file(root.join("x")).unwrap();
    std::fs::write(root.join("x"), b"other").unwrap();
    assert!(matches!(root.verify("x", id), Err(Error::Planted { .. })));
    canary.untouched("exclusive creates");
}

#[test]
fn wipes_refuse_hard_and_symbolic_links() {
    let (_t, root, canary) = setup();
    std::fs::hard_link(&canary.path, root.join("hard")).unwrap();
    match root.open_for_wipe("hard").unwrap() {
        WipeTarget::Refused { reason, .. } => assert!(reason.contains("hard link"), "{reason}"),
        other => panic!("a hard link was opened for a wipe: {other:?}"),
    }
    assert!(!root.exists("hard"), "the planted hard link stays");
    std::os::unix::fs::symlink(&canary.path, root.join("soft")).unwrap();
    match root.open_for_wipe("soft").unwrap() {
        WipeTarget::Refused { reason, .. } => assert!(reason.contains("symbolic"), "{reason}"),
        other => panic!("a symbolic link was opened for a wipe: {other:?}"),
    }
    assert!(!root.exists("soft"));
    canary.untouched("wipes");
    root.ensure_dir("dir", 0o700).unwrap();
    assert!(matches!(
        root.open_for_wipe("dir").unwrap(),
        WipeTarget::Refused { .. }
    ));
    assert!(matches!(
        root.open_for_wipe("none").unwrap(),
        WipeTarget::Absent
    ));
    root.create_new("mine", 0o600).unwrap();
    assert!(matches!(
        root.open_for_wipe("mine").unwrap(),
        WipeTarget::File(_)
    ));
}

#[test]
fn lock_files_are_never_planted_links() {
    let (_t, root, canary) = setup();
    std::fs::hard_link(&canary.path, root.join("l.lock")).unwrap();
    let f = root.lock_file("l.lock").unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 1);
    assert_ne!(f.metadata().unwrap().ino(), canary.meta.ino());
    canary.untouched("a hard-linked lock");
    assert!(root.existing_lock_file("l.lock").is_some());
    std::fs::hard_link(root.join("l.lock"), root.join("other")).unwrap();
    assert!(root.existing_lock_file("l.lock").is_none());
}

#[test]
fn trees_are_removed_without_following_links() {
    let (t, root, canary) = setup();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"k").unwrap();
    let d = root.ensure_dir("d", 0o700).unwrap();
    let e = d.ensure_dir("e", 0o700).unwrap();
    std::os::unix::fs::symlink(&outside, e.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(&canary.path, e.join("to-file")).unwrap();
    std::fs::hard_link(&canary.path, d.join("hard")).unwrap();
    e.create_new("f", 0o600).unwrap();
    assert!(root.remove_tree("d").unwrap());
    assert!(!root.exists("d"));
    assert!(outside.join("keep").exists());
    canary.untouched("tree removal");
    assert!(!root.remove_tree("d").unwrap());
}

#[test]
fn unsafe_roots_are_refused_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = SafeDir::open_root(&open).unwrap_err().to_string();
    assert!(e.contains("0777") && e.contains("chmod 0700"), "{e}");
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let e = SafeDir::open_existing_root(&theirs)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("owned by uid 65534") && e.contains("chown "),
        "{e}"
    );
    // Subdirectories are held to the same rule.
    let root = SafeDir::open_root(&t.path().join("ok")).unwrap();
    let sub = root.ensure_dir("sub", 0o700).unwrap();
    std::fs::set_permissions(sub.path(), std::fs::Permissions::from_mode(0o757)).unwrap();
    assert!(matches!(root.open_dir("sub"), Err(Error::UnsafeDir { .. })));
    // A missing root is not made by open_existing_root; a root reached through a symbolic
    // link the administrator chose is fine.
    assert!(SafeDir::open_existing_root(&t.path().join("missing"))
        .unwrap()
        .is_none());
    std::os::unix::fs::symlink(t.path().join("ok"), t.path().join("alias")).unwrap();
    let via = SafeDir::open_root(&t.path().join("alias")).unwrap();
    assert_eq!(
        via.path(),
        std::fs::canonicalize(t.path().join("ok")).unwrap()
    );
}

/// Modes are exact whatever the umask: the umask is per process, so each value runs in a
/// child process of this test binary (the ignored test below).
#[test]
fn modes_are_exact_under_any_umask() {
    for mask in ["000", "077", "777", "022"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "safe_dir::tests::modes_under_the_umask_in_env",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SAFE_DIR_TEST_UMASK", mask)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "umask {mask}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "run by modes_are_exact_under_any_umask in a child process"]
fn modes_under_the_umask_in_env() {
    let mask = u32::from_str_radix(&std::env::var("SAFE_DIR_TEST_UMASK").unwrap(), 8).unwrap();
    rustix::process::umask(Mode::from_raw_mode(mask));
    let t = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let root = SafeDir::open_root(&t.path().join("p1/p2/root")).unwrap();
    assert_eq!(mode(&t.path().join("p1")), 0o755);
    assert_eq!(mode(&t.path().join("p1/p2")), 0o755);
    assert_eq!(mode(root.path()), 0o700);
    let d = root.ensure_dir("d", 0o700).unwrap();
    assert_eq!(mode(d.path()), 0o700);
    let c = root.create_dir("c", 0o750).unwrap();
    assert_eq!(mode(c.path()), 0o750);
    root.create_new("f", 0o600).unwrap();
    assert_eq!(mode(&root.join("f")), 0o600);
    root.create_new("g", 0o644).unwrap();
    assert_eq!(mode(&root.join("g")), 0o644);
    root.write_atomic("r.json", b"{}", 0o600).unwrap();
    assert_eq!(mode(&root.join("r.json")), 0o600);
    root.lock_file("x.lock").unwrap();
    assert_eq!(mode(&root.join("x.lock")), 0o600);
    root.replace_file("log", 0o600).unwrap();
    assert_eq!(mode(&root.join("log")), 0o600);
}

#[test]
fn atomic_writes_leave_no_temporary_file_and_entries_list_names() {
    let (_t, root, _canary) = setup();
    root.write_atomic("r.json", b"one", 0o600).unwrap();
    root.write_atomic("r.json", b"two", 0o600).unwrap();
    assert_eq!(root.read("r.json").unwrap().unwrap(), b"two");
    root.ensure_dir("sub", 0o700).unwrap();
    assert_eq!(
        root.entries().unwrap(),
        vec![("r.json".into(), Kind::File), ("sub".into(), Kind::Dir)]
    );
    assert!(root.remove_file("r.json").unwrap());
    assert!(!root.remove_file("r.json").unwrap());
    assert!(root.read("r.json").unwrap().is_none());
}

#[test]
fn canonical_prefix_resolves_what_exists() {
    let t = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(t.path()).unwrap();
    std::os::unix::fs::symlink(&real, real.join("alias")).unwrap();
    assert_eq!(
        canonical_prefix(&real.join("alias/not/yet")),
        real.join("not/yet")
    );
}
