//! Volumes served for others, as a long-running daemon serves them to container engines and
//! control planes: the [`volume::Manager`]'s volumes, with where each one's key comes from,
//! who uses each one (a reference count per user), and recovery after restarts.
//!
//! # What it adds to the manager
//!
//! - **Keys by reference.** A volume's key is named by a [`KeyRef`] (a key registered in the
//!   service's in-memory [`KeyRing`], or a key file only root can read), kept in the
//!   volume's attachment record; or handed over with each call ([`KeyChoice::Given`]), then
//!   nothing about it is kept. No key is ever written anywhere.
//! - **Users.** [`Service::mount`] counts a user (a container engine's mount id, or
//!   [`API_USER`]) and opens the volume for the first; [`Service::unmount`] closes it when
//!   the last one is gone. The same user may mount twice (Docker mounts a volume once at
//!   container create and once at start): each mount counts. [`Service::remove`] refuses a
//!   volume that has users ([`Error::InUse`]), then crypto-erases it as `volume destroy`.
//! - **Serialised calls.** Calls on one volume run one after the other (a lock per id in
//!   this process, and the manager's `flock` across processes); calls on different volumes
//!   run in parallel.
//! - **Recovery.** [`Service::recover`] (at start): users recorded before a reboot are
//!   dropped (no container survives one); the manager's sweep repairs what crashes left
//!   (journal, dead exports); a volume of the service left open without users is closed;
//!   every volume that still has users but no live export is
//!   opened again with its key, or waits for that key to be registered
//!   ([`Service::register_key`] opens it then). Exports are processes of their own, so a
//!   restart of the service leaves live ones serving.
//!
//! # The attachment records
//!
//! `<state>/service/<id>.json`: the key's source (never the key), the users and their
//! counts, and the boot they were counted in; replaced atomically through a [`SafeDir`].
//! `<state>/service.lock` is held while a service runs: one service per state directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sealvol_crypto::SecretBytes;
use sealvol_luks::KdfPolicy;
use serde::{Deserialize, Serialize};

use crate::export::served;
use crate::keyring::{KeyName, KeyRef, KeyRing};
use crate::safe_dir::{Kind, SafeDir};
use crate::state::IoCounts;
use crate::store::{Action, Phase, VolumeId};
use crate::volume::{self, CreateOptions, Destroyed, Manager, Params, Status};
use crate::{Error, Result};

/// The user an API client's `open` counts as (one, however often it opens).
pub const API_USER: &str = "api";
/// Longest user id (a container engine's mount id is 64 hex digits).
pub const MAX_USER_LEN: usize = 128;
/// Most users one volume may have.
pub const MAX_USERS: usize = 4096;
/// The directory of attachment records in the state directory.
const DIR: &str = "service";

/// Who uses a volume: a container engine's mount id, or [`API_USER`]. 1 to
/// [`MAX_USER_LEN`] characters of `A-Z a-z 0-9 _ . : -`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Checks `s` against the rules.
    ///
    /// # Errors
    /// [`Error::Invalid`] saying which rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_USER_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        if ok {
            Ok(UserId(s.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "invalid mount id {:?}: ids are 1 to {MAX_USER_LEN} characters of A-Z, a-z, 0-9, '_', '.', ':', '-'",
                s.chars().take(MAX_USER_LEN + 1).collect::<String>()
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        UserId::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

/// The attachment record of one volume. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The volume.
    pub id: VolumeId,
    /// Where its key comes from; `None`: the key is handed over with each open.
    pub key: Option<KeyRef>,
    /// Its users and how many mounts each holds.
    pub users: BTreeMap<UserId, u32>,
    /// The boot (`/proc/sys/kernel/random/boot_id`) the users were counted in.
    pub boot_id: String,
}

impl Attachment {
    fn new(id: &VolumeId, key: Option<KeyRef>, boot_id: &str) -> Self {
        Attachment {
            id: id.clone(),
            key,
            users: BTreeMap::new(),
            boot_id: boot_id.to_string(),
        }
    }

    /// Mounts held, all users together.
    pub fn mounts(&self) -> u64 {
        self.users.values().map(|&n| u64::from(n)).sum()
    }
}

/// Where a call's key comes from.
pub enum KeyChoice {
    /// The key itself (kept by nobody after the call).
    Given(SecretBytes),
    /// A registered key or a key file (the reference is kept in the attachment record).
    Ref(KeyRef),
}

impl std::fmt::Debug for KeyChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyChoice::Given(_) => f.write_str("Given(..)"),
            KeyChoice::Ref(r) => f.debug_tuple("Ref").field(r).finish(),
        }
    }
}

