//! [`OverlayDevice`]: create, open, read, write, discard, commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use rayon::prelude::*;
use sealvol_block::BlockDevice;
use sealvol_crypto::SecretBytes;
use sealvol_luks::{FormatOptions, KdfLimits, KdfParams};

use crate::format::{
    depth_for, Checkpoint, Entry, GenRecord, LowerRecord, Root, BLOCK, DEFAULT_CLUSTER_SHIFT,
    LUKS_AREA, LUKS_METADATA, MAC_LEN, MAX_CLUSTER_SHIFT, MAX_VIRTUAL_SIZE, MIN_CLUSTER_SHIFT,
    ROOT_SLOTS, ROOT_SLOT_LEN,
};
use crate::keys::{extent_nonce, ExtentKey, LayerKeys, MasterKey};
use crate::map::{sha256, Alloc, Map};
use crate::store::{HeaderArea, Store};
use crate::{Error, Result};

/// Stripe locks serialising read-modify-write of one logical cluster.
const STRIPES: usize = 1024;
/// Bytes of clusters handled under one set of stripe locks, sealed as one extent (at
/// least one cluster).
const WRITE_BATCH: u64 = EXTENT_MAX;
/// The most bytes one extent key seals (one cluster when clusters are larger).
pub(crate) const EXTENT_MAX: u64 = 1 << 20;
/// Commit on its own when this many bytes of replaced clusters wait to be freed.
const AUTO_COMMIT_BYTES: u64 = 256 << 20;
/// ... or when this many map nodes are dirty (128 MiB of nodes written by one commit;
/// with 8192, 4 KiB random writes across a 3 GiB disk spent a fifth of their time
/// writing and hashing nodes again).
const AUTO_COMMIT_NODES: usize = 32768;
/// Requests at least this large are crypted on several threads.
const PARALLEL_MIN: usize = 256 << 10;
/// Freed runs of at least this many bytes are punched out of the store at commit; shorter
/// ones stay allocated until the allocator reuses them.
const PUNCH_MIN: u64 = 1 << 20;

/// A write batch's cluster buffer, handed back to its thread for the next batch: a fresh
/// 1 MiB allocation per batch would cost a page fault per 4 KiB. Buffers above
/// [`WRITE_BATCH`] (large clusters) are not kept.
struct BatchBuf(Vec<u8>);

thread_local! {
    static BATCH_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl BatchBuf {
    /// A zeroed buffer of `len` bytes (the thread's kept one when there is one).
    fn take(len: usize) -> Self {
        let mut v = BATCH_BUF.with(|b| b.take());
        v.clear();
        v.resize(len, 0);
        BatchBuf(v)
    }
}

impl std::ops::Deref for BatchBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for BatchBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for BatchBuf {
    fn drop(&mut self) {
        // It holds ciphertext once sealed (and data, never keys, if sealing failed: the
        // same data the export's request buffers hold).
        let v = std::mem::take(&mut self.0);
        if v.capacity() as u64 <= WRITE_BATCH {
            BATCH_BUF.with(|b| b.set(v));
        }
    }
}

/// How to make a new overlay.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to the cluster size); default: the base's size.
    pub virtual_size: Option<u64>,
    /// Cluster size in bytes: a power of two from 4 KiB to 1 MiB (default 4 KiB).
    pub cluster_size: u32,
    /// KDF of the embedded LUKS2 keyslot (default: PBKDF2 at cryptsetup's minimum, for
    /// machine keys; give a memory-hard profile for passphrases).
    pub kdf: KdfParams,
    /// An opaque identity of the base (a verity root hash, say) that every open must
    /// present again; zeros = none.
    pub base_tag: [u8; 32],
    /// LUKS2 label of the embedded header.
    pub label: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            virtual_size: None,
            cluster_size: 1 << DEFAULT_CLUSTER_SHIFT,
            kdf: KdfParams::pbkdf2_min(),
            base_tag: [0; 32],
            label: None,
        }
    }
}

/// How to open an overlay.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Bounds on the embedded keyslot's KDF (a hostile header is refused before any work).
    pub kdf_limits: KdfLimits,
    /// Refuse any state older than this checkpoint (rollback detection).
    pub expect_checkpoint: Option<Checkpoint>,
    /// Refuse writes, commit nothing.
    pub read_only: bool,
    /// The base's identity, when the overlay was created with one.
    pub base_tag: Option<[u8; 32]>,
}

/// A lower layer of a chain, as the top layer names it: the front end finds its file by
/// the locator and hands its store to [`OverlayDevice::open`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LowerLayer {
    /// Place in the chain (0 = right below the top).
    pub index: usize,
    /// Its UUID.
    pub uuid: String,
    /// The checkpoint it was frozen at (pinned: nothing else is accepted).
    pub checkpoint: Checkpoint,
    /// The opaque locator stored when the chain was made (a file name, for the CLI).
    #[serde(serialize_with = "lossy")]
    pub locator: Vec<u8>,
}

fn lossy<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

/// The state of one layer, behind the device's mutex.
pub(crate) struct State {
    pub(crate) root: Root,
    pub(crate) map: Map,
    pub(crate) alloc: Alloc,
    /// Data blocks replaced since the last commit: freed once the next root is durable.
    pub(crate) pending_data: Vec<u64>,
    pub(crate) pending_nodes: Vec<u64>,
    /// Something changed since the last commit.
    pub(crate) dirty: bool,
    /// The last durable root.
    pub(crate) durable: Checkpoint,
    /// Bytes written in each root slot (what the next write there must cover).
    pub(crate) slot_len: [usize; 2],
    /// Data clusters per generation.
    pub(crate) per_gen: HashMap<u32, u64>,
    pub(crate) zero_clusters: u64,
    /// Keys of lower layers: (lower index, generation) → key.
    pub(crate) inherited: Vec<(u32, u32, Arc<MasterKey>)>,
}

impl State {
    pub(crate) fn count(&mut self, e: Option<Entry>, add: bool) {
        match e {
            Some(Entry::Data { gen, .. }) => {
                let c = self.per_gen.entry(gen).or_insert(0);
                if add {
                    *c += 1
                } else {
                    *c -= 1
                }
            }
            Some(Entry::Zero) => {
                if add {
                    self.zero_clusters += 1
                } else {
                    self.zero_clusters -= 1
                }
            }
            None => {}
        }
    }
}

