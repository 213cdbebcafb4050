use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::lock::is_held_in;

/// A record of the fake manager: what the store needs, and a note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fake {
    id: VolumeId,
    phase: Phase,
    steps: Vec<String>,
    note: String,
}

impl Journaled for Fake {
    fn id(&self) -> &VolumeId {
        &self.id
    }
    fn phase(&self) -> Phase {
        self.phase
    }
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }
    fn steps(&self) -> &[String] {
        &self.steps
    }
    fn steps_mut(&mut self) -> &mut Vec<String> {
        &mut self.steps
    }
}

fn id(s: &str) -> VolumeId {
    VolumeId::parse(s).unwrap()
}

fn fake(i: &str, phase: Phase, note: &str) -> Fake {
    Fake {
        id: id(i),
        phase,
        steps: Vec::new(),
        note: note.into(),
    }
}

/// A store of fakes in `t`, with its own subdirectory `things`.
fn store(t: &tempfile::TempDir, subject: Subject) -> Store<Fake> {
    let within = (subject == Subject::Vm).then_some("vm");
    Store::new(t.path().join("state"), within, subject, &["things"])
}

#[test]
fn the_layout_is_the_managers_and_dirs_are_private() {
    let t = tempfile::tempdir().unwrap();
    let v = store(&t, Subject::Volume);
    let m = store(&t, Subject::Vm);
    assert!(v.existing().unwrap().is_none() && v.load(&id("a")).unwrap().is_none());
    v.ensure_dirs().unwrap();
    m.ensure_dirs().unwrap();
    let state = t.path().join("state");
    assert_eq!(v.root(), state);
    assert_eq!(m.root(), state.join("vm"));
    let _held = (v.lock(&id("a")).unwrap(), m.lock(&id("a")).unwrap());
    v.save(&fake("a", Phase::Ready, "")).unwrap();
    m.save(&fake("a", Phase::Ready, "")).unwrap();
    for (path, mode) in [
        ("records", 0o700),
        ("things", 0o700),
        ("locks", 0o700),
        ("records/a.json", 0o600),
        ("locks/a.lock", 0o600),
        ("sweep.lock", 0o600),
        ("vm", 0o700),
        ("vm/records/a.json", 0o600),
        ("vm/locks/a.lock", 0o600),
        ("vm/sweep.lock", 0o600),
        ("vm/things", 0o700),
    ] {
        let md = std::fs::metadata(state.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(md.permissions().mode() & 0o777, mode, "{path}");
    }
    assert_eq!(v.record_path(&id("a")), state.join("records/a.json"));
    assert_eq!(m.record_path(&id("a")), state.join("vm/records/a.json"));
    // The state directory is refused when others may write in it.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(m.open(), Err(Error::UnsafeDir { .. })));
    assert!(matches!(v.load(&id("a")), Err(Error::UnsafeDir { .. })));
}

#[test]
fn records_round_trip_are_listed_and_removed_durably() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t, Subject::Volume);
    s.ensure_dirs().unwrap();
    let mut r = fake("a", Phase::Creating, "1");
    s.save(&r).unwrap();
    r.note = "2".into();
    s.save(&r).unwrap();
    assert_eq!(s.load(&id("a")).unwrap(), Some(r.clone()));
    // Names that are not ids are not sealvol's: not listed.
    let records = t.path().join("state/records");
    std::fs::write(records.join("Bad.json"), b"{}").unwrap();
    std::fs::write(records.join(".b.json.tmp"), b"{").unwrap();
    std::fs::create_dir(t.path().join("state/things/c")).unwrap();
    assert_eq!(s.ids(), vec![id("a")]);
    assert_eq!(s.ids_in("things"), vec![id("c")]);
    assert!(s.names("things", &id("c")).unwrap() && !s.names("things", &id("a")).unwrap());
    s.remove_record(&id("a")).unwrap();
    s.remove_record(&id("a")).unwrap();
    assert_eq!(s.load(&id("a")).unwrap(), None);
    assert!(s.ids().is_empty());
}