/// A volume to create.
#[derive(Debug)]
pub struct CreateRequest {
    /// Its id.
    pub id: VolumeId,
    /// Its parameters.
    pub params: Params,
    /// Its key.
    pub key: KeyChoice,
    /// The KDF of its keyslot.
    pub kdf: KdfPolicy,
    /// Allow a sparse image larger than the free space.
    pub sparse_ok: bool,
}

/// One user of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Mounts it holds.
    pub mounts: u32,
}

/// The export serving a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportInfo {
    /// Its process.
    pub pid: u32,
    /// Seconds since the epoch when it started.
    pub started: u64,
    /// Plaintext bytes and requests it served (as of its last report, about a second ago).
    pub io: IoCounts,
}

/// A volume as the service sees it: the manager's status, its key's source and users.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeState {
    /// What the manager and the host say.
    #[serde(flatten)]
    pub volume: Status,
    /// Where its key comes from (`None`: handed over with each open).
    pub key: Option<KeyRef>,
    /// Whether that key can be had now (a registered key is registered, a key file is
    /// readable by root only); `false` without a key source.
    pub key_available: bool,
    /// Its users.
    pub users: Vec<User>,
    /// Mounts held, all users together.
    pub mounts: u64,
    /// The live export, when served.
    pub export: Option<ExportInfo>,
    /// Users are waiting for its key to be registered, to open it again.
    pub waiting_for_key: bool,
}

/// What [`Service::create`] did.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The volume existed with these parameters already: nothing was made.
    pub already_existed: bool,
    /// When a keyslot was made: a note that the KDF policy may have taken the key for
    /// what it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kdf_hint: Option<String>,
    /// The volume now.
    pub volume: VolumeState,
}

/// What [`Service::mount`] did.
#[derive(Debug, Serialize)]
pub struct Mounted {
    /// Where the volume's file system is.
    pub mount_point: PathBuf,
    /// It was opened for this mount (it had no live export).
    pub opened: bool,
    /// Mounts held now, all users together.
    pub mounts: u64,
}

/// What [`Service::unmount`] did.
#[derive(Debug, Serialize)]
pub struct Unmounted {
    /// The user held no mount of the volume (nothing was counted down).
    pub unknown_user: bool,
    /// The export was stopped: this was the last mount.
    pub closed: bool,
    /// Mounts held now, all users together.
    pub mounts: u64,
}

/// What [`Service::register_key`] did.
#[derive(Debug, Serialize)]
pub struct Registered {
    /// A key of that id was replaced.
    pub replaced: bool,
    /// Volumes opened again because their users were waiting for this key.
    pub reopened: Vec<VolumeId>,
}

/// What [`Service::rekey`] did.
#[derive(Debug, Serialize)]
pub struct Rekeyed {
    /// The keyslot that holds the new key.
    pub keyslot: u32,
    /// Where the volume's key comes from now.
    pub key: Option<KeyRef>,
}

/// What [`Service::recover`] did.
#[derive(Debug, Default, Serialize)]
pub struct Recovery {
    /// Volumes whose users were dropped because they were counted before a reboot.
    pub rebooted: Vec<VolumeId>,
    /// Attachment records of volumes that no longer exist, removed.
    pub forgotten: Vec<VolumeId>,
    /// What the manager's sweep repaired.
    pub swept: Vec<Action>,
    /// Volumes with users that had no live export and were opened again.
    pub reopened: Vec<VolumeId>,
    /// Volumes with users whose key is not available: opened when it is registered.
    pub waiting_for_key: Vec<(VolumeId, String)>,
    /// Volumes open while nobody held a mount of them (left lingering), closed.
    pub closed_idle: Vec<VolumeId>,
}