/// An overlay layer as a [`BlockDevice`]: reads fall through to the base where this layer
/// maps nothing; writes go, encrypted and authenticated, to new clusters of the layer's
/// store; [`BlockDevice::flush`] commits.
///
/// Every method takes `&self`; management operations ([`OverlayDevice::rekey`],
/// [`OverlayDevice::retire`], ...) may run while other threads read and write.
pub struct OverlayDevice {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) uuid: [u8; 16],
    pub(crate) shift: u32,
    pub(crate) virtual_size: u64,
    /// What unmapped clusters read: the next layer down, or the external base.
    pub(crate) base: RwLock<Arc<dyn BlockDevice>>,
    /// The overlay layers below (0 = right below), for snapshots, clones and flatten.
    pub(crate) lower: RwLock<Vec<Arc<OverlayDevice>>>,
    /// The base at the bottom of the chain.
    pub(crate) external: Arc<dyn BlockDevice>,
    /// `None` for a lower layer opened with keys handed down (it cannot commit).
    pub(crate) layer_keys: Option<LayerKeys>,
    /// Master keys of this layer's own generations.
    pub(crate) keys: RwLock<HashMap<u32, Arc<MasterKey>>>,
    pub(crate) read_only: AtomicBool,
    pub(crate) failed: AtomicBool,
    /// Readers and writers hold it shared; a commit holds it alone, so no cluster it frees
    /// is being read.
    pub(crate) gate: RwLock<()>,
    pub(crate) state: Mutex<State>,
    stripes: Box<[Mutex<()>]>,
    /// Reads and writes in progress: crypting one on several threads pays only when it is
    /// the only one (otherwise the others keep the cores busy, and handing work between
    /// threads costs more than it brings).
    busy: AtomicUsize,
}

/// One read or write counted in [`OverlayDevice::busy`] while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Busy(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for OverlayDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayDevice")
            .field("uuid", &uuid_string(&self.uuid))
            .field("virtual_size", &self.virtual_size)
            .field("cluster_size", &(1u64 << self.shift))
            .finish_non_exhaustive()
    }
}

pub(crate) fn uuid_string(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read root slot.
pub(crate) struct SlotRead {
    pub(crate) root: Root,
    pub(crate) content: Vec<u8>,
    pub(crate) mac: [u8; 32],
}

/// Reads and parses both root slots (no authentication). Returns each slot's parse and
/// the bytes each holds (what the next write there must cover).
pub(crate) fn read_slots(store: &dyn Store) -> Result<([Result<SlotRead>; 2], [usize; 2])> {
    let mut out: [Result<SlotRead>; 2] = [
        Err(Error::Invalid("unread".into())),
        Err(Error::Invalid("unread".into())),
    ];
    let mut lens = [ROOT_SLOT_LEN as usize; 2];
    for (i, &off) in ROOT_SLOTS.iter().enumerate() {
        let mut b = vec![0u8; ROOT_SLOT_LEN as usize];
        if let Err(e) = store.read_at(&mut b, off) {
            out[i] = Err(Error::io(format!("reading root slot {i}"), e));
            continue;
        }
        out[i] = Root::parse(&b).map(|(root, len)| {
            lens[i] = len + MAC_LEN;
            SlotRead {
                root,
                content: b[..len].to_vec(),
                mac: b[len..len + MAC_LEN].try_into().expect("32 bytes"),
            }
        });
    }
    Ok((out, lens))
}

fn describe(r: &Result<SlotRead>) -> String {
    match r {
        Ok(_) => "valid".into(),
        Err(e) => e.to_string(),
    }
}

/// What an overlay's root slots say before any key is given ([`peek`]). **Unauthenticated**:
/// anyone who can write the file can change it; it tells a front end how to go on (how
/// large the base must be, which files the lower layers are), and an open then checks
/// everything against the MAC and the pinned root hashes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unverified {
    /// The layer's UUID.
    pub uuid: String,
    /// The slot's checkpoint.
    pub checkpoint: Checkpoint,
    /// Frozen (a snapshot).
    pub frozen: bool,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Size of the external base.
    pub base_size: u64,
    /// The base's identity recorded at creation (zeros: none).
    #[serde(serialize_with = "hex_bytes")]
    pub base_tag: [u8; 32],
    /// The layers below, with their locators (0 = right below).
    pub lower: Vec<LowerLayer>,
}

fn hex_bytes<S: serde::Serializer>(v: &[u8; 32], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// Reads the root slots of the overlay in `store` without a key: the slot with the higher
/// commit counter among those that parse. See [`Unverified`]: nothing in it is trusted.
///
/// # Errors
/// [`Error::NoValidRoot`] when neither slot parses (not an overlay, or both damaged).
pub fn peek(store: &dyn Store) -> Result<Unverified> {
    let (slots, _) = read_slots(store)?;
    let mut why = [String::new(), String::new()];
    let mut best: Option<SlotRead> = None;
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Ok(s)
                if best
                    .as_ref()
                    .is_none_or(|b| s.root.counter > b.root.counter) =>
            {
                best = Some(s)
            }
            Ok(_) => {}
            Err(e) => why[i] = e.to_string(),
        }
    }
    let [slot0, slot1] = why;
    let s = best.ok_or(Error::NoValidRoot { slot0, slot1 })?;
    let r = &s.root;
    Ok(Unverified {
        uuid: uuid_string(&r.uuid),
        checkpoint: Checkpoint {
            counter: r.counter,
            root: sha256(&s.content),
        },
        frozen: r.frozen(),
        virtual_size: r.virtual_size,
        cluster_size: 1 << r.cluster_shift,
        base_size: r.base_size,
        base_tag: r.base_tag,
        lower: lower_layers(&r.lower),
    })
}