#[test]
fn damaged_misnamed_and_planted_records_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t, Subject::Vm);
    s.save(&fake("a", Phase::Ready, "")).unwrap();
    let records = t.path().join("state/vm/records");
    std::fs::write(records.join("b.json"), b"{").unwrap();
    let e = s.load(&id("b")).unwrap_err().to_string();
    assert!(
        e.contains("is damaged") && e.contains("run `sealvol vm sweep`"),
        "{e}"
    );
    std::fs::copy(records.join("a.json"), records.join("c.json")).unwrap();
    let e = s.load(&id("c")).unwrap_err().to_string();
    assert!(
        e.contains("the VM record") && e.contains("names id a, not c"),
        "{e}"
    );
    // A link in a record's place is not followed.
    let outside = t.path().join("outside.json");
    std::fs::write(
        &outside,
        serde_json::to_vec(&fake("d", Phase::Ready, "")).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, records.join("d.json")).unwrap();
    assert!(matches!(s.load(&id("d")), Err(Error::Planted { .. })));
    // An id of a volume record is checked too, its message without "VM".
    let v = store(&t, Subject::Volume);
    v.ensure_dirs().unwrap();
    std::fs::copy(
        records.join("a.json"),
        t.path().join("state/records/c.json"),
    )
    .unwrap();
    let e = v.load(&id("c")).unwrap_err().to_string();
    assert!(e.starts_with("the record "), "{e}");
}

/// A reader never sees half a record: it sees the old one or the new one, while a writer
/// replaces it over and over with records of other sizes.
#[test]
fn a_reader_sees_a_whole_record_while_it_is_replaced() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t, Subject::Volume);
    let short = fake("a", Phase::Creating, "x");
    let long = fake("a", Phase::Ready, &"y".repeat(64 << 10));
    s.save(&short).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = s.load(&id("a")).unwrap().expect("a record is always there");
                assert!(r == short || r == long, "half a record: {}", r.note.len());
                reads += 1;
            }
            reads
        });
        for i in 0..100 {
            s.save(if i % 2 == 0 { &long } else { &short }).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    // No temporary file is left.
    let left: Vec<_> = std::fs::read_dir(t.path().join("state/records"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["a.json"]);
}

#[test]
fn the_journal_goes_creating_steps_ready_destroying() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t, Subject::Vm);
    let mut r = fake("a", Phase::Creating, "");
    s.begin(&r).unwrap();
    let on_disk = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(t.path().join("state/vm/records/a.json")).unwrap())
            .unwrap()
    };
    assert_eq!(on_disk()["phase"], "creating");
    s.step_done(&mut r, "overlay").unwrap();
    s.step_done(&mut r, "seed").unwrap();
    assert_eq!(on_disk()["steps"], serde_json::json!(["overlay", "seed"]));
    s.finish(&mut r).unwrap();
    assert_eq!(
        (on_disk()["phase"].clone(), on_disk()["steps"].clone()),
        (serde_json::json!("ready"), serde_json::json!([]))
    );
    assert_eq!(s.ready(&id("a")).unwrap(), r);
    s.destroying(&mut r).unwrap();
    assert_eq!(on_disk()["phase"], "destroying");
    let e = s.ready(&id("a")).unwrap_err().to_string();
    assert_eq!(
        e,
        "VM a is destroying (an interrupted operation); run `sealvol vm sweep` to finish it"
    );
    let e = s.ready(&id("b")).unwrap_err().to_string();
    assert!(
        e.starts_with("there is no VM b in ")
            && e.ends_with("; create it with `sealvol vm create b ...`"),
        "{e}"
    );
    let v = store(&t, Subject::Volume);
    let e = v.ready(&id("b")).unwrap_err().to_string();
    assert!(
        e.starts_with("there is no volume b in ")
            && e.ends_with("; create it with `sealvol volume create b`"),
        "{e}"
    );
}