/// The service over one state directory.
pub struct Service {
    manager: Manager,
    keys: KeyRing,
    boot_id: String,
    locks: Mutex<HashMap<VolumeId, Arc<Mutex<()>>>>,
    waiting: Mutex<BTreeSet<VolumeId>>,
    _claim: File,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("state", &self.manager.root())
            .field("keys", &self.keys)
            .finish()
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or "" where there is none.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Service {
    /// The service of `manager`'s state directory: claims it (one service per directory).
    ///
    /// # Errors
    /// [`Error::Invalid`] when another service holds the directory; [`Error::UnsafeDir`],
    /// [`Error::Io`] for the directory.
    pub fn new(manager: Manager) -> Result<Self> {
        let root = manager.state()?;
        let claim = root.lock_file("service.lock")?;
        if rustix::fs::flock(&claim, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
        {
            return Err(Error::Invalid(format!(
                "another sealvol daemon serves {} (it holds {}); stop it first, or give this one another --state-dir",
                manager.root().display(),
                root.join("service.lock").display()
            )));
        }
        root.ensure_dir(DIR, 0o700)?;
        Ok(Service {
            manager,
            keys: KeyRing::default(),
            boot_id: boot_id(),
            locks: Mutex::new(HashMap::new()),
            waiting: Mutex::new(BTreeSet::new()),
            _claim: claim,
        })
    }

    /// The volume manager.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// The registered keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Runs `f` holding `id`'s lock (calls on one id one after the other).
    fn with_lock<T>(&self, id: &VolumeId, f: impl FnOnce() -> T) -> T {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(id.clone()).or_default())
        };
        let out = {
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            f()
        };
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            map.remove(id);
        }
        out
    }

    fn dir(&self) -> Result<SafeDir> {
        self.manager.state()?.ensure_dir(DIR, 0o700)
    }

    /// The attachment record of `id`, if any.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a record that does not parse; [`Error::Io`].
    pub fn attachment(&self, id: &VolumeId) -> Result<Option<Attachment>> {
        let Some(bytes) = self.dir()?.read(&format!("{id}.json"))? else {
            return Ok(None);
        };
        serde_json::from_slice::<Attachment>(&bytes)
            .map_err(|e| {
                Error::Invalid(format!(
                    "the attachment record {} does not parse ({e}); remove it (its volume's users are then forgotten)",
                    self.dir().map(|d| d.join(&format!("{id}.json")).display().to_string()).unwrap_or_default()
                ))
            })
            .map(|a| Some(a).filter(|a| a.id == *id))
    }

    fn save(&self, a: &Attachment) -> Result<()> {
        let json = serde_json::to_vec_pretty(a).expect("attachments serialise");
        self.dir()?
            .write_atomic(&format!("{}.json", a.id), &json, 0o600)
    }

    fn forget(&self, id: &VolumeId) -> Result<()> {
        self.dir()?.remove_file(&format!("{id}.json")).map(|_| ())
    }

    fn attachments(&self) -> Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for (name, kind) in self.dir()?.entries()? {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(id) = VolumeId::parse(id) else {
                continue;
            };
            if kind == Kind::File {
                match self.attachment(&id) {
                    Ok(Some(a)) => out.push(a),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring an attachment record"),
                }
            }
        }
        Ok(out)
    }

    /// The state of `id` from the manager's `status` and the attachment `att`.
    fn state_of(&self, status: Status, att: Option<&Attachment>) -> VolumeState {
        let key = att.and_then(|a| a.key.clone());
        let key_available = key.as_ref().is_some_and(|k| match k {
            KeyRef::Registered(n) => self.keys.contains(n),
            KeyRef::File(p) => crate::keyring::read_root_key_file(p).is_ok(),
        });
        let export = served::find(self.manager.run(), &status.image)
            .filter(|e| status.export_alive && Some(e.pid) == status.export_pid)
            .map(|e| ExportInfo {
                pid: e.pid,
                started: e.started,
                io: self.manager.run().counts(&e.id).unwrap_or_default(),
            });
        let users: Vec<User> = att
            .map(|a| {
                a.users
                    .iter()
                    .map(|(id, &mounts)| User {
                        id: id.clone(),
                        mounts,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&status.id);
        VolumeState {
            mounts: att.map_or(0, Attachment::mounts),
            volume: status,
            key,
            key_available,
            users,
            export,
            waiting_for_key: waiting,
        }
    }

    /// The manager's status of `id`, which must exist.
    fn existing(&self, id: &VolumeId) -> Result<Status> {
        self.manager
            .status(id)?
            .ok_or_else(|| Error::NoSuchVolume { id: id.to_string() })
    }

    fn ready(&self, id: &VolumeId) -> Result<Status> {
        let s = self.existing(id)?;
        if s.phase != Phase::Ready {
            return Err(Error::Invalid(format!(
                "volume {id} is {} (an interrupted operation); POST /v1/sweep (or `sealvol volume sweep`) finishes it",
                s.phase.as_str()
            )));
        }
        Ok(s)
    }

    // -----------------------------------------------------------------------------------
    // keys

    /// Registers `key` under `name`, then opens again the volumes whose users waited for it.
    ///
    /// # Errors
    /// As [`KeyRing::insert`].
    pub fn register_key(&self, name: KeyName, key: SecretBytes) -> Result<Registered> {
        let replaced = self.keys.insert(name.clone(), key)?;
        let waiting: Vec<VolumeId> = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut reopened = Vec::new();
        for id in waiting {
            let wants = self
                .attachment(&id)
                .ok()
                .flatten()
                .is_some_and(|a| a.key == Some(KeyRef::Registered(name.clone())));
            if wants {
                match self.with_lock(&id, || self.reopen(&id)) {
                    Ok(true) => reopened.push(id),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(id = %id, error = %e, "cannot open the volume again"),
                }
            }
        }
        Ok(Registered { replaced, reopened })
    }

    /// Forgets (and wipes) the key `name`; volumes open with it stay open.
    pub fn forget_key(&self, name: &KeyName) -> bool {
        self.keys.remove(name)
    }

    fn key_of(&self, choice: &KeyChoice) -> Result<SecretBytes> {
        match choice {
            KeyChoice::Given(k) => Ok(k.duplicate()),
            KeyChoice::Ref(r) => self.keys.resolve(r),
        }
    }

    /// The key of `att`'s volume, from its source.
    fn recorded_key(&self, id: &VolumeId, att: &Attachment) -> Result<SecretBytes> {
        let source = att.key.as_ref().ok_or_else(|| Error::KeyUnavailable {
            key: format!("the key of volume {id}"),
            reason: "the volume has no key source (its key was handed over with the request that created it, and nobody keeps it)".into(),
            fix: format!("open it with its key (POST /v1/volumes/{id}/open), or rekey it to a registered key or a key file (POST /v1/volumes/{id}/rekey)"),
        })?;
        self.keys.resolve(source)
    }

    // -----------------------------------------------------------------------------------
    // create, remove

    /// Creates a volume (closed) and records where its key comes from. The same id with the
    /// same parameters and key source is a no-op that says so.
    ///
    /// # Errors
    /// [`Error::KeyUnavailable`] (nothing made); [`Error::Invalid`] for bad parameters or an
    /// id that exists with other parameters or another key source; the manager's errors
    /// (every step undone).
    pub fn create(&self, req: CreateRequest) -> Result<Created> {
        let id = req.id.clone();
        self.with_lock(&id, || {
            let key_ref = match &req.key {
                KeyChoice::Ref(r) => Some(r.clone()),
                KeyChoice::Given(_) => None,
            };
            let existing = self.attachment(&id)?;
            if let (Some(a), Some(r)) = (&existing, &key_ref) {
                if self.manager.status(&id)?.is_some() && a.key.as_ref() != Some(r) {
                    return Err(Error::Invalid(format!(
                        "volume {id} exists with another key source ({}); remove it first or name the same key",
                        a.key.as_ref().map_or("a key handed over with each open".into(), KeyRef::describe)
                    )));
                }
            }
            let key = self.key_of(&req.key)?;
            let made = self.manager.create(
                &id,
                &req.params,
                CreateOptions {
                    mount: false,
                    sparse_ok: req.sparse_ok,
                },
                &key,
                &req.kdf,
            )?;
            drop(key);
            let att = match existing {
                Some(a) if made.already_existed => a,
                _ => Attachment::new(&id, key_ref, &self.boot_id),
            };
            self.save(&att)?;
            Ok(Created {
                already_existed: made.already_existed,
                kdf_hint: made.kdf_hint,
                volume: self.state_of(made.status, Some(&att)),
            })
        })
    }

    /// Destroys volume `id` as [`Manager::destroy`] (crypto-erase), refusing while it has
    /// users. An absent id is a success that says so.
    ///
    /// # Errors
    /// [`Error::InUse`] naming the users (nothing changed); the manager's errors.
    pub fn remove(&self, id: &VolumeId) -> Result<Destroyed> {
        self.with_lock(id, || {
            if let Some(a) = self.attachment(id)? {
                if a.mounts() > 0 {
                    return Err(Error::InUse {
                        id: id.to_string(),
                        users: describe_users(&a),
                        fix: "stop and remove the containers using it (or close it through the API) first".into(),
                    });
                }
            }
            let d = self.manager.destroy(id)?;
            self.forget(id)?;
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            Ok(d)
        })
    }

    // -----------------------------------------------------------------------------------
    // mount, unmount, open, close

    /// Counts a mount of `id` by `user`, opening the volume (with its recorded key) for the
    /// first. A failed open counts nothing.
    ///
    /// # Errors
    /// [`Error::NoSuchVolume`]; [`Error::KeyUnavailable`] (nothing opened);
    /// [`Error::Invalid`] for too many users; the open's errors ([`Error::Step`] with a
    /// [`Error::WrongKey`] cause for a key that opens nothing).
    pub fn mount(&self, id: &VolumeId, user: &UserId) -> Result<Mounted> {
        self.with_lock(id, || {
            let status = self.ready(id)?;
            let mut att = self
                .attachment(id)?
                .unwrap_or_else(|| Attachment::new(id, None, &self.boot_id));
            if !att.users.contains_key(user) && att.users.len() >= MAX_USERS {
                return Err(Error::Invalid(format!(
                    "volume {id} has {MAX_USERS} users already; unmount some first"
                )));
            }
            let opened = !status.served();
            if opened {
                let key = self.recorded_key(id, &att)?;
                self.manager.open(id, &key)?;
            }
            let n = att.users.entry(user.clone()).or_default();
            *n = n.saturating_add(1);
            att.boot_id = self.boot_id.clone();
            self.save(&att)?;
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            tracing::info!(id = %id, user = user.as_str(), opened, mounts = att.mounts(), "mounted");
            Ok(Mounted {
                mount_point: status.mount_path,
                opened,
                mounts: att.mounts(),
            })
        })
    }

    /// Counts down a mount of `id` by `user`, closing the volume when no mount is left. A
    /// user that holds none changes nothing (but a volume nobody uses is still closed).
    ///
    /// # Errors
    /// [`Error::NoSuchVolume`]; the close's errors (a busy file system: the count is down,
    /// the export stays, and the next unmount or remove tries again).
    pub fn unmount(&self, id: &VolumeId, user: &UserId) -> Result<Unmounted> {
        self.with_lock(id, || {
            let mut u = self.release_locked(id, user)?;
            if u.mounts == 0 {
                u.closed = self.close_unused_locked(id)?;
            }
            Ok(u)
        })
    }

    /// Counts down a mount of `id` by `user` as [`Service::unmount`], but leaves the volume
    /// open: [`Service::close_unused`] closes it later if nobody mounted it meanwhile (a
    /// `docker run` unmounts and mounts again at once).
    ///
    /// # Errors
    /// [`Error::NoSuchVolume`]; the record's.
    pub fn release(&self, id: &VolumeId, user: &UserId) -> Result<Unmounted> {
        self.with_lock(id, || self.release_locked(id, user))
    }

    fn release_locked(&self, id: &VolumeId, user: &UserId) -> Result<Unmounted> {
        self.existing(id)?;
        let mut att = self
            .attachment(id)?
            .unwrap_or_else(|| Attachment::new(id, None, &self.boot_id));
        let unknown_user = match att.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                att.users.remove(user);
                false
            }
            None => {
                tracing::warn!(id = %id, user = user.as_str(), "unmount by a user that holds no mount");
                true
            }
        };
        if !unknown_user {
            self.save(&att)?;
        }
        tracing::info!(id = %id, user = user.as_str(), mounts = att.mounts(), "unmounted");
        Ok(Unmounted {
            unknown_user,
            closed: false,
            mounts: att.mounts(),
        })
    }

    /// Closes `id` when it is open and nobody holds a mount of it. Returns whether it
    /// closed it.
    ///
    /// # Errors
    /// The close's (a busy file system: the export stays).
    pub fn close_unused(&self, id: &VolumeId) -> Result<bool> {
        self.with_lock(id, || self.close_unused_locked(id))
    }

    fn close_unused_locked(&self, id: &VolumeId) -> Result<bool> {
        let Some(status) = self.manager.status(id)? else {
            return Ok(false);
        };
        let mounts = self.attachment(id)?.map_or(0, |a| a.mounts());
        if mounts > 0 || !(status.served() || status.mounted) {
            return Ok(false);
        }
        let closed = self.manager.close(id)?;
        if closed {
            tracing::info!(id = %id, "closed: no mount left");
        }
        Ok(closed)
    }

    /// Closes every volume of an attachment record that is open while nobody holds a mount
    /// of it (at start and at shutdown: what lingered after its last unmount). Returns the
    /// ids it closed; failures are logged.
    pub fn close_idle(&self) -> Vec<VolumeId> {
        let mut closed = Vec::new();
        for a in self.attachments().unwrap_or_default() {
            if a.mounts() > 0 {
                continue;
            }
            match self.close_unused(&a.id) {
                Ok(true) => closed.push(a.id),
                Ok(false) => {}
                Err(e) => tracing::warn!(id = %a.id, error = %e, "cannot close an unused volume"),
            }
        }
        closed
    }

    /// Opens `id` for an API client ([`API_USER`]; once, however often): with `key`, or its
    /// recorded key source.
    ///
    /// # Errors
    /// As [`Service::mount`].
    pub fn open(&self, id: &VolumeId, key: Option<KeyChoice>) -> Result<VolumeState> {
        self.with_lock(id, || {
            let status = self.ready(id)?;
            let mut att = self
                .attachment(id)?
                .unwrap_or_else(|| Attachment::new(id, None, &self.boot_id));
            if !status.served() {
                let key = match &key {
                    Some(k) => self.key_of(k)?,
                    None => self.recorded_key(id, &att)?,
                };
                self.manager.open(id, &key)?;
            }
            let api = UserId(API_USER.into());
            att.users.insert(api, 1);
            att.boot_id = self.boot_id.clone();
            self.save(&att)?;
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            Ok(self.state_of(self.existing(id)?, Some(&att)))
        })
    }

    /// Drops the API client's use of `id` and closes it when nobody else uses it.
    ///
    /// # Errors
    /// [`Error::InUse`] when containers still use it (nothing changed); as
    /// [`Service::unmount`].
    pub fn close(&self, id: &VolumeId) -> Result<VolumeState> {
        self.with_lock(id, || {
            let status = self.existing(id)?;
            let mut att = self
                .attachment(id)?
                .unwrap_or_else(|| Attachment::new(id, None, &self.boot_id));
            let api = UserId(API_USER.into());
            let others = att.users.keys().any(|u| *u != api);
            if others {
                let mut rest = att.clone();
                rest.users.remove(&api);
                return Err(Error::InUse {
                    id: id.to_string(),
                    users: describe_users(&rest),
                    fix: "it stays open until they unmount it".into(),
                });
            }
            if att.users.remove(&api).is_some() {
                self.save(&att)?;
            }
            if status.served() || status.mounted {
                self.manager.close(id)?;
            }
            Ok(self.state_of(self.existing(id)?, Some(&att)))
        })
    }

    /// Replaces the key of `id`: the old key from `old` (default: its recorded source),
    /// the new one from `new`, whose source (for a [`KeyChoice::Ref`]) becomes the
    /// volume's; a new key handed over leaves the volume without a key source.
    ///
    /// # Errors
    /// [`Error::KeyUnavailable`]; [`Error::WrongKey`] when the old key opens nothing
    /// (nothing changed); the manager's errors.
    pub fn rekey(
        &self,
        id: &VolumeId,
        old: Option<KeyChoice>,
        new: KeyChoice,
        kdf: &KdfPolicy,
    ) -> Result<Rekeyed> {
        self.with_lock(id, || {
            self.ready(id)?;
            let mut att = self
                .attachment(id)?
                .unwrap_or_else(|| Attachment::new(id, None, &self.boot_id));
            let old_key = match &old {
                Some(k) => self.key_of(k)?,
                None => self.recorded_key(id, &att)?,
            };
            let new_key = self.key_of(&new)?;
            let changed = self.manager.change_key(id, &old_key, &new_key, kdf)?;
            att.key = match new {
                KeyChoice::Ref(r) => Some(r),
                KeyChoice::Given(_) => None,
            };
            self.save(&att)?;
            Ok(Rekeyed {
                keyslot: changed.keyslot,
                key: att.key,
            })
        })
    }

    // -----------------------------------------------------------------------------------
    // status, list, sweep, recovery

    /// The state of `id`.
    ///
    /// # Errors
    /// [`Error::NoSuchVolume`]; a damaged record.
    pub fn status(&self, id: &VolumeId) -> Result<VolumeState> {
        let status = self.existing(id)?;
        Ok(self.state_of(status, self.attachment(id)?.as_ref()))
    }

    /// Every volume of the state directory, by id.
    ///
    /// # Errors
    /// A damaged record.
    pub fn list(&self) -> Result<Vec<VolumeState>> {
        let mut out = Vec::new();
        for s in self.manager.list()? {
            let att = self.attachment(&s.id).ok().flatten();
            out.push(self.state_of(s, att.as_ref()));
        }
        Ok(out)
    }

    /// The manager's sweep, then attachment records of volumes that are gone are removed.
    ///
    /// # Errors
    /// The sweep's.
    pub fn sweep(&self) -> Result<Vec<Action>> {
        let mut done = self.manager.sweep()?;
        for a in self.attachments()? {
            if self.manager.status(&a.id)?.is_none() {
                self.with_lock(&a.id, || self.forget(&a.id))?;
                done.push(Action {
                    id: a.id.to_string(),
                    action: "removed the attachment record of a volume that is gone".into(),
                });
            }
        }
        Ok(done)
    }

    /// Opens `id` again (its lock held) when it has users but no live export; returns
    /// whether it did. A key that is not available puts it on the waiting list.
    fn reopen(&self, id: &VolumeId) -> Result<bool> {
        let Some(att) = self.attachment(id)? else {
            return Ok(false);
        };
        let Some(status) = self.manager.status(id)? else {
            return Ok(false);
        };
        if att.mounts() == 0 || status.served() || status.phase != Phase::Ready {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return Ok(false);
        }
        let key = match self.recorded_key(id, &att) {
            Ok(k) => k,
            Err(e) => {
                self.waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                return Err(e);
            }
        };
        self.manager.open(id, &key)?;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tracing::info!(id = %id, mounts = att.mounts(), "opened again for its users");
        Ok(true)
    }

    /// Recovery at start (see the module docs).
    ///
    /// # Errors
    /// The sweep's (the rest is logged and reported, never fatal).
    pub fn recover(&self) -> Result<Recovery> {
        let mut out = Recovery::default();
        for mut a in self.attachments()? {
            if a.boot_id != self.boot_id && !a.users.is_empty() {
                tracing::warn!(id = %a.id, users = a.users.len(), "users counted before a reboot are dropped");
                a.users.clear();
                a.boot_id = self.boot_id.clone();
                self.save(&a)?;
                out.rebooted.push(a.id.clone());
            }
        }
        out.swept = self.sweep()?;
        out.forgotten = out
            .swept
            .iter()
            .filter(|a| a.action.starts_with("removed the attachment"))
            .filter_map(|a| VolumeId::parse(&a.id).ok())
            .collect();
        out.closed_idle = self.close_idle();
        for a in self.attachments()? {
            if a.mounts() == 0 {
                continue;
            }
            match self.with_lock(&a.id, || self.reopen(&a.id)) {
                Ok(true) => out.reopened.push(a.id.clone()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %a.id, error = %e, "cannot open a volume its users still need");
                    out.waiting_for_key.push((a.id.clone(), e.to_string()));
                }
            }
        }
        Ok(out)
    }
}