/// The current root of a layer: the authenticated slot with the highest counter.
fn pick_root(
    store: &dyn Store,
    keys: &dyn Fn(&[u8; 16]) -> Result<LayerKeys>,
) -> Result<(SlotRead, LayerKeys, [usize; 2])> {
    let (slots, lens) = read_slots(store)?;
    // Both slots of a layer name the same UUID: its keys are derived once.
    let mut derived: Vec<([u8; 16], LayerKeys)> = Vec::new();
    let mut best: Option<SlotRead> = None;
    let mut why = [String::new(), String::new()];
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Ok(s) => {
                if !derived.iter().any(|(u, _)| *u == s.root.uuid) {
                    derived.push((s.root.uuid, keys(&s.root.uuid)?));
                }
                let k = &derived
                    .iter()
                    .find(|(u, _)| *u == s.root.uuid)
                    .expect("derived")
                    .1;
                if !k.verify(&s.content, &s.mac) {
                    why[i] = "the root MAC does not verify under this key".into();
                } else if best
                    .as_ref()
                    .is_none_or(|b| s.root.counter > b.root.counter)
                {
                    best = Some(s);
                }
            }
            Err(e) => why[i] = describe(&Err(e)),
        }
    }
    let [slot0, slot1] = why;
    let s = best.ok_or(Error::NoValidRoot { slot0, slot1 })?;
    let k = derived
        .into_iter()
        .find(|(u, _)| *u == s.root.uuid)
        .expect("derived")
        .1;
    Ok((s, k, lens))
}

fn check_cluster_size(cs: u32) -> Result<u32> {
    let shift = cs.trailing_zeros();
    if !cs.is_power_of_two() || !(MIN_CLUSTER_SHIFT..=MAX_CLUSTER_SHIFT).contains(&shift) {
        return Err(Error::Invalid(format!(
            "cluster size {cs} is not a power of two from 4096 to 1048576"
        )));
    }
    Ok(shift)
}

fn new_uuid() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

pub(crate) fn expect_checkpoint(found: Checkpoint, expected: Option<Checkpoint>) -> Result<()> {
    match expected {
        Some(e) if found.counter < e.counter => Err(Error::Rollback { found, expected: e }),
        Some(e) if found.counter == e.counter && found.root != e.root => {
            Err(Error::Diverged { found, expected: e })
        }
        _ => Ok(()),
    }
}

/// Formats the embedded LUKS2 header with a fresh layer key for `key`.
pub(crate) fn format_luks(
    store: &Arc<dyn Store>,
    key: &[u8],
    uuid: &[u8; 16],
    kdf: KdfParams,
    label: Option<String>,
) -> Result<SecretBytes> {
    let lk = SecretBytes::random(64)?;
    let opts = FormatOptions {
        key_size_bits: 512,
        metadata_size: LUKS_METADATA,
        keyslots_size: Some(LUKS_AREA - 2 * LUKS_METADATA),
        detached: true,
        label,
        subsystem: Some("sealvol-overlay".into()),
        uuid: Some(uuid_string(uuid)),
        kdf,
        ..FormatOptions::default()
    };
    sealvol_luks::Volume::format(HeaderArea::new(store.clone(), LUKS_AREA), &opts, &lk, key)?;
    Ok(lk)
}

/// Runs the embedded LUKS2 keyslot that `key` opens (under `limits`) and returns the
/// overlay's **layer key**, which [`OverlayDevice::open_unlocked`] opens it with: what a
/// front end hands a background process instead of the consumer's key (as it hands a LUKS
/// volume key), so the keyslot's KDF runs once. Zeroized on drop; never print it.
///
/// # Errors
/// [`Error::WrongKey`]; [`Error::Luks`] for a damaged header or a KDF over `limits`.
pub fn unlock_layer_key(
    store: &Arc<dyn Store>,
    key: &[u8],
    limits: KdfLimits,
) -> Result<SecretBytes> {
    unlock_luks(store, key, limits)
}

/// Opens the embedded LUKS2 header with `key`: the layer key.
pub(crate) fn unlock_luks(
    store: &Arc<dyn Store>,
    key: &[u8],
    limits: KdfLimits,
) -> Result<SecretBytes> {
    let mut v = sealvol_luks::Volume::open(HeaderArea::new(store.clone(), LUKS_AREA))?;
    v.set_kdf_limits(limits);
    Ok(v.unlock(key, None)?.volume_key)
}

pub(crate) fn ensure_empty(store: &dyn Store) -> Result<()> {
    let len = store
        .len()
        .map_err(|e| Error::io("reading the new overlay's size", e))?;
    if len != 0 {
        return Err(Error::Invalid(format!(
            "the store for a new overlay already holds {len} bytes; give an empty file"
        )));
    }
    Ok(())
}

/// Everything needed to build a device from a root.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) root: Root,
    pub(crate) layer_keys: Option<LayerKeys>,
    pub(crate) keys: HashMap<u32, Arc<MasterKey>>,
    pub(crate) inherited: Vec<(u32, u32, Arc<MasterKey>)>,
    pub(crate) slot_len: [usize; 2],
    pub(crate) lower: Vec<Arc<OverlayDevice>>,
    pub(crate) external: Arc<dyn BlockDevice>,
    pub(crate) read_only: bool,
}

impl OverlayDevice {
    /// Makes a new overlay in the empty `store` over `base`, with one keyslot opened by
    /// `key`, and a first key generation. The overlay is committed (durable) on return.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad options or a non-empty store; LUKS, crypto and I/O errors.
    pub fn create(
        store: Arc<dyn Store>,
        key: &[u8],
        base: Arc<dyn BlockDevice>,
        opts: &CreateOptions,
    ) -> Result<OverlayDevice> {
        let shift = check_cluster_size(opts.cluster_size)?;
        let cs = 1u64 << shift;
        let vs = opts.virtual_size.unwrap_or(base.size());
        let vs = vs.div_ceil(cs) * cs;
        if vs == 0 || vs > MAX_VIRTUAL_SIZE {
            return Err(Error::Invalid(format!(
                "virtual size {vs} must be between one cluster and 2^60 bytes"
            )));
        }
        ensure_empty(&*store)?;
        let uuid = new_uuid();
        let lk = format_luks(&store, key, &uuid, opts.kdf, opts.label.clone())?;
        let layer_keys = LayerKeys::derive(&lk, &uuid)?;
        drop(lk);
        let mk = MasterKey::random()?;
        let root = Root {
            flags: 0,
            uuid,
            counter: 0,
            cluster_shift: shift,
            virtual_size: vs,
            base_size: base.size(),
            base_tag: opts.base_tag,
            map_block: 0,
            map_hash: [0; 32],
            map_depth: depth_for(vs >> shift),
            current_gen: 1,
            retiring_gen: 0,
            gens: vec![GenRecord {
                id: 1,
                created: 1,
                origin_layer: uuid,
                origin_gen: 1,
                wrapped: layer_keys.wrap_gen(&uuid, 1, mk.raw())?,
            }],
            lower: Vec::new(),
            inherited: Vec::new(),
        };
        Self::start(
            Parts {
                store,
                root,
                layer_keys: Some(layer_keys),
                keys: HashMap::from([(1, Arc::new(mk))]),
                inherited: Vec::new(),
                slot_len: [0; 2],
                lower: Vec::new(),
                external: base,
                read_only: false,
            },
            base_of(&[]),
        )
    }