#[test]
fn step_errors_say_what_was_undone_and_keep_a_wrong_key_typed() {
    let t = tempfile::tempdir().unwrap();
    let (v, m) = (store(&t, Subject::Volume), store(&t, Subject::Vm));
    let a = id("a");
    {
        let _l = v.lock(&a).unwrap();
        let e = v.create_failed(&a, "format", Error::Invalid("no room".into()), Ok(()));
        assert_eq!(
            e.to_string(),
            "create of volume a failed at step `format`: no room; everything done before it was undone"
        );
        assert!(!e.is_wrong_key() && !e.is_clean_no());
    }
    // Undone: its lock file went with it.
    assert!(!t.path().join("state/locks/a.lock").exists());
    let undo: Result<()> = Err(Error::Invalid("busy".into()));
    let e = m.create_failed(&a, "seed", Error::Invalid("no iso".into()), undo);
    assert_eq!(
        e.to_string(),
        "vm create of a failed at step `seed`: no iso; undoing it also failed (busy): `sealvol vm sweep` finishes it"
    );
    let e = m.destroy_failed(&a, Error::Invalid("gone".into()));
    assert_eq!(
        e.to_string(),
        "vm destroy of a failed at step `teardown`: gone; run `sealvol vm destroy` again or `sealvol vm sweep` to finish it"
    );
    // A wrong key is the cause, typed: a clean "no" a caller can match.
    let e = v.step_error(
        "open",
        &a,
        "mount",
        Error::WrongKey("no keyslot opens".into()),
        "; nothing was changed",
    );
    assert_eq!(
        e.to_string(),
        "open of volume a failed at step `mount`: no keyslot opens; nothing was changed"
    );
    assert!(e.is_wrong_key() && e.is_clean_no());
    assert!(matches!(
        &e,
        Error::Step { subject: Subject::Volume, verb: "open", step: "mount", cause, .. }
            if matches!(**cause, Error::WrongKey(_))
    ));
    // Its message is not repeated as a source.
    assert!(std::error::Error::source(&e).is_none());
}

#[test]
fn calls_on_one_id_run_one_after_the_other_and_a_sweep_alone() {
    let t = tempfile::tempdir().unwrap();
    let s = store(&t, Subject::Volume);
    // One id: the second call waits; another id and the shared global lock do not.
    let held = s.lock(&id("a")).unwrap();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| drop(s.lock(&id("a")).unwrap()));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!h.is_finished(), "a second call on one id did not wait");
        drop(s.lock(&id("b")).unwrap());
        drop(s.lock_global(false).unwrap());
        // A sweep waits for the call.
        let sweep = sc.spawn(|| drop(s.lock_global(true).unwrap()));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!sweep.is_finished(), "a sweep ran beside a call");
        drop(held);
        h.join().unwrap();
        sweep.join().unwrap();
    });
    // A call waits for a sweep.
    let sweeping = s.lock_global(true).unwrap();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| drop(s.lock(&id("c")).unwrap()));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!h.is_finished(), "a call ran during a sweep");
        drop(sweeping);
        h.join().unwrap();
    });
    // Unlinking a held lock file (a destroy) sends a waiter to a new one.
    let held = s.lock_id(&id("a")).unwrap();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| s.lock_id(&id("a")).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        s.unlink_lock(&id("a"));
        drop(held);
        let second = h.join().unwrap();
        assert!(is_held_in(&s.sub("locks").unwrap(), "a.lock"));
        drop(second);
    });
}

/// A fake manager: records what the sweep asked of it.
struct FakeManager {
    store: Store<Fake>,
    calls: Mutex<Vec<String>>,
    on_host: Vec<VolumeId>,
}

