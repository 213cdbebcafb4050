//! The journaled store the volume and VM managers stand on: one directory of records, locks
//! and per-id entries, and the skeleton of the sweep that repairs what crashes left.
//!
//! # Layout
//!
//! A store is a directory (the state directory itself for volumes, its `vm/` for VMs):
//!
//! ```text
//! records/<id>.json   the record (journal) of the id: phase, parameters, steps done
//! locks/<id>.lock     flock per id
//! sweep.lock          the global lock
//! <dir>/<id>...       the manager's own entries (volumes/ and mnt/; dirs/ for VMs)
//! ```
//!
//! The state directory is made 0700 and refused when another user owns it or others may
//! write in it; every entry below it is made, read and removed through a [`SafeDir`] (by
//! descriptor, never through a symbolic link).
//!
//! # Records
//!
//! Records are small JSON files replaced atomically: written to a temporary file, fsynced,
//! renamed over the old one, then the directory is fsynced. A reader sees the old record or
//! the new one, never half of one, and a record that a call returned after is on disk. That
//! is all the journal needs (one writer per id under its lock, a few writes per operation),
//! so there is no embedded database to trust or to carry.
//! A record is any [`Journaled`] type: it says its id, its [`Phase`] and the steps of the
//! current operation that are done.
//!
//! # Locks
//!
//! Every call on an id holds `sweep.lock` shared and `locks/<id>.lock` exclusive (blocking),
//! so calls on one id run one after the other and calls on different ids run in parallel; a
//! sweep holds `sweep.lock` exclusive.
//!
//! # Phases, journal and sweep
//!
//! An operation writes its intent first (`creating`, `destroying`) and its completion last
//! (`ready`, or no record at all), journaling each step in between and passing a crash point
//! ([`crate::crash`]) after each. A sweep takes the global lock and, for every id the store
//! or the host knows of (records, entries, locks, and what the manager finds running), under
//! the id's lock: undoes an interrupted create, finishes an interrupted destroy, repairs a
//! ready one, clears leftovers that have no record, and unlinks the lock of an id without a
//! record. What each of those means is the manager's (it implements the crate-private
//! `Sweeper`).

mod id;
#[cfg(test)]
mod tests;

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use id::{Phase, VolumeId, MAX_ID_LEN};

use crate::lock::{lock_exclusive, lock_shared, Held};
use crate::safe_dir::SafeDir;
use crate::{crash, Error, Result, Subject};

/// A journaled record: what a store needs to know of a manager's record.
pub trait Journaled: Clone + Serialize + DeserializeOwned {
    /// The id it is the record of.
    fn id(&self) -> &VolumeId;
    /// Where the id is in its life.
    fn phase(&self) -> Phase;
    /// Moves the id to `phase`.
    fn set_phase(&mut self, phase: Phase);
    /// The steps of the current operation that are done, in order (the journal).
    fn steps(&self) -> &[String];
    /// The journal, to add to or clear.
    fn steps_mut(&mut self) -> &mut Vec<String>;
}

/// One repair made by a sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Action {
    /// The id it concerned.
    pub id: String,
    /// What was done.
    pub action: String,
}

/// What a manager does for each case of a sweep ([`Store::sweep`]): each returns what it
/// did, in words, for the sweep's report.
pub(crate) trait Sweeper {
    /// The manager's record.
    type Record: Journaled;
    /// Undoes the interrupted create `r` (its record `creating`) and removes its record.
    fn undo_create(&self, r: &Self::Record) -> Result<String>;
    /// Finishes the interrupted destroy `r` (its record `destroying`) and removes its record.
    fn finish_destroy(&self, r: &Self::Record) -> Result<String>;
    /// Repairs what the host has of the ready `r` that no live process accounts for.
    fn repair_ready(&self, r: Self::Record) -> Result<Vec<String>>;
    /// Removes whatever the host has of `id`, which has no record; `None` when it has
    /// nothing.
    fn clear_leftovers(&self, id: &VolumeId) -> Result<Option<String>>;
    /// Ids the host has things of that the store's directories may not name (processes,
    /// exports).
    fn ids_on_host(&self) -> Vec<VolumeId> {
        Vec::new()
    }
    /// What else the sweep repairs under the global lock, once every id is done.
    fn sweep_more(&self) -> Result<Vec<Action>> {
        Ok(Vec::new())
    }
}