    /// Writes the zeroed root slots and the first root of a new layer, then builds it.
    pub(crate) fn start(parts: Parts, base: Option<Arc<dyn BlockDevice>>) -> Result<OverlayDevice> {
        let zeros = vec![0u8; 2 * ROOT_SLOT_LEN as usize];
        parts
            .store
            .write_at(&zeros, ROOT_SLOTS[0])
            .map_err(|e| Error::io("writing the root slots", e))?;
        let dev = Self::build(parts, base)?;
        {
            let _g = dev.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut st = lock(&dev.state);
            dev.commit_locked(&mut st, true)?;
        }
        Ok(dev)
    }

    /// Opens the overlay in `store` with `key` over the external `base`.
    ///
    /// When the overlay sits on lower layers (snapshots, a clone's source), `resolve` is
    /// called for each with its [`LowerLayer`] description and returns its store; every
    /// lower layer is checked against the root hash this layer pinned, and opened with the
    /// keys this layer holds for it.
    ///
    /// # Errors
    /// [`Error::WrongKey`]; [`Error::Rollback`]/[`Error::Diverged`] against
    /// `opts.expect_checkpoint`; [`Error::NoValidRoot`], [`Error::Corrupt`] for damaged or
    /// changed metadata; [`Error::BaseMismatch`], [`Error::LowerMismatch`]; LUKS and I/O
    /// errors.
    pub fn open(
        store: Arc<dyn Store>,
        key: &[u8],
        base: Arc<dyn BlockDevice>,
        opts: &OpenOptions,
        resolve: &mut dyn FnMut(&LowerLayer) -> Result<Arc<dyn Store>>,
    ) -> Result<OverlayDevice> {
        let lk = unlock_luks(&store, key, opts.kdf_limits)?;
        Self::open_with_layer_key(store, &lk, base, opts, resolve)
    }

    /// Opens the overlay in `store` with its **layer key** (what [`unlock_layer_key`]
    /// returns) instead of a consumer's key: for a process handed the layer key by one that
    /// ran the keyslot's KDF already (a background export), so the KDF runs once. The key is
    /// checked against the embedded header's digest first (under `opts.kdf_limits`).
    ///
    /// # Errors
    /// [`Error::WrongKey`] when the digest does not match (another layer's key, or a header
    /// replaced since); then as [`OverlayDevice::open`].
    pub fn open_unlocked(
        store: Arc<dyn Store>,
        layer_key: &SecretBytes,
        base: Arc<dyn BlockDevice>,
        opts: &OpenOptions,
        resolve: &mut dyn FnMut(&LowerLayer) -> Result<Arc<dyn Store>>,
    ) -> Result<OverlayDevice> {
        let mut v = sealvol_luks::Volume::open(HeaderArea::new(store.clone(), LUKS_AREA))?;
        v.set_kdf_limits(opts.kdf_limits);
        if !v.verify_volume_key(layer_key)? {
            return Err(Error::WrongKey);
        }
        Self::open_with_layer_key(store, layer_key, base, opts, resolve)
    }

    /// [`OverlayDevice::open`] after the keyslot: with the layer key itself.
    pub(crate) fn open_with_layer_key(
        store: Arc<dyn Store>,
        lk: &SecretBytes,
        base: Arc<dyn BlockDevice>,
        opts: &OpenOptions,
        resolve: &mut dyn FnMut(&LowerLayer) -> Result<Arc<dyn Store>>,
    ) -> Result<OverlayDevice> {
        let (slot, layer_keys, slot_len) = pick_root(&*store, &|u| LayerKeys::derive(lk, u))?;
        let found = Checkpoint {
            counter: slot.root.counter,
            root: sha256(&slot.content),
        };
        expect_checkpoint(found, opts.expect_checkpoint)?;
        let root = slot.root;
        if base.size() != root.base_size {
            return Err(Error::BaseMismatch(format!(
                "the base has {} bytes; the overlay was made over {} bytes",
                base.size(),
                root.base_size
            )));
        }
        if let Some(tag) = opts.base_tag {
            if tag != root.base_tag {
                return Err(Error::BaseMismatch(
                    "the base's identity (tag) differs from the one recorded at creation".into(),
                ));
            }
        }
        let mut keys = HashMap::new();
        for g in &root.gens {
            let k = layer_keys.unwrap_gen(&root.uuid, g.id, &g.wrapped)?;
            keys.insert(g.id, Arc::new(MasterKey::new(k)?));
        }
        let mut inherited = Vec::new();
        for k in &root.inherited {
            let lower_uuid = root.lower[k.lower as usize].uuid;
            let raw = layer_keys.unwrap_inherited(&root.uuid, &lower_uuid, k.gen, &k.wrapped)?;
            inherited.push((k.lower, k.gen, Arc::new(MasterKey::new(raw)?)));
        }
        let lower = open_lower_chain(&root.lower, &inherited, &base, resolve)?;
        let read_only = opts.read_only || root.frozen();
        let b = base_of(&lower);
        Self::build(
            Parts {
                store,
                root,
                layer_keys: Some(layer_keys),
                keys,
                inherited,
                slot_len,
                lower,
                external: base,
                read_only,
            },
            b,
        )
    }