impl FakeManager {
    fn called(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

impl Sweeper for FakeManager {
    type Record = Fake;

    fn undo_create(&self, r: &Fake) -> Result<String> {
        self.called(format!("undo {} {:?}", r.id, r.steps));
        self.store.remove_record(&r.id)?;
        Ok("undid".into())
    }

    fn finish_destroy(&self, r: &Fake) -> Result<String> {
        self.called(format!("finish {}", r.id));
        self.store.remove_record(&r.id)?;
        Ok("finished".into())
    }

    fn repair_ready(&self, r: Fake) -> Result<Vec<String>> {
        self.called(format!("repair {}", r.id));
        Ok(if r.note == "stale" {
            vec!["repaired".into()]
        } else {
            Vec::new()
        })
    }

    fn clear_leftovers(&self, id: &VolumeId) -> Result<Option<String>> {
        self.called(format!("leftovers {id}"));
        if self.store.names("things", id)? {
            self.store.sub("things")?.remove_tree(id.as_str())?;
            return Ok(Some("cleared".into()));
        }
        Ok(self.on_host.contains(id).then(|| "stopped".into()))
    }

    fn ids_on_host(&self) -> Vec<VolumeId> {
        self.on_host.clone()
    }

    fn sweep_more(&self) -> Result<Vec<Action>> {
        // Still under the global lock, exclusive: not even a shared lock is free.
        let root = self.store.open()?;
        assert!(is_held_in(&root, "sweep.lock"));
        self.called("more".into());
        Ok(vec![Action {
            id: "-".into(),
            action: "more".into(),
        }])
    }
}

#[test]
fn the_sweep_undoes_finishes_repairs_clears_and_unlinks_free_locks() {
    let t = tempfile::tempdir().unwrap();
    let m = FakeManager {
        store: store(&t, Subject::Volume),
        calls: Mutex::new(Vec::new()),
        on_host: vec![id("f")],
    };
    let s = &m.store;
    s.ensure_dirs().unwrap();
    let mut a = fake("a", Phase::Creating, "");
    s.begin(&a).unwrap();
    s.step_done(&mut a, "image").unwrap();
    s.save(&fake("b", Phase::Destroying, "")).unwrap();
    s.save(&fake("c", Phase::Ready, "stale")).unwrap();
    s.save(&fake("g", Phase::Ready, "")).unwrap();
    let things = t.path().join("state/things");
    std::fs::create_dir(things.join("d")).unwrap();
    std::fs::create_dir(things.join("Not-an-id")).unwrap();
    for l in ["a", "c", "e", "g"] {
        drop(s.lock_id(&id(l)).unwrap());
    }

    let actions = s.sweep(&m).unwrap();
    let got: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a.id.as_str(), a.action.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "undid"),
            ("b", "finished"),
            ("c", "repaired"),
            ("d", "cleared"),
            ("f", "stopped"),
            ("-", "more")
        ]
    );
    assert_eq!(
        *m.calls.lock().unwrap(),
        [
            "undo a [\"image\"]",
            "finish b",
            "repair c",
            "leftovers d",
            "leftovers e",
            "leftovers f",
            "repair g",
            "more"
        ]
    );
    // Records of ready ids stay, with their locks; every other lock file is gone.
    assert_eq!(s.ids(), vec![id("c"), id("g")]);
    assert_eq!(s.ids_in("locks"), vec![id("c"), id("g")]);
    assert!(!things.join("d").exists() && things.join("Not-an-id").exists());

    // The sweep of one id, as a create runs it first.
    s.begin(&fake("h", Phase::Creating, "")).unwrap();
    let one = s.sweep_id(&m, &id("h")).unwrap();
    assert_eq!(
        one,
        [Action {
            id: "h".into(),
            action: "undid".into()
        }]
    );
    assert!(s.sweep_id(&m, &id("h")).unwrap().is_empty());
}

#[test]
fn a_damaged_record_stops_the_sweep_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let m = FakeManager {
        store: store(&t, Subject::Vm),
        calls: Mutex::new(Vec::new()),
        on_host: Vec::new(),
    };
    m.store.ensure_dirs().unwrap();
    std::fs::write(t.path().join("state/vm/records/a.json"), b"[").unwrap();
    let e = m.store.sweep(&m).unwrap_err().to_string();
    assert!(e.contains("sealvol vm sweep"), "{e}");
    assert!(m.calls.lock().unwrap().is_empty());
}