/// The global lock and the lock of one id, held by a call on that id.
#[derive(Debug)]
pub(crate) struct Locks {
    _global: Held,
    _id: Held,
}

/// One store: its directory, what it holds records of, and its subdirectories.
pub(crate) struct Store<R> {
    /// The state directory (its existing part canonical).
    state: PathBuf,
    /// The store's directory in the state directory (`vm`), or `None` for the state
    /// directory itself.
    within: Option<&'static str>,
    /// The store's directory.
    root: PathBuf,
    /// Volumes or VMs: names in messages, commands, crash points.
    subject: Subject,
    /// Every subdirectory, `records` first and `locks` last.
    dirs: Vec<&'static str>,
    _record: PhantomData<fn() -> R>,
}

impl<R> Clone for Store<R> {
    fn clone(&self) -> Self {
        Store {
            state: self.state.clone(),
            within: self.within,
            root: self.root.clone(),
            subject: self.subject,
            dirs: self.dirs.clone(),
            _record: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Store<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("subject", &self.subject)
            .finish()
    }
}

/// The ids named by the entries of `dir` (`<id><suffix>`, or `<id>` for an empty suffix),
/// sorted; names that are not valid ids are not sealvol's and are ignored.
fn ids_in(dir: Option<&SafeDir>, suffix: &str) -> Vec<VolumeId> {
    let Some(entries) = dir.and_then(|d| d.entries().ok()) else {
        return Vec::new();
    };
    let mut ids: Vec<VolumeId> = entries
        .into_iter()
        .filter_map(|(name, _)| VolumeId::parse(name.strip_suffix(suffix)?).ok())
        .collect();
    ids.sort();
    ids
}

impl<R: Journaled> Store<R> {
    /// The store of `subject` in the state directory `state` (already canonical), in its
    /// subdirectory `within` when given, with the manager's own subdirectories `dirs`
    /// (beside `records` and `locks`).
    pub(crate) fn new(
        state: PathBuf,
        within: Option<&'static str>,
        subject: Subject,
        dirs: &[&'static str],
    ) -> Self {
        let root = match within {
            Some(w) => state.join(w),
            None => state.clone(),
        };
        let mut all = vec!["records"];
        all.extend_from_slice(dirs);
        all.push("locks");
        Store {
            state,
            within,
            root,
            subject,
            dirs: all,
            _record: PhantomData,
        }
    }

    /// The store's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<sub>`, for messages and for paths handed to other programs.
    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// The store's directory, made (0700, with the state directory) when missing; a state
    /// directory another user owns or others may write in is refused.
    ///
    /// # Errors
    /// [`Error::UnsafeDir`] with the fix; [`Error::Planted`]; [`Error::Io`].
    pub(crate) fn open(&self) -> Result<SafeDir> {
        let state = SafeDir::open_root(&self.state)?;
        match self.within {
            Some(w) => state.ensure_dir(w, 0o700),
            None => Ok(state),
        }
    }

    /// The store's directory if it exists (checked as [`Store::open`]).
    pub(crate) fn existing(&self) -> Result<Option<SafeDir>> {
        let Some(state) = SafeDir::open_existing_root(&self.state)? else {
            return Ok(None);
        };
        match self.within {
            Some(w) => state.open_dir(w),
            None => Ok(Some(state)),
        }
    }

    /// The subdirectory `sub` (made, 0700).
    pub(crate) fn sub(&self, sub: &str) -> Result<SafeDir> {
        self.open()?.ensure_dir(sub, 0o700)
    }

    /// The subdirectory `sub`, if it exists.
    pub(crate) fn existing_sub(&self, sub: &str) -> Result<Option<SafeDir>> {
        match self.existing()? {
            Some(d) => d.open_dir(sub),
            None => Ok(None),
        }
    }

    /// The store's directory with every subdirectory made.
    pub(crate) fn ensure_dirs(&self) -> Result<SafeDir> {
        let root = self.open()?;
        for d in &self.dirs {
            root.ensure_dir(d, 0o700)?;
        }
        Ok(root)
    }

    /// Whether the subdirectory `sub` has an entry named `id` (of any kind: a dangling link
    /// counts).
    pub(crate) fn names(&self, sub: &str, id: &VolumeId) -> Result<bool> {
        Ok(self
            .existing_sub(sub)?
            .is_some_and(|d| d.exists(id.as_str())))
    }

    /// The ids named by the entries of the subdirectory `sub` (`records/<id>.json`,
    /// `locks/<id>.lock`, `<dir>/<id>`), sorted.
    pub(crate) fn ids_in(&self, sub: &str) -> Vec<VolumeId> {
        let suffix = match sub {
            "records" => ".json",
            "locks" => ".lock",
            _ => "",
        };
        ids_in(self.existing_sub(sub).ok().flatten().as_ref(), suffix)
    }

    /// The ids with a record, sorted.
    pub(crate) fn ids(&self) -> Vec<VolumeId> {
        self.ids_in("records")
    }

    // -----------------------------------------------------------------------------------
    // locks

    /// Takes the global lock: shared for calls on one id, exclusive for a sweep.
    pub(crate) fn lock_global(&self, exclusive: bool) -> Result<Held> {
        let root = self.ensure_dirs()?;
        if exclusive {
            lock_exclusive(&root, "sweep.lock")
        } else {
            lock_shared(&root, "sweep.lock")
        }
    }

    /// Takes the lock of `id`, waiting for whoever holds it. A destroy removes the lock
    /// file while holding it; a waiter that then gets the lock on the removed file sees that
    /// the name no longer names it and tries again.
    pub(crate) fn lock_id(&self, id: &VolumeId) -> Result<Held> {
        lock_exclusive(&self.sub("locks")?, &format!("{id}.lock"))
    }

    /// Both locks for a call on `id`.
    pub(crate) fn lock(&self, id: &VolumeId) -> Result<Locks> {
        let g = self.lock_global(false)?;
        let l = self.lock_id(id)?;
        Ok(Locks { _global: g, _id: l })
    }

    /// Unlinks the lock file of `id` (held by the caller, whose id has no record left).
    pub(crate) fn unlink_lock(&self, id: &VolumeId) {
        if let Ok(Some(locks)) = self.existing_sub("locks") {
            let _ = locks.remove_file(&format!("{id}.lock"));
        }
    }

    // -----------------------------------------------------------------------------------
    // records

    /// The record file of `id`.
    pub(crate) fn record_path(&self, id: &VolumeId) -> PathBuf {
        self.path("records").join(format!("{id}.json"))
    }

    /// `sealvol volume sweep` or `sealvol vm sweep`: what repairs this store.
    pub(crate) fn sweep_command(&self) -> String {
        format!("sealvol {} sweep", self.cli())
    }

    /// `volume` or `vm`: the command group of this store.
    fn cli(&self) -> &'static str {
        match self.subject {
            Subject::Volume => "volume",
            Subject::Vm => "vm",
        }
    }

