//! Management operations: status, rekey, retire, freeze, snapshot, clone, flatten, and
//! the embedded LUKS2 header's keyslots.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use sealvol_block::BlockDevice;
use sealvol_luks::KdfParams;

use crate::device::{base_of, ensure_empty, format_luks, lower_layers, uuid_string, Parts, State};
use crate::format::{
    Checkpoint, Entry, GenRecord, InheritedRecord, LowerRecord, Root, BLOCK, FLAG_FROZEN,
    LUKS_AREA, MAX_LOCATOR,
};
use crate::keys::{extent_nonce, LayerKeys, MasterKey};
use crate::store::{HeaderArea, Store};
use crate::{Error, LowerLayer, OverlayDevice, Result};

/// A pinned frozen layer: its record, its own chain, the keys a layer above carries.
type Pinned = (
    LowerRecord,
    Vec<LowerRecord>,
    Vec<(u32, u32, Arc<MasterKey>)>,
);

/// Clusters re-encrypted or copied between two commits of a retire or flatten.
const OP_COMMIT_EVERY: usize = 4096;
/// Clusters handled under one set of stripe locks.
const OP_BATCH: usize = 64;

/// Progress of a long operation, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Clusters done.
    pub done: u64,
    /// Clusters in all.
    pub total: u64,
    /// Bytes done.
    pub bytes: u64,
}

/// One key generation in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GenerationStatus {
    /// Generation id.
    pub id: u32,
    /// Bytes of data clusters that use it.
    pub bytes: u64,
    /// Data clusters that use it.
    pub clusters: u64,
    /// The commit counter when it was made.
    pub created: u64,
    /// New writes use it.
    pub current: bool,
    /// It is being retired.
    pub retiring: bool,
    /// The layer that made it, when a flatten folded it in from a lower layer.
    pub folded_from: Option<String>,
}

/// A lower layer in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LowerStatus {
    /// Its description.
    #[serde(flatten)]
    pub layer: LowerLayer,
    /// Its generations (bytes of its own data clusters).
    pub generations: Vec<GenerationStatus>,
}

/// What `sealvol overlay status` shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The layer's UUID.
    pub uuid: String,
    /// The last durable commit.
    pub checkpoint: Checkpoint,
    /// Frozen (a snapshot).
    pub frozen: bool,
    /// Refuses writes (frozen, read-only, or a lower layer).
    pub read_only: bool,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Bytes of data clusters in this layer.
    pub data_bytes: u64,
    /// Bytes of clusters that read as zeros (discarded) in this layer.
    pub zero_bytes: u64,
    /// Bytes of map nodes.
    pub metadata_bytes: u64,
    /// Bytes from the start of the file to the end of its last used cluster.
    pub file_bytes: u64,
    /// Size of the external base.
    pub base_size: u64,
    /// The generation new writes use.
    pub current_generation: u32,
    /// The generation being retired, if any.
    pub retiring_generation: Option<u32>,
    /// Every generation of this layer.
    pub generations: Vec<GenerationStatus>,
    /// The layers below.
    pub lower: Vec<LowerStatus>,
}

/// What [`OverlayDevice::retire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetireReport {
    /// The retired generation.
    pub generation: u32,
    /// The generation its clusters now use.
    pub into: u32,
    /// Clusters re-encrypted by this call (a resumed retire counts only its own).
    pub clusters: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The checkpoint after the key was erased.
    pub checkpoint: Checkpoint,
}

/// What [`OverlayDevice::flatten`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlattenReport {
    /// Clusters copied up from lower layers.
    pub clusters: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Lower layers the overlay no longer needs.
    pub layers: usize,
    /// The checkpoint after the chain was dropped.
    pub checkpoint: Checkpoint,
}

/// Options of [`OverlayDevice::clone_to`].
#[derive(Clone, Debug, Default)]
pub struct CloneOptions {
    /// KDF of the clone's keyslot.
    pub kdf: KdfParams,
    /// LUKS2 label of the clone's embedded header.
    pub label: Option<String>,
}

/// The embedded LUKS2 header of an overlay store, for the keyslot verbs (add, change,
/// remove a key; erase) of the LUKS crate. Erasing it destroys every key of the layer.
///
/// # Errors
/// As [`sealvol_luks::Volume::open`].
pub fn embedded_header(store: Arc<dyn Store>) -> Result<sealvol_luks::Volume<HeaderArea>> {
    Ok(sealvol_luks::Volume::open(HeaderArea::new(
        store, LUKS_AREA,
    ))?)
}