    /// Builds the device from a root: loads and checks the map.
    pub(crate) fn build(p: Parts, base: Option<Arc<dyn BlockDevice>>) -> Result<OverlayDevice> {
        let root = p.root;
        let store_len = p
            .store
            .len()
            .map_err(|e| Error::io("reading the overlay's size", e))?;
        let mut alloc = Alloc::new(root.cluster_shift, store_len);
        let map = Map::load(
            &*p.store,
            root.map_depth,
            root.clusters(),
            root.map_block,
            &root.map_hash,
            &mut alloc,
        )?;
        let mut per_gen: HashMap<u32, u64> = root.gens.iter().map(|g| (g.id, 0)).collect();
        let mut zero_clusters = 0;
        for (c, e) in map.entries() {
            match e {
                Entry::Data { gen, .. } => match per_gen.get_mut(&gen) {
                    Some(n) => *n += 1,
                    None => {
                        return Err(Error::Corrupt {
                            what: "map".into(),
                            why: format!("cluster {c} names generation {gen}, which has no key"),
                        })
                    }
                },
                Entry::Zero => zero_clusters += 1,
            }
        }
        let durable = Checkpoint {
            counter: root.counter,
            root: if root.counter == 0 {
                [0; 32]
            } else {
                sha256(&root.encode()?)
            },
        };
        let base = base.unwrap_or_else(|| p.external.clone());
        let read_only = p.read_only || p.layer_keys.is_none() || root.frozen();
        Ok(OverlayDevice {
            store: p.store,
            uuid: root.uuid,
            shift: root.cluster_shift,
            virtual_size: root.virtual_size,
            base: RwLock::new(base),
            lower: RwLock::new(p.lower),
            external: p.external,
            layer_keys: p.layer_keys,
            keys: RwLock::new(p.keys),
            read_only: AtomicBool::new(read_only),
            failed: AtomicBool::new(false),
            gate: RwLock::new(()),
            state: Mutex::new(State {
                root,
                map,
                alloc,
                pending_data: Vec::new(),
                pending_nodes: Vec::new(),
                dirty: false,
                durable,
                slot_len: p.slot_len,
                per_gen,
                zero_clusters,
                inherited: p.inherited,
            }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            busy: AtomicUsize::new(0),
        })
    }

    /// Opens a frozen lower layer with keys handed down, checking it is the pinned root.
    pub(crate) fn open_pinned(
        store: Arc<dyn Store>,
        index: usize,
        pinned: &LowerRecord,
        keys: HashMap<u32, Arc<MasterKey>>,
        external: Arc<dyn BlockDevice>,
        lower: Vec<Arc<OverlayDevice>>,
    ) -> Result<OverlayDevice> {
        let mismatch = |why: String| Error::LowerMismatch {
            index,
            uuid: uuid_string(&pinned.uuid),
            why,
        };
        let (slots, slot_len) = read_slots(&*store)?;
        let slot = slots
            .into_iter()
            .flatten()
            .find(|s| sha256(&s.content) == pinned.root_hash)
            .ok_or_else(|| {
                mismatch(format!(
                    "no root slot has the pinned root hash {}",
                    hex::encode(pinned.root_hash)
                ))
            })?;
        let root = slot.root;
        if root.uuid != pinned.uuid || root.counter != pinned.counter || !root.frozen() {
            return Err(mismatch(
                "its root names another layer or is not frozen".into(),
            ));
        }
        if root.base_size != external.size() {
            return Err(mismatch(format!(
                "it was made over a base of {} bytes, the base has {}",
                root.base_size,
                external.size()
            )));
        }
        for g in &root.gens {
            if !keys.contains_key(&g.id) {
                return Err(mismatch(format!(
                    "no key is held for its generation {}",
                    g.id
                )));
            }
        }
        let b = base_of(&lower);
        Self::build(
            Parts {
                store,
                root,
                layer_keys: None,
                keys,
                inherited: Vec::new(),
                slot_len,
                lower,
                external,
                read_only: true,
            },
            b,
        )
    }

    pub(crate) fn cs(&self) -> usize {
        1 << self.shift
    }

    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Failed(
                "an earlier commit failed; the file holds the last committed state".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_alive()?;
        if self.read_only.load(Ordering::Relaxed) {
            return Err(Error::ReadOnly(
                "the layer is frozen, a lower layer, or opened read-only",
            ));
        }
        Ok(())
    }

    pub(crate) fn key(&self, gen: u32) -> Result<Arc<MasterKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&gen)
            .cloned()
            .ok_or(Error::NoSuchGeneration(gen))
    }

    fn integrity(&self, cluster: u64) -> Error {
        Error::Integrity {
            cluster,
            layer: uuid_string(&self.uuid),
        }
    }

    /// Reads `buf.len()` bytes at `pos` of the layer below (zeros past its end).
    pub(crate) fn read_base(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let base = self.base.read().unwrap_or_else(|e| e.into_inner()).clone();
        let size = base.size();
        let n = (size.saturating_sub(pos)).min(buf.len() as u64) as usize;
        if n > 0 {
            base.read_at(&mut buf[..n], pos)
                .map_err(|e| Error::io("reading the layer below", std::io::Error::other(e)))?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    /// Reads and decrypts data clusters stored back to back from `block` into `buf`
    /// (whole clusters, logical clusters from `first`).
    fn read_data_run(&self, buf: &mut [u8], first: u64, entries: &[Entry]) -> Result<()> {
        let cs = self.cs();
        let Entry::Data { block, .. } = entries[0] else {
            unreachable!("data runs hold data entries")
        };
        self.store
            .read_at(buf, block * BLOCK)
            .map_err(|e| Error::io(format!("reading clusters at block {block}"), e))?;
        // Clusters of one extent (a run of entries with one generation and nonce) share
        // one key derivation.
        let open = |i: usize, ek: &ExtentKey, chunk: &mut [u8]| -> Result<()> {
            let Entry::Data { tag, .. } = entries[i] else {
                unreachable!("data runs hold data entries")
            };
            let c = first + i as u64;
            if !ek.open(c, self.shift, chunk, &tag)? {
                return Err(self.integrity(c));
            }
            Ok(())
        };
        if !self.parallel(buf.len()) {
            // One thread: derive as each extent begins.
            let mut key: Option<(u32, [u8; 16], ExtentKey)> = None;
            for (i, chunk) in buf.chunks_mut(cs).enumerate() {
                let Entry::Data { gen, nonce, .. } = entries[i] else {
                    unreachable!("data runs hold data entries")
                };
                if !matches!(&key, Some((g, n, _)) if *g == gen && *n == nonce) {
                    key = Some((gen, nonce, self.key(gen)?.extent(&nonce)?));
                }
                open(i, &key.as_ref().expect("derived above").2, chunk)?;
            }
            return Ok(());
        }
        // Several threads: each extent's key is derived once, by whichever needs it first.
        let mut extent_of = Vec::with_capacity(entries.len());
        let mut extents: Vec<(u32, [u8; 16], OnceLock<Option<ExtentKey>>)> = Vec::new();
        for e in entries {
            let Entry::Data { gen, nonce, .. } = *e else {
                unreachable!("data runs hold data entries")
            };
            if !matches!(extents.last(), Some((g, n, _)) if *g == gen && *n == nonce) {
                extents.push((gen, nonce, OnceLock::new()));
            }
            extent_of.push(extents.len() - 1);
        }
        buf.par_chunks_mut(cs)
            .enumerate()
            .try_for_each(|(i, chunk)| {
                let (gen, nonce, key) = &extents[extent_of[i]];
                let ek = key.get_or_init(|| self.key(*gen).and_then(|k| k.extent(nonce)).ok());
                match ek {
                    Some(ek) => open(i, ek, chunk),
                    // Deriving fails only for a generation this layer has no key of.
                    None => Err(self
                        .key(*gen)
                        .err()
                        .unwrap_or_else(|| self.integrity(first + i as u64))),
                }
            })
    }

    /// Fills `buf` (any range) from this layer, with the entries of its clusters.
    pub(crate) fn read_with(
        &self,
        buf: &mut [u8],
        offset: u64,
        entries: &[Option<Entry>],
    ) -> Result<()> {
        let cs = self.cs() as u64;
        let first = offset >> self.shift;
        let end = offset + buf.len() as u64;
        let mut c = first;
        let mut scratch = Vec::new();
        while c < first + entries.len() as u64 {
            let i = (c - first) as usize;
            // The run of clusters from c that can be handled together.
            let mut n = 1usize;
            match entries[i] {
                None => {
                    while i + n < entries.len() && entries[i + n].is_none() {
                        n += 1
                    }
                }
                Some(Entry::Zero) => {
                    while i + n < entries.len() && entries[i + n] == Some(Entry::Zero) {
                        n += 1
                    }
                }
                Some(Entry::Data { block, .. }) => {
                    let per = cs / BLOCK;
                    while i + n < entries.len() {
                        match entries[i + n] {
                            Some(Entry::Data { block: b, .. }) if b == block + n as u64 * per => {
                                n += 1
                            }
                            _ => break,
                        }
                    }
                }
            }
            let run_start = c * cs;
            let run_end = (c + n as u64) * cs;
            let a = run_start.max(offset);
            let b = run_end.min(end);
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match entries[i] {
                None => self.read_base(out, a)?,
                Some(Entry::Zero) => out.fill(0),
                Some(Entry::Data { .. }) => {
                    let data: Vec<Entry> =
                        entries[i..i + n].iter().map(|e| e.expect("data")).collect();
                    if a == run_start && b == run_end {
                        self.read_data_run(out, c, &data)?;
                    } else {
                        // Partial clusters at the request's ends: whole clusters into scratch.
                        scratch.resize((run_end - run_start) as usize, 0);
                        self.read_data_run(&mut scratch, c, &data)?;
                        out.copy_from_slice(
                            &scratch[(a - run_start) as usize..(b - run_start) as usize],
                        );
                    }
                }
            }
            c += n as u64;
        }
        Ok(())
    }

    /// Reads `buf` at `offset` (the BlockDevice read, with this crate's error).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_alive()?;
        if buf.is_empty() {
            return Ok(());
        }
        range(offset, buf.len() as u64, self.virtual_size)?;
        let _busy = Busy::enter(&self.busy);
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let first = offset >> self.shift;
        let last = (offset + buf.len() as u64 - 1) >> self.shift;
        let entries: Vec<Option<Entry>> = {
            let st = lock(&self.state);
            (first..=last).map(|c| st.map.get(c)).collect()
        };
        self.read_with(buf, offset, &entries)
    }

    /// Whether to crypt `len` bytes on several threads: a large request when no other is
    /// in progress.
    fn parallel(&self, len: usize) -> bool {
        len >= PARALLEL_MIN && self.busy.load(Ordering::Relaxed) <= 1
    }

    fn stripe(&self, c: u64) -> usize {
        (c.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % STRIPES
    }

    /// Locks the stripes of clusters `first..first + n` in index order.
    pub(crate) fn lock_stripes(
        &self,
        clusters: impl Iterator<Item = u64>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = clusters.map(|c| self.stripe(c)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| lock(&self.stripes[i])).collect()
    }

    /// Writes (or zeroes, when `src` is `None`) `len` bytes at `offset`.
    pub(crate) fn write_range(&self, src: Option<&[u8]>, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        if len == 0 {
            return Ok(());
        }
        range(offset, len, self.virtual_size)?;
        let _busy = Busy::enter(&self.busy);
        let cs = self.cs() as u64;
        let first = offset >> self.shift;
        let last = (offset + len - 1) >> self.shift;
        let mut c = first;
        while c <= last {
            let n = (last + 1 - c).min((WRITE_BATCH / cs).max(1));
            self.write_batch(src, offset, len, c, n)?;
            c += n;
            self.maybe_commit()?;
        }
        Ok(())
    }

    /// One batch of clusters `c0..c0 + n` of a write of `len` bytes at `offset`.
    fn write_batch(
        &self,
        src: Option<&[u8]>,
        offset: u64,
        len: u64,
        c0: u64,
        n: u64,
    ) -> Result<()> {
        let cs = self.cs() as u64;
        let end = offset + len;
        let _stripes = self.lock_stripes(c0..c0 + n);
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_writable()?;
        let old: Vec<Option<Entry>> = {
            let st = lock(&self.state);
            (c0..c0 + n).map(|c| st.map.get(c)).collect()
        };
        // The clusters to seal (the rest become zero entries), back to back in one buffer.
        let mut zero = vec![false; n as usize];
        let mut data: Vec<u64> = Vec::with_capacity(n as usize);
        for (i, c) in (c0..c0 + n).enumerate() {
            let full = c * cs >= offset && (c + 1) * cs <= end;
            if full && src.is_none() {
                zero[i] = true;
            } else {
                data.push(c);
            }
        }
        let mut plain = BatchBuf::take(data.len() * cs as usize);
        for (k, &c) in data.iter().enumerate() {
            let (cstart, cend) = (c * cs, (c + 1) * cs);
            let (a, b) = (cstart.max(offset), cend.min(end));
            let chunk = &mut plain[k * cs as usize..(k + 1) * cs as usize];
            if a != cstart || b != cend {
                let i = (c - c0) as usize;
                self.read_with(chunk, cstart, &old[i..i + 1])?;
            }
            let dst = &mut chunk[(a - cstart) as usize..(b - cstart) as usize];
            match src {
                Some(s) => dst.copy_from_slice(&s[(a - offset) as usize..(b - offset) as usize]),
                None => dst.fill(0),
            }
        }
        // One extent per batch: one nonce and one key derivation for all its clusters (none
        // when the batch only zeroes clusters, as a discard's does).
        let gen = lock(&self.state).root.current_gen;
        let (nonce, tags): ([u8; 16], Vec<[u8; 16]>) = if data.is_empty() {
            ([0; 16], Vec::new())
        } else {
            let nonce = extent_nonce()?;
            let ek = self.key(gen)?.extent(&nonce)?;
            let seal = |(k, chunk): (usize, &mut [u8])| ek.seal(data[k], self.shift, chunk);
            let tags = if self.parallel(plain.len()) {
                plain
                    .par_chunks_mut(cs as usize)
                    .enumerate()
                    .map(seal)
                    .collect::<Result<_>>()?
            } else {
                plain
                    .chunks_mut(cs as usize)
                    .enumerate()
                    .map(seal)
                    .collect::<Result<_>>()?
            };
            (nonce, tags)
        };
        // Place the sealed clusters; write back-to-back slots with one call.
        let blocks: Vec<u64> = {
            let mut st = lock(&self.state);
            data.iter()
                .map(|_| {
                    let s = st.alloc.alloc_data();
                    st.alloc.block(s)
                })
                .collect()
        };
        let per = cs / BLOCK;
        let mut i = 0;
        while i < data.len() {
            let mut j = i + 1;
            while j < data.len() && blocks[j] == blocks[j - 1] + per {
                j += 1;
            }
            let bytes = &plain[i * cs as usize..j * cs as usize];
            if let Err(e) = self.store.write_at(bytes, blocks[i] * BLOCK) {
                // The slots hold nothing durable: give them back.
                let mut st = lock(&self.state);
                for &b in &blocks {
                    st.alloc.free_data(b);
                }
                return Err(Error::io(
                    format!("writing clusters at block {}", blocks[i]),
                    e,
                ));
            }
            i = j;
        }
        drop(plain);
        let mut st = lock(&self.state);
        let mut sealed = data.iter().zip(blocks.iter().zip(tags.iter()));
        for (i, c) in (c0..c0 + n).enumerate() {
            let new = if zero[i] {
                Entry::Zero
            } else {
                let (&pc, (&block, &tag)) = sealed.next().expect("one per data cluster");
                debug_assert_eq!(pc, c);
                Entry::Data {
                    block,
                    gen,
                    nonce,
                    tag,
                }
            };
            let prev = st.map.set(c, Some(new));
            st.count(prev, false);
            st.count(Some(new), true);
            if let Some(Entry::Data { block, .. }) = prev {
                st.pending_data.push(block);
            }
        }
        st.dirty = true;
        Ok(())
    }

    /// Commits when enough has piled up.
    fn maybe_commit(&self) -> Result<()> {
        let need = {
            let st = lock(&self.state);
            st.pending_data.len() as u64 * self.cs() as u64 >= AUTO_COMMIT_BYTES
                || st.map.dirty_nodes() >= AUTO_COMMIT_NODES
        };
        if need {
            self.commit()?;
        }
        Ok(())
    }

    /// Makes every completed write durable and returns the new checkpoint (the same one
    /// when nothing changed).
    ///
    /// # Errors
    /// I/O errors (the device then refuses further changes: [`Error::Failed`]).
    pub fn commit(&self) -> Result<Checkpoint> {
        self.check_alive()?;
        if self.layer_keys.is_none() || self.read_only.load(Ordering::Relaxed) {
            return Ok(lock(&self.state).durable);
        }
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut st = lock(&self.state);
        self.commit_locked(&mut st, false)?;
        Ok(st.durable)
    }

    /// Commits with the gate held alone. `force` writes a new root even when nothing
    /// changed (management operations that changed only the root tables).
    pub(crate) fn commit_locked(&self, st: &mut State, force: bool) -> Result<()> {
        self.check_alive()?;
        if !force && !st.dirty && !st.map.is_dirty() {
            return Ok(());
        }
        let keys = self.layer_keys.as_ref().ok_or(Error::ReadOnly(
            "a lower layer opened with handed-down keys",
        ))?;
        let r = self.commit_steps(st, keys);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn commit_steps(&self, st: &mut State, keys: &LayerKeys) -> Result<()> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        let State {
            map,
            alloc,
            pending_nodes,
            ..
        } = st;
        let (nodes, (mb, mh)) = map.serialize(alloc, pending_nodes)?;
        for (block, bytes) in &nodes {
            self.store
                .write_at(bytes, block * BLOCK)
                .map_err(io("writing a map node"))?;
        }
        // Data and nodes durable before the root that names them.
        self.store
            .sync()
            .map_err(io("syncing data and map nodes"))?;
        let mut root = st.root.clone();
        root.counter = st
            .root
            .counter
            .checked_add(1)
            .ok_or_else(|| Error::Limit("the commit counter is at its maximum".into()))?;
        root.map_block = mb;
        root.map_hash = mh;
        let content = root.encode()?;
        let mac = keys.mac(&content);
        let slot = (root.counter % 2) as usize;
        let used = content.len() + MAC_LEN;
        // Cover whatever the slot held before, so no byte of an older root stays behind.
        let span = used.max(st.slot_len[slot]).div_ceil(BLOCK as usize) * BLOCK as usize;
        let mut buf = vec![0u8; span.min(ROOT_SLOT_LEN as usize)];
        buf[..content.len()].copy_from_slice(&content);
        buf[content.len()..used].copy_from_slice(&mac);
        self.store
            .write_at(&buf, ROOT_SLOTS[slot])
            .map_err(io("writing the root"))?;
        self.store.sync().map_err(io("syncing the root"))?;
        st.slot_len[slot] = used;
        st.durable = Checkpoint {
            counter: root.counter,
            root: sha256(&content),
        };
        st.root = root;
        st.dirty = false;
        // The new root is durable: what only older roots named may be reused.
        let cs = self.cs() as u64;
        let mut holes: Vec<u64> = Vec::new();
        for b in std::mem::take(&mut st.pending_data) {
            st.alloc.free_data(b);
            holes.push(b * BLOCK);
        }
        for b in std::mem::take(&mut st.pending_nodes) {
            if let Some(off) = st.alloc.free_node(b) {
                holes.push(off);
            }
        }
        holes.sort_unstable();
        let mut i = 0;
        while i < holes.len() {
            let mut j = i + 1;
            while j < holes.len() && holes[j] == holes[j - 1] + cs {
                j += 1;
            }
            // Punching holes only returns space: a failure changes nothing we rely on. Short
            // runs are left for the allocator, which hands freed clusters out again first:
            // punching each (a journaled extent change, and another when it is filled
            // again) bounded random writes on ext4.
            let len = (j - i) as u64 * cs;
            if len >= PUNCH_MIN {
                if let Err(e) = self.store.discard(holes[i], len) {
                    tracing::warn!(error = %e, "could not punch a hole in the overlay file");
                }
            }
            i = j;
        }
        Ok(())
    }

    /// The checkpoint of the last commit.
    pub fn checkpoint(&self) -> Checkpoint {
        lock(&self.state).durable
    }

    /// The layer's UUID.
    pub fn uuid(&self) -> String {
        uuid_string(&self.uuid)
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u32 {
        1 << self.shift
    }

    /// The lower layers this overlay reads through (0 = right below).
    pub fn lower_layers(&self) -> Vec<LowerLayer> {
        lower_layers(&lock(&self.state).root.lower)
    }
}

/// The description of a chain's lower layers.
pub(crate) fn lower_layers(lower: &[LowerRecord]) -> Vec<LowerLayer> {
    lower
        .iter()
        .enumerate()
        .map(|(index, l)| LowerLayer {
            index,
            uuid: uuid_string(&l.uuid),
            checkpoint: Checkpoint {
                counter: l.counter,
                root: l.root_hash,
            },
            locator: l.locator.clone(),
        })
        .collect()
}

pub(crate) fn base_of(lower: &[Arc<OverlayDevice>]) -> Option<Arc<dyn BlockDevice>> {
    lower.first().map(|l| l.clone() as Arc<dyn BlockDevice>)
}

/// Opens the chain of lower layers bottom up with the keys the top holds for them.
fn open_lower_chain(
    records: &[LowerRecord],
    inherited: &[(u32, u32, Arc<MasterKey>)],
    external: &Arc<dyn BlockDevice>,
    resolve: &mut dyn FnMut(&LowerLayer) -> Result<Arc<dyn Store>>,
) -> Result<Vec<Arc<OverlayDevice>>> {
    let infos = lower_layers(records);
    let mut chain: Vec<Arc<OverlayDevice>> = Vec::new();
    for i in (0..records.len()).rev() {
        let store = resolve(&infos[i])?;
        let keys: HashMap<u32, Arc<MasterKey>> = inherited
            .iter()
            .filter(|(l, _, _)| *l as usize == i)
            .map(|(_, g, k)| (*g, k.clone()))
            .collect();
        let dev = OverlayDevice::open_pinned(
            store,
            i,
            &records[i],
            keys,
            external.clone(),
            chain.clone(),
        )?;
        // The layer's own chain must be the rest of ours.
        let own = lock(&dev.state).root.lower.clone();
        let rest = &records[i + 1..];
        if own.len() != rest.len()
            || own
                .iter()
                .zip(rest)
                .any(|(a, b)| a.uuid != b.uuid || a.root_hash != b.root_hash)
        {
            return Err(Error::LowerMismatch {
                index: i,
                uuid: uuid_string(&records[i].uuid),
                why: "its own lower layers are not the rest of this chain".into(),
            });
        }
        chain.insert(0, Arc::new(dev));
    }
    Ok(chain)
}

fn range(offset: u64, len: u64, size: u64) -> Result<()> {
    sealvol_block::check_range("overlay request", offset, len, size)
        .map_err(|e| Error::Invalid(e.to_string()))
}

impl BlockDevice for OverlayDevice {
    fn size(&self) -> u64 {
        self.virtual_size
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    fn block_size(&self) -> u32 {
        self.cluster_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> sealvol_block::Result<()> {
        sealvol_block::check_range("read", offset, buf.len() as u64, self.virtual_size)?;
        Ok(self.read(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> sealvol_block::Result<()> {
        sealvol_block::check_range("write", offset, buf.len() as u64, self.virtual_size)?;
        Ok(self.write_range(Some(buf), offset, buf.len() as u64)?)
    }

    fn flush(&self) -> sealvol_block::Result<()> {
        self.commit()?;
        Ok(())
    }

    /// Discarded bytes read as zeros: whole clusters become zero entries (their clusters
    /// are freed and punched at the next commit), partial ones are zeroed.
    fn discard(&self, offset: u64, len: u64) -> sealvol_block::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> sealvol_block::Result<()> {
        sealvol_block::check_range("write zeroes", offset, len, self.virtual_size)?;
        Ok(self.write_range(None, offset, len)?)
    }
}