    /// `volume` or `VM`: what the store holds, in a sentence.
    fn noun(&self) -> &'static str {
        match self.subject {
            Subject::Volume => "volume",
            Subject::Vm => "VM",
        }
    }

    /// The record of `id`, if any.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a record that does not parse (never written by sealvol: the
    /// writes are atomic) or names another id; [`Error::Planted`] for a link in its place;
    /// [`Error::Io`] when it cannot be read.
    pub(crate) fn load(&self, id: &VolumeId) -> Result<Option<R>> {
        let Some(records) = self.existing_sub("records")? else {
            return Ok(None);
        };
        let name = format!("{id}.json");
        let Some(bytes) = records.read(&name)? else {
            return Ok(None);
        };
        let r: R = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "the record {} is damaged ({e}); move it away and run `{}`",
                records.join(&name).display(),
                self.sweep_command()
            ))
        })?;
        if r.id() != id {
            return Err(Error::Invalid(format!(
                "the {}record {} names id {}, not {id}",
                match self.subject {
                    Subject::Volume => "",
                    Subject::Vm => "VM ",
                },
                self.record_path(id).display(),
                r.id()
            )));
        }
        Ok(Some(r))
    }

    /// Writes the record of `r`'s id atomically and durably (see [`SafeDir::write_atomic`]).
    pub(crate) fn save(&self, r: &R) -> Result<()> {
        let json = serde_json::to_vec_pretty(r).expect("records serialise");
        self.sub("records")?
            .write_atomic(&format!("{}.json", r.id()), &json, 0o600)
    }

    /// Removes the record of `id` (absent is fine) and makes the removal durable.
    pub(crate) fn remove_record(&self, id: &VolumeId) -> Result<()> {
        match self.existing_sub("records")? {
            Some(records) => {
                records.remove_file(&format!("{id}.json"))?;
                records.sync()
            }
            None => Ok(()),
        }
    }

    /// The record of `id`, which must be ready.
    ///
    /// # Errors
    /// [`Error::Invalid`] when there is none, or it is `creating` or `destroying` (then the
    /// sweep finishes it).
    pub(crate) fn ready(&self, id: &VolumeId) -> Result<R> {
        match self.load(id)? {
            Some(r) if r.phase() == Phase::Ready => Ok(r),
            Some(r) => Err(Error::Invalid(format!(
                "{} {id} is {} (an interrupted operation); run `{}` to finish it",
                self.noun(),
                r.phase().as_str(),
                self.sweep_command()
            ))),
            None => Err(Error::Invalid(format!(
                "there is no {} {id} in {}; create it with `sealvol {} create {id}{}`",
                self.noun(),
                self.root.display(),
                self.cli(),
                match self.subject {
                    Subject::Volume => "",
                    Subject::Vm => " ...",
                }
            ))),
        }
    }

    // -----------------------------------------------------------------------------------
    // journal

    /// The crash point `step` of this store's operations (`create:image` is
    /// `vm-create:image` in the VM store).
    pub(crate) fn crash(&self, step: &str) {
        match self.subject {
            Subject::Volume => crash::point(step),
            Subject::Vm => crash::point(&format!("vm-{step}")),
        }
    }

    /// Starts a create: records `r` (phase `creating`, no steps) before anything is made.
    pub(crate) fn begin(&self, r: &R) -> Result<()> {
        debug_assert!(r.phase() == Phase::Creating && r.steps().is_empty());
        self.save(r)?;
        self.crash("create:journal");
        Ok(())
    }

    /// Journals the step `step` of a create as done.
    pub(crate) fn step_done(&self, r: &mut R, step: &str) -> Result<()> {
        r.steps_mut().push(step.to_string());
        self.save(r)?;
        self.crash(&format!("create:{step}"));
        Ok(())
    }

    /// Ends a create: records `r` ready, its journal cleared.
    pub(crate) fn finish(&self, r: &mut R) -> Result<()> {
        r.set_phase(Phase::Ready);
        r.steps_mut().clear();
        self.save(r)?;
        self.crash("create:ready");
        Ok(())
    }

    /// Starts a destroy of `r`: records it `destroying`, its journal cleared.
    pub(crate) fn destroying(&self, r: &mut R) -> Result<()> {
        r.set_phase(Phase::Destroying);
        r.steps_mut().clear();
        self.save(r)
    }

    /// A step of `verb` on `id` failed because of `cause`; `after` says what happened next.
    pub(crate) fn step_error(
        &self,
        verb: &'static str,
        id: &VolumeId,
        step: &'static str,
        cause: Error,
        after: impl Into<String>,
    ) -> Error {
        Error::Step {
            subject: self.subject,
            verb,
            id: id.to_string(),
            step,
            cause: Box::new(cause),
            after: after.into(),
        }
    }

    /// The step `step` of the create of `id` failed because of `cause` and `undo` is how
    /// undoing the steps before it went (the lock of `id` is unlinked when it went well).
    pub(crate) fn create_failed<T>(
        &self,
        id: &VolumeId,
        step: &'static str,
        cause: Error,
        undo: Result<T>,
    ) -> Error {
        let after = match undo {
            Ok(_) => {
                self.unlink_lock(id);
                "; everything done before it was undone".to_string()
            }
            Err(u) => format!(
                "; undoing it also failed ({u}): `{}` finishes it",
                self.sweep_command()
            ),
        };
        self.step_error("create", id, step, cause, after)
    }

    /// The destroy of `id` failed because of `cause`: its record stays `destroying`.
    pub(crate) fn destroy_failed(&self, id: &VolumeId, cause: Error) -> Error {
        let after = format!(
            "; run `sealvol {} destroy` again or `{}` to finish it",
            self.cli(),
            self.sweep_command()
        );
        self.step_error("destroy", id, "teardown", cause, after)
    }

    // -----------------------------------------------------------------------------------
    // sweep

    /// Sweeps every id under the global lock (exclusive): the ids of the store's
    /// subdirectories and those `m` finds on the host, each under its lock (see
    /// [`Store::sweep_id`]); an id left without a record loses its lock file. Then `m`'s
    /// [`Sweeper::sweep_more`]. Returns what was done.
    ///
    /// # Errors
    /// The first repair that fails (the rest are left for the next sweep).
    pub(crate) fn sweep<M: Sweeper<Record = R>>(&self, m: &M) -> Result<Vec<Action>> {
        let _global = self.lock_global(true)?;
        let mut ids: Vec<VolumeId> = self.dirs.iter().flat_map(|d| self.ids_in(d)).collect();
        ids.extend(m.ids_on_host());
        ids.sort();
        ids.dedup();
        let mut actions = Vec::new();
        for id in ids {
            let _l = self.lock_id(&id)?;
            actions.extend(self.sweep_id(m, &id)?);
            if self.load(&id)?.is_none() {
                self.unlink_lock(&id);
            }
        }
        actions.extend(m.sweep_more()?);
        Ok(actions)
    }

    /// The sweep of one id (its lock held): a `creating` record is undone, a `destroying`
    /// one finished, a ready one repaired, leftovers without a record cleared. Returns what
    /// was done (each logged).
    ///
    /// # Errors
    /// A damaged record; the repair that failed.
    pub(crate) fn sweep_id<M: Sweeper<Record = R>>(
        &self,
        m: &M,
        id: &VolumeId,
    ) -> Result<Vec<Action>> {
        let done = match self.load(id)? {
            Some(r) => match r.phase() {
                Phase::Creating => vec![m.undo_create(&r)?],
                Phase::Destroying => vec![m.finish_destroy(&r)?],
                Phase::Ready => m.repair_ready(r)?,
            },
            None => m.clear_leftovers(id)?.into_iter().collect(),
        };
        let sweep = match self.subject {
            Subject::Volume => "sweep",
            Subject::Vm => "vm sweep",
        };
        Ok(done
            .into_iter()
            .map(|what| {
                tracing::warn!(id = %id, action = %what, "{sweep}");
                Action {
                    id: id.to_string(),
                    action: what,
                }
            })
            .collect())
    }
}