fn lock(d: &OverlayDevice) -> MutexGuard<'_, State> {
    d.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn gen_status(root: &Root, st: &State, cs: u64) -> Vec<GenerationStatus> {
    root.gens
        .iter()
        .map(|g| {
            let clusters = st.per_gen.get(&g.id).copied().unwrap_or(0);
            GenerationStatus {
                id: g.id,
                bytes: clusters * cs,
                clusters,
                created: g.created,
                current: g.id == root.current_gen,
                retiring: g.id == root.retiring_gen,
                folded_from: (g.origin_layer != root.uuid).then(|| uuid_string(&g.origin_layer)),
            }
        })
        .collect()
}

impl OverlayDevice {
    /// The layer's state: sizes, bytes per generation, the chain below.
    pub fn status(&self) -> Status {
        let cs = self.cs() as u64;
        let lower = self.lower.read().unwrap_or_else(|e| e.into_inner()).clone();
        let st = lock(self);
        let root = &st.root;
        let infos = lower_layers(&root.lower);
        let lower = lower
            .iter()
            .zip(infos)
            .map(|(l, layer)| {
                let lst = lock(l);
                LowerStatus {
                    layer,
                    generations: gen_status(&lst.root, &lst, l.cs() as u64),
                }
            })
            .collect();
        Status {
            uuid: uuid_string(&root.uuid),
            checkpoint: st.durable,
            frozen: root.frozen(),
            read_only: self.read_only.load(Ordering::Relaxed),
            virtual_size: root.virtual_size,
            cluster_size: 1 << root.cluster_shift,
            data_bytes: st.alloc.data_slots() * cs,
            zero_bytes: st.zero_clusters * cs,
            metadata_bytes: st.alloc.node_blocks() * BLOCK,
            file_bytes: st.alloc.file_len(),
            base_size: root.base_size,
            current_generation: root.current_gen,
            retiring_generation: (root.retiring_gen != 0).then_some(root.retiring_gen),
            generations: gen_status(root, &st, cs),
            lower,
        }
    }

    fn layer_keys(&self) -> Result<&LayerKeys> {
        self.layer_keys.as_ref().ok_or(Error::ReadOnly(
            "a lower layer opened with handed-down keys",
        ))
    }