/// The users of `a`, in words.
fn describe_users(a: &Attachment) -> String {
    let names: Vec<String> = a
        .users
        .iter()
        .take(5)
        .map(|(u, n)| {
            let short: String = u.as_str().chars().take(12).collect();
            if *n > 1 {
                format!("{short} ({n} mounts)")
            } else {
                short
            }
        })
        .collect();
    let more = a.users.len().saturating_sub(5);
    format!(
        "{} user(s): {}{}",
        a.users.len(),
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// A volume's parameters from a container engine's volume options (`size`, `fs`, `type`,
/// `detached_header`; for an overlay volume over a shared read-only base, `base` with
/// `base-hash`, `base-hash-offset` and `base-root` for a dm-verity base) and its key source
/// (`key_id` or `key_file`): the options a volume driver accepts. Unknown options are
/// refused.
///
/// # Errors
/// [`Error::Invalid`] naming the option.
pub fn params_from_options(
    opts: &BTreeMap<String, String>,
) -> Result<(Params, Option<KeyRef>, bool)> {
    let mut params = Params {
        size: 0,
        fs: "ext4".into(),
        detached_header: false,
        luks_type: volume::LuksType::Luks2,
        base: None,
    };
    let mut key = None;
    let mut sparse_ok = false;
    let (mut base, mut base_hash, mut base_hash_offset, mut base_root) = (None, None, None, None);
    let flag = |k: &str, v: &str| match v {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::Invalid(format!(
            "option {k}={v:?} is not a boolean; say true or false"
        ))),
    };
    for (k, v) in opts {
        match k.as_str() {
            "size" => params.size = volume::parse_size(v)?,
            "fs" => params.fs = v.clone(),
            "type" => {
                params.luks_type = match v.as_str() {
                    "luks2" => volume::LuksType::Luks2,
                    "luks1" => volume::LuksType::Luks1,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "option type={v:?}: use luks2 (default) or luks1"
                        )))
                    }
                }
            }
            "detached_header" | "detached-header" => params.detached_header = flag(k, v)?,
            "sparse_ok" | "sparse-ok" => sparse_ok = flag(k, v)?,
            "key_id" | "key-id" => {
                if key.is_some() {
                    return Err(Error::Invalid(
                        "give one of key-id and key-file, not both".into(),
                    ));
                }
                key = Some(KeyRef::Registered(KeyName::parse(v)?));
            }
            "key_file" | "key-file" => {
                if key.is_some() {
                    return Err(Error::Invalid(
                        "give one of key-id and key-file, not both".into(),
                    ));
                }
                let p = PathBuf::from(v);
                if !p.is_absolute() {
                    return Err(Error::Invalid(format!(
                        "option key-file={v:?} must be an absolute path"
                    )));
                }
                key = Some(KeyRef::File(p));
            }
            "base" => base = Some(PathBuf::from(v)),
            "base_hash" | "base-hash" => base_hash = Some(PathBuf::from(v)),
            "base_hash_offset" | "base-hash-offset" => {
                base_hash_offset = Some(v.parse::<u64>().map_err(|_| {
                    Error::Invalid(format!(
                        "option {k}={:?} is not a byte offset",
                        v.chars().take(32).collect::<String>()
                    ))
                })?)
            }
            "base_root" | "base-root" => base_root = Some(v.clone()),
            "key" | "passphrase" | "secret" => {
                return Err(Error::Invalid(format!(
                    "option {k} is refused: container engines store and show volume options, so a key never goes in one; register the key (POST /v1/keys) and say key-id=ID, or say key-file=/root-only/file"
                )))
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown volume option {:?}; sealvol takes size, fs, type, detached-header, sparse-ok, key-id, key-file, base, base-hash, base-hash-offset, base-root",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    params.base =
        crate::overlay::BaseSpec::from_parts(base, base_hash, base_hash_offset, base_root)?;
    if params.size == 0 && params.base.is_none() {
        return Err(Error::Invalid(
            "option size is missing (for example --opt size=1G)".into(),
        ));
    }
    Ok((params, key, sparse_ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    #[test]
    fn user_ids_are_bounded_and_plain() {
        assert!(UserId::parse(&"a".repeat(64)).is_ok());
        assert!(UserId::parse("api").is_ok());
        for bad in ["", "a/b", "a b", "../x", &"a".repeat(129), "é"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_name_keys_but_never_hold_them() {
        let o = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let (p, k, sparse) =
            params_from_options(&o(&[("size", "1G"), ("key-id", "web"), ("sparse-ok", "")]))
                .unwrap();
        assert_eq!(p.size, 1 << 30);
        assert_eq!(k, Some(KeyRef::Registered(KeyName::parse("web").unwrap())));
        assert!(sparse);
        let (_, k, _) =
            params_from_options(&o(&[("size", "64M"), ("key-file", "/etc/k")])).unwrap();
        assert_eq!(k, Some(KeyRef::File("/etc/k".into())));
        // An overlay volume over a shared base: no size needed (the base's).
        let (p, _, _) =
            params_from_options(&o(&[("base", "/srv/base.img"), ("key-id", "web")])).unwrap();
        assert_eq!(
            p.base,
            Some(crate::overlay::BaseSpec::Image {
                path: "/srv/base.img".into()
            })
        );
        let (p, _, _) = params_from_options(&o(&[
            ("base", "/srv/base.img"),
            ("base-hash", "/srv/base.hash"),
            ("base-hash-offset", "4096"),
            ("base-root", "ab12"),
        ]))
        .unwrap();
        match p.base {
            Some(crate::overlay::BaseSpec::Verity { image, verity }) => {
                assert_eq!(image, PathBuf::from("/srv/base.img"));
                assert_eq!(verity.hash, PathBuf::from("/srv/base.hash"));
                assert_eq!((verity.hash_offset, verity.root.as_str()), (4096, "ab12"));
            }
            other => panic!("{other:?}"),
        }
        for (bad, why) in [
            (o(&[("base", "base.img")]), "absolute"),
            (
                o(&[("base", "/b"), ("base-root", "ab")]),
                "a verity base needs all",
            ),
            (
                o(&[("base-hash", "/h"), ("base-root", "ab")]),
                "a verity base needs all",
            ),
            (
                o(&[("base", "/b"), ("base-hash-offset", "x")]),
                "not a byte offset",
            ),
            (
                o(&[("size", "1G"), ("key", "c2VjcmV0")]),
                "never goes in one",
            ),
            (o(&[("key-id", "web")]), "size is missing"),
            (o(&[("size", "1G"), ("key-file", "k")]), "absolute"),
            (o(&[("size", "1G"), ("key-id", "A")]), "invalid key id"),
            (
                o(&[("size", "1G"), ("colour", "red")]),
                "unknown volume option",
            ),
            (
                o(&[("size", "1G"), ("key-id", "a"), ("key-file", "/k")]),
                "not both",
            ),
            (o(&[("size", "1G"), ("type", "luks9")]), "luks1"),
            (
                o(&[("size", "1G"), ("detached-header", "maybe")]),
                "boolean",
            ),
        ] {
            let e = params_from_options(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            // The refused value of a key option never appears in the message.
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
    }

    #[test]
    fn one_service_per_state_directory_and_absent_volumes_are_typed() {
        let d = tempfile::tempdir().unwrap();
        let m = Manager::new(d.path().join("s"), StateDir::new(d.path().join("run")));
        let s = Service::new(m.clone()).unwrap();
        let e = Service::new(m).unwrap_err().to_string();
        assert!(e.contains("another sealvol daemon"), "{e}");
        let id = VolumeId::parse("none").unwrap();
        let user = UserId::parse("c1").unwrap();
        assert!(matches!(
            s.mount(&id, &user),
            Err(Error::NoSuchVolume { .. })
        ));
        assert!(matches!(
            s.unmount(&id, &user),
            Err(Error::NoSuchVolume { .. })
        ));
        assert!(matches!(s.status(&id), Err(Error::NoSuchVolume { .. })));
        assert!(s.remove(&id).unwrap().already_absent);
        assert!(s.list().unwrap().is_empty());
        let r = s.recover().unwrap();
        assert!(r.reopened.is_empty() && r.waiting_for_key.is_empty());
    }

    #[test]
    fn calls_on_one_id_wait_for_each_other_and_locks_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let m = Manager::new(d.path().join("s"), StateDir::new(d.path().join("run")));
        let s = Arc::new(Service::new(m).unwrap());
        let id = VolumeId::parse("a").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&s);
        let id2 = id.clone();
        let t = std::thread::spawn(move || {
            s2.with_lock(&id2, || {
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
            })
        });
        rx.recv().unwrap();
        let started = std::time::Instant::now();
        // Another id runs at once; the same id waits.
        s.with_lock(&VolumeId::parse("b").unwrap(), || {});
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        s.with_lock(&id, || {});
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        t.join().unwrap();
        assert!(s.locks.lock().unwrap().is_empty());
    }
}