    /// Runs `f` on the state with the gate held alone (no I/O in flight), then commits.
    fn change_root<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut st = lock(self);
        let out = f(&mut st)?;
        self.commit_locked(&mut st, true)?;
        Ok(out)
    }

    /// Starts a new key generation: every write from now on uses a new, random master key;
    /// clusters written before keep their generation and stay readable. Durable on return.
    /// Returns the new generation's id.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::Limit`] (too many generations: retire some), I/O.
    pub fn rekey(&self) -> Result<u32> {
        let keys = self.layer_keys()?;
        let mk = MasterKey::random()?;
        let id = self.change_root(|st| {
            let id = st.root.gens.iter().map(|g| g.id).max().unwrap_or(0) + 1;
            let wrapped = keys.wrap_gen(&st.root.uuid, id, mk.raw())?;
            st.root.gens.push(GenRecord {
                id,
                created: st.root.counter + 1,
                origin_layer: st.root.uuid,
                origin_gen: id,
                wrapped,
            });
            st.root.current_gen = id;
            st.per_gen.insert(id, 0);
            Ok(id)
        })?;
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(mk));
        tracing::info!(layer = %self.uuid(), generation = id, "rekeyed");
        Ok(id)
    }

    /// Re-encrypts every cluster of generation `gen` under the current generation, then
    /// erases `gen`'s wrapped master key from both root slots. Resumable: after a crash,
    /// the reopened overlay shows `gen` as retiring, and calling `retire(gen)` again goes
    /// on from the last commit. Runs alongside reads and writes.
    ///
    /// # Errors
    /// [`Error::NoSuchGeneration`], [`Error::RetireCurrent`], [`Error::RetireInProgress`],
    /// [`Error::Integrity`] when a cluster of `gen` does not authenticate, I/O.
    pub fn retire(&self, gen: u32, progress: &mut dyn FnMut(Progress)) -> Result<RetireReport> {
        self.check_writable()?;
        {
            let st = lock(self);
            if !st.root.gens.iter().any(|g| g.id == gen) {
                return Err(Error::NoSuchGeneration(gen));
            }
            if gen == st.root.current_gen {
                return Err(Error::RetireCurrent(gen));
            }
            if st.root.retiring_gen != 0 && st.root.retiring_gen != gen {
                return Err(Error::RetireInProgress(st.root.retiring_gen));
            }
        }
        self.change_root(|st| {
            st.root.retiring_gen = gen;
            Ok(())
        })?;
        let old = self.key(gen)?;
        let todo: Vec<u64> = lock(self)
            .map
            .entries()
            .filter(|(_, e)| matches!(e, Entry::Data { gen: g, .. } if *g == gen))
            .map(|(c, _)| c)
            .collect();
        let cs = self.cs() as u64;
        let total = todo.len() as u64;
        let mut done = 0u64;
        progress(Progress {
            done,
            total,
            bytes: 0,
        });
        for (i, batch) in todo.chunks(OP_BATCH).enumerate() {
            done += self.reencrypt_batch(batch, gen, &old)?;
            progress(Progress {
                done,
                total,
                bytes: done * cs,
            });
            if (i + 1) * OP_BATCH % OP_COMMIT_EVERY == 0 {
                self.commit()?;
            }
        }
        drop(old);
        let into = self.change_root(|st| {
            if st.per_gen.get(&gen).copied().unwrap_or(0) != 0 {
                return Err(Error::Invalid(format!(
                    "generation {gen} still has clusters after its retire; run retire again"
                )));
            }
            st.root.gens.retain(|g| g.id != gen);
            st.root.retiring_gen = 0;
            st.per_gen.remove(&gen);
            Ok(st.root.current_gen)
        })?;
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&gen);
        // The other root slot still names the key: overwrite it too.
        self.change_root(|_| Ok(()))?;
        let checkpoint = self.checkpoint();
        tracing::info!(layer = %self.uuid(), generation = gen, clusters = done, "retired");
        Ok(RetireReport {
            generation: gen,
            into,
            clusters: done,
            bytes: done * cs,
            checkpoint,
        })
    }

    /// Re-encrypts the clusters of `batch` that still use `gen`.
    fn reencrypt_batch(&self, batch: &[u64], gen: u32, old: &MasterKey) -> Result<u64> {
        let cs = self.cs();
        let _stripes = self.lock_stripes(batch.iter().copied());
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_writable()?;
        let (entries, cur): (Vec<(u64, Entry)>, u32) = {
            let st = lock(self);
            let e = batch
                .iter()
                .filter_map(|&c| match st.map.get(c) {
                    Some(e @ Entry::Data { gen: g, .. }) if g == gen => Some((c, e)),
                    _ => None,
                })
                .collect();
            (e, st.root.current_gen)
        };
        // The batch's clusters become extents of the current generation, each of at most
        // EXTENT_MAX bytes, as a write's are.
        let mk = self.key(cur)?;
        let per_extent = (crate::device::EXTENT_MAX / cs as u64).max(1) as usize;
        let mut extent = None;
        let mut sealed = Vec::with_capacity(entries.len());
        for (k, (c, e)) in entries.iter().enumerate() {
            if k % per_extent == 0 {
                let nonce = extent_nonce()?;
                extent = Some((nonce, mk.extent(&nonce)?));
            }
            let (nonce, ek) = extent.as_ref().expect("made at the first cluster");
            let Entry::Data {
                block,
                nonce: n,
                tag,
                ..
            } = *e
            else {
                unreachable!("filtered to data")
            };
            let mut buf = vec![0u8; cs];
            self.store
                .read_at(&mut buf, block * BLOCK)
                .map_err(|e| Error::io(format!("reading cluster {c} to retire it"), e))?;
            if !old.open(&n, *c, self.shift, &mut buf, &tag)? {
                return Err(Error::Integrity {
                    cluster: *c,
                    layer: self.uuid(),
                });
            }
            let t = ek.seal(*c, self.shift, &mut buf)?;
            sealed.push((*c, *e, buf, *nonce, t));
        }
        self.place(
            sealed
                .into_iter()
                .map(|(c, old, buf, nonce, tag)| (c, Some(old), buf, cur, nonce, tag)),
        )
    }

    /// Writes sealed clusters to new slots and points their entries at them (with the
    /// gate held shared and their stripes locked). `expect` is the entry each replaces.
    fn place(
        &self,
        items: impl Iterator<Item = (u64, Option<Entry>, Vec<u8>, u32, [u8; 16], [u8; 16])>,
    ) -> Result<u64> {
        let mut n = 0;
        for (c, expect, buf, gen, nonce, tag) in items {
            let block = {
                let mut st = lock(self);
                let s = st.alloc.alloc_data();
                st.alloc.block(s)
            };
            if let Err(e) = self.store.write_at(&buf, block * BLOCK) {
                lock(self).alloc.free_data(block);
                return Err(Error::io(format!("writing cluster {c}"), e));
            }
            let mut st = lock(self);
            let new = Entry::Data {
                block,
                gen,
                nonce,
                tag,
            };
            let prev = st.map.set(c, Some(new));
            debug_assert_eq!(prev, expect);
            st.count(prev, false);
            st.count(Some(new), true);
            if let Some(Entry::Data { block, .. }) = prev {
                st.pending_data.push(block);
            }
            st.dirty = true;
            n += 1;
        }
        Ok(n)
    }

    /// Freezes the layer: commits, marks it frozen in both root slots, and refuses writes
    /// from now on. Returns its final checkpoint (what layers above pin).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] (already frozen or read-only), I/O.
    pub fn freeze(&self) -> Result<Checkpoint> {
        self.layer_keys()?;
        self.change_root(|st| {
            st.root.flags |= FLAG_FROZEN;
            Ok(())
        })?;
        self.read_only.store(true, Ordering::Relaxed);
        // Both slots frozen: the older, writable root is gone.
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut st = lock(self);
        self.commit_locked(&mut st, true)?;
        Ok(st.durable)
    }

    /// The record a layer above pins for this frozen layer, and the keys it must carry.
    fn pin(&self, locator: &[u8]) -> Result<Pinned> {
        if locator.len() > MAX_LOCATOR {
            return Err(Error::Invalid(format!(
                "a locator of {} bytes; at most {MAX_LOCATOR}",
                locator.len()
            )));
        }
        let st = lock(self);
        if !st.root.frozen() {
            return Err(Error::Invalid(
                "only a frozen layer (a snapshot) can be the base of another overlay; freeze it first".into(),
            ));
        }
        let rec = LowerRecord {
            uuid: st.root.uuid,
            counter: st.root.counter,
            root_hash: st.durable.root,
            virtual_size: st.root.virtual_size,
            cluster_shift: st.root.cluster_shift,
            locator: locator.to_vec(),
        };
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut carried: Vec<(u32, u32, Arc<MasterKey>)> = st
            .root
            .gens
            .iter()
            .map(|g| {
                Ok((
                    0,
                    g.id,
                    keys.get(&g.id)
                        .cloned()
                        .ok_or(Error::NoSuchGeneration(g.id))?,
                ))
            })
            .collect::<Result<_>>()?;
        for (l, g, k) in &st.inherited {
            carried.push((l + 1, *g, k.clone()));
        }
        Ok((rec, st.root.lower.clone(), carried))
    }

    /// A new layer over this frozen one (`self` must be frozen), with `keys`.
    fn layer_over(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        uuid: [u8; 16],
        layer_keys: LayerKeys,
        first_gen: u32,
        locator: &[u8],
    ) -> Result<OverlayDevice> {
        let (rec, rest, carried) = self.pin(locator)?;
        let mut lower_recs = vec![rec];
        lower_recs.extend(rest);
        let mk = MasterKey::random()?;
        let mut inherited = Vec::new();
        for (l, g, k) in &carried {
            inherited.push(InheritedRecord {
                lower: *l,
                gen: *g,
                wrapped: layer_keys.wrap_inherited(
                    &uuid,
                    &lower_recs[*l as usize].uuid,
                    *g,
                    k.raw(),
                )?,
            });
        }
        let (vs, shift, base_size, base_tag, depth) = {
            let st = lock(self);
            (
                st.root.virtual_size,
                st.root.cluster_shift,
                st.root.base_size,
                st.root.base_tag,
                st.root.map_depth,
            )
        };
        let root = Root {
            flags: 0,
            uuid,
            counter: 0,
            cluster_shift: shift,
            virtual_size: vs,
            base_size,
            base_tag,
            map_block: 0,
            map_hash: [0; 32],
            map_depth: depth,
            current_gen: first_gen,
            retiring_gen: 0,
            gens: vec![GenRecord {
                id: first_gen,
                created: 1,
                origin_layer: uuid,
                origin_gen: first_gen,
                wrapped: layer_keys.wrap_gen(&uuid, first_gen, mk.raw())?,
            }],
            lower: lower_recs,
            inherited,
        };
        let mut chain = vec![self.clone()];
        chain.extend(
            self.lower
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        let base = base_of(&chain);
        OverlayDevice::start(
            Parts {
                store,
                root,
                layer_keys: Some(layer_keys),
                keys: HashMap::from([(first_gen, Arc::new(mk))]),
                inherited: carried,
                slot_len: [0; 2],
                lower: chain,
                external: self.external.clone(),
                read_only: false,
            },
            base,
        )
    }

    /// Freezes this layer and continues in a new one in the empty `store`: same keyslots
    /// (the LUKS2 header is copied, so the same consumer keys open it), a new generation
    /// for its writes, and this layer pinned below it. `locator` is stored for the front
    /// end to find this layer's file again. Returns the new top layer.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::Invalid`] (a non-empty store), I/O.
    pub fn snapshot(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        locator: &[u8],
    ) -> Result<OverlayDevice> {
        let keys = self.layer_keys()?;
        ensure_empty(&*store)?;
        if !lock(self).root.frozen() {
            self.freeze()?;
        }
        let mut header = vec![0u8; LUKS_AREA as usize];
        self.store
            .read_at(&mut header, 0)
            .map_err(|e| Error::io("reading the LUKS2 header to copy it", e))?;
        store
            .write_at(&header, 0)
            .map_err(|e| Error::io("copying the LUKS2 header", e))?;
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let next = lock(self).root.gens.iter().map(|g| g.id).max().unwrap_or(0) + 1;
        self.layer_over(store, uuid, keys.for_layer(&uuid)?, next, locator)
    }

    /// A clone: a new overlay in the empty `store` over this frozen layer, opened by
    /// `key` (its own keyslot), whose writes use a new master key unrelated to any of this
    /// chain's. It carries this chain's keys (wrapped under its own) so it can read it;
    /// this layer never learns the clone's. `locator` names this layer's file.
    ///
    /// # Errors
    /// [`Error::Invalid`] when this layer is not frozen or the store is not empty; LUKS,
    /// crypto and I/O errors.
    pub fn clone_to(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        key: &[u8],
        locator: &[u8],
        opts: &CloneOptions,
    ) -> Result<OverlayDevice> {
        ensure_empty(&*store)?;
        self.pin(locator)?;
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let lk = format_luks(&store, key, &uuid, opts.kdf, opts.label.clone())?;
        let keys = LayerKeys::derive(&lk, &uuid)?;
        drop(lk);
        self.layer_over(store, uuid, keys, 1, locator)
    }

    /// Folds the chain below into this layer: every cluster a lower layer maps and this
    /// one does not is copied up (its ciphertext checked and copied as is, its master key
    /// folded into this layer as a generation of its own), then the chain is dropped and
    /// the layer reads the external base directly. Crash-safe and resumable (the chain
    /// stays until the last commit). Runs alongside reads and writes.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::Integrity`] for a lower cluster that does not
    /// authenticate, I/O.
    pub fn flatten(&self, progress: &mut dyn FnMut(Progress)) -> Result<FlattenReport> {
        self.check_writable()?;
        let keys = self.layer_keys()?;
        let chain = self.lower.read().unwrap_or_else(|e| e.into_inner()).clone();
        // What each unmapped cluster reads: the first lower layer that maps it.
        let mut todo: BTreeMap<u64, (usize, Entry)> = BTreeMap::new();
        {
            let st = lock(self);
            for (i, l) in chain.iter().enumerate() {
                for (c, e) in lock(l).map.entries() {
                    if c < st.root.clusters() && st.map.get(c).is_none() {
                        todo.entry(c).or_insert((i, e));
                    }
                }
            }
        }
        // Fold the lower generations in first, durable before any entry names them.
        let mut used: Vec<(usize, u32)> = todo
            .values()
            .filter_map(|(i, e)| match e {
                Entry::Data { gen, .. } => Some((*i, *gen)),
                Entry::Zero => None,
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        let mut folded: HashMap<(usize, u32), u32> = HashMap::new();
        let mut new_keys = Vec::new();
        self.change_root(|st| {
            for &(i, g) in &used {
                let origin = chain[i].uuid;
                if let Some(r) = st
                    .root
                    .gens
                    .iter()
                    .find(|r| r.origin_layer == origin && r.origin_gen == g)
                {
                    folded.insert((i, g), r.id);
                    continue;
                }
                let k = chain[i].key(g)?;
                let id = st.root.gens.iter().map(|r| r.id).max().unwrap_or(0) + 1;
                let wrapped = keys.wrap_gen(&st.root.uuid, id, k.raw())?;
                st.root.gens.push(GenRecord {
                    id,
                    created: st.root.counter + 1,
                    origin_layer: origin,
                    origin_gen: g,
                    wrapped,
                });
                st.per_gen.insert(id, 0);
                folded.insert((i, g), id);
                new_keys.push((id, k));
            }
            Ok(())
        })?;
        {
            let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
            for (id, key) in new_keys {
                k.insert(id, key);
            }
        }
        let cs = self.cs() as u64;
        let items: Vec<(u64, (usize, Entry))> = todo.into_iter().collect();
        let total = items.len() as u64;
        let mut done = 0u64;
        progress(Progress {
            done,
            total,
            bytes: 0,
        });
        for (i, batch) in items.chunks(OP_BATCH).enumerate() {
            done += self.copy_up_batch(batch, &chain, &folded)?;
            progress(Progress {
                done,
                total,
                bytes: done * cs,
            });
            if (i + 1) * OP_BATCH % OP_COMMIT_EVERY == 0 {
                self.commit()?;
            }
        }
        let layers = chain.len();
        self.change_root(|st| {
            st.root.lower.clear();
            st.root.inherited.clear();
            st.inherited.clear();
            Ok(())
        })?;
        {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            *self.base.write().unwrap_or_else(|e| e.into_inner()) = self.external.clone();
            self.lower
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let mut st = lock(self);
            self.commit_locked(&mut st, true)?;
        }
        drop(chain);
        tracing::info!(layer = %self.uuid(), clusters = done, layers, "flattened");
        Ok(FlattenReport {
            clusters: done,
            bytes: done * cs,
            layers,
            checkpoint: self.checkpoint(),
        })
    }

    fn copy_up_batch(
        &self,
        batch: &[(u64, (usize, Entry))],
        chain: &[Arc<OverlayDevice>],
        folded: &HashMap<(usize, u32), u32>,
    ) -> Result<u64> {
        let cs = self.cs();
        let _stripes = self.lock_stripes(batch.iter().map(|(c, _)| *c));
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_writable()?;
        let mut items = Vec::new();
        let mut zeros = Vec::new();
        for &(c, (i, e)) in batch {
            if lock(self).map.get(c).is_some() {
                continue; // written meanwhile
            }
            match e {
                Entry::Zero => zeros.push(c),
                Entry::Data {
                    block,
                    gen,
                    nonce,
                    tag,
                } => {
                    let lower = &chain[i];
                    let mut ct = vec![0u8; cs];
                    lower.store.read_at(&mut ct, block * BLOCK).map_err(|e| {
                        Error::io(format!("reading cluster {c} of a lower layer"), e)
                    })?;
                    if lower.shift != self.shift {
                        return Err(Error::Invalid(
                            "a lower layer with another cluster size cannot be flattened".into(),
                        ));
                    }
                    let mut check = ct.clone();
                    if !lower
                        .key(gen)?
                        .open(&nonce, c, self.shift, &mut check, &tag)?
                    {
                        return Err(Error::Integrity {
                            cluster: c,
                            layer: lower.uuid(),
                        });
                    }
                    items.push((c, None, ct, folded[&(i, gen)], nonce, tag));
                }
            }
        }
        let n = self.place(items.into_iter())?;
        let mut st = lock(self);
        for &c in &zeros {
            st.map.set(c, Some(Entry::Zero));
            st.count(Some(Entry::Zero), true);
            st.dirty = true;
        }
        Ok(n + zeros.len() as u64)
    }

    /// Whether this layer is frozen.
    pub fn is_frozen(&self) -> bool {
        lock(self).root.frozen()
    }

    /// The external base at the bottom of the chain.
    pub fn external_base(&self) -> Arc<dyn BlockDevice> {
        self.external.clone()
    }
}
