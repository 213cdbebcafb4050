//! Tests across modules: the device against an in-memory model, chains, keys, tampering,
//! rollback and crashes.

use std::sync::Arc;

use sealvol_block::{BlockDevice, MemDevice};

use crate::format::{Checkpoint, ROOT_SLOTS};
use crate::store::{MemStore, Store};
use crate::{CreateOptions, Error, OpenOptions, OverlayDevice};

mod crash;
mod model;
mod tamper;

pub(crate) const KEY: &[u8] = b"consumer key for the tests";

/// A base of `size` bytes with a recognisable pattern.
pub(crate) fn base(size: usize) -> Arc<dyn BlockDevice> {
    Arc::new(
        MemDevice::from_vec(
            (0..size)
                .map(|i| (i / 4096) as u8 ^ (i as u8).rotate_left(3))
                .collect(),
        )
        .into_read_only(),
    )
}

pub(crate) fn opts(cluster: u32) -> CreateOptions {
    CreateOptions {
        cluster_size: cluster,
        ..CreateOptions::default()
    }
}

pub(crate) fn no_lower(_: &crate::LowerLayer) -> crate::Result<Arc<dyn Store>> {
    panic!("no lower layer expected")
}

pub(crate) fn reopen(
    store: &Arc<MemStore>,
    base: &Arc<dyn BlockDevice>,
) -> crate::Result<OverlayDevice> {
    OverlayDevice::open(
        store.clone(),
        KEY,
        base.clone(),
        &OpenOptions::default(),
        &mut no_lower,
    )
}

pub(crate) fn read_all(d: &dyn BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; d.size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn writes_read_back_through_reopen_and_unmapped_clusters_read_the_base() {
    for cluster in [4096u32, 16384, 65536] {
        let base = base(1 << 20);
        let store = Arc::new(MemStore::new());
        let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(cluster)).unwrap();
        let mut model = read_all(&*base);
        assert_eq!(read_all(&ov), model);
        for (off, len, byte) in [
            (0usize, 10usize, 1u8),
            (4090, 20, 2),
            (65536 * 3 + 7, 200_000, 3),
            (1_048_000, 576, 4),
        ] {
            let data = vec![byte; len];
            ov.write_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        ov.write_zeroes(300_000, 70_000).unwrap();
        model[300_000..370_000].fill(0);
        assert_eq!(read_all(&ov), model, "before commit, cluster {cluster}");
        ov.flush().unwrap();
        let cp = ov.checkpoint();
        drop(ov);
        let ov = reopen(&store, &base).unwrap();
        assert_eq!(ov.checkpoint(), cp);
        assert_eq!(read_all(&ov), model, "after reopen, cluster {cluster}");
        // No plaintext of the writes on disk: the 200000-byte run of 3s is nowhere.
        let raw = store.to_vec();
        assert!(!raw.windows(64).any(|w| w.iter().all(|&b| b == 3)));
    }
}

#[test]
fn a_wrong_key_opens_nothing_and_the_header_is_real_luks2() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    drop(OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(65536)).unwrap());
    let e = OverlayDevice::open(
        store.clone(),
        b"other",
        base.clone(),
        &OpenOptions::default(),
        &mut no_lower,
    )
    .unwrap_err();
    assert!(matches!(e, Error::WrongKey), "{e}");
    let h = crate::embedded_header(store.clone()).unwrap();
    assert_eq!(h.header().subsystem(), "sealvol-overlay");
    // A base of another size is refused.
    let e = reopen(&store, &crate::tests::base(2 << 20)).unwrap_err();
    assert!(matches!(e, Error::BaseMismatch(_)), "{e}");
}

#[test]
fn checkpoints_refuse_a_saved_older_copy() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(65536)).unwrap();
    ov.write_at(&[1; 5000], 0).unwrap();
    ov.flush().unwrap();
    let old_copy = store.to_vec();
    let old_cp = ov.checkpoint();
    ov.write_at(&[2; 5000], 0).unwrap();
    ov.flush().unwrap();
    let cp = ov.checkpoint();
    assert!(cp.counter > old_cp.counter);
    drop(ov);
    store.replace(old_copy);
    let open = |expect: Option<Checkpoint>| {
        OverlayDevice::open(
            store.clone(),
            KEY,
            base.clone(),
            &OpenOptions {
                expect_checkpoint: Some(expect).flatten(),
                ..OpenOptions::default()
            },
            &mut no_lower,
        )
    };
    // Without a checkpoint the old copy opens (nothing to compare with) ...
    assert_eq!(open(None).unwrap().checkpoint(), old_cp);
    // ... with the newer checkpoint it is refused.
    let e = open(Some(cp)).unwrap_err();
    assert!(matches!(e, Error::Rollback { .. }), "{e}");
    assert!(e.is_tampering());
    // Same counter, another root: a forked history.
    let forged = Checkpoint {
        counter: old_cp.counter,
        root: [9; 32],
    };
    assert!(matches!(
        open(Some(forged)).unwrap_err(),
        Error::Diverged { .. }
    ));
    assert!(open(Some(old_cp)).is_ok());
}

#[test]
fn rekey_keeps_old_data_readable_and_new_writes_use_the_new_generation() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(16384)).unwrap();
    ov.write_at(&[1; 65536], 0).unwrap();
    let g2 = ov.rekey().unwrap();
    assert_eq!(g2, 2);
    ov.write_at(&[2; 32768], 65536).unwrap();
    ov.flush().unwrap();
    let s = ov.status();
    assert_eq!(s.current_generation, 2);
    let by: Vec<(u32, u64)> = s.generations.iter().map(|g| (g.id, g.bytes)).collect();
    assert_eq!(by, vec![(1, 65536), (2, 32768)]);
    drop(ov);
    let ov = reopen(&store, &base).unwrap();
    let mut b = vec![0u8; 98304];
    ov.read_at(&mut b, 0).unwrap();
    assert!(b[..65536].iter().all(|&x| x == 1) && b[65536..].iter().all(|&x| x == 2));
}

/// The wrapped bytes and the raw master key of generation `gen` of a layer.
pub(crate) fn key_material(ov: &OverlayDevice, gen: u32) -> (Vec<u8>, Vec<u8>) {
    let st = ov.state.lock().unwrap();
    let rec = st
        .root
        .gens
        .iter()
        .find(|g| g.id == gen)
        .expect("generation");
    (
        rec.wrapped.0.to_vec(),
        ov.key(gen).unwrap().raw().expose().to_vec(),
    )
}

/// Whether any 8-byte piece of `needle` appears in `hay`.
pub(crate) fn any_piece(hay: &[u8], needle: &[u8]) -> bool {
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
    let mut pieces: Vec<u64> = needle.windows(8).map(word).collect();
    pieces.sort_unstable();
    hay.windows(8)
        .any(|w| pieces.binary_search(&word(w)).is_ok())
}

#[test]
fn retire_reencrypts_and_leaves_no_byte_of_the_key_material_in_the_file() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(16384)).unwrap();
    ov.write_at(&[1; 200_000], 10_000).unwrap();
    let (wrapped, raw) = key_material(&ov, 1);
    ov.flush().unwrap();
    assert!(
        any_piece(&store.to_vec(), &wrapped),
        "the wrapped key is in the file before"
    );
    assert!(matches!(
        ov.retire(1, &mut |_| {}),
        Err(Error::RetireCurrent(1))
    ));
    ov.rekey().unwrap();
    ov.write_at(&[2; 5000], 0).unwrap();
    let mut seen = Vec::new();
    let report = ov.retire(1, &mut |p| seen.push(p)).unwrap();
    assert_eq!(report.generation, 1);
    assert_eq!(report.into, 2);
    assert_eq!(report.checkpoint, ov.checkpoint());
    assert_eq!(
        report.clusters, 12,
        "clusters 1..=12 of 16 KiB still held generation 1"
    );
    assert_eq!(seen.last().unwrap().done, 12);
    let s = ov.status();
    assert_eq!(s.generations.len(), 1);
    assert_eq!(s.generations[0].id, 2);
    let mut model = read_all(&*base);
    model[10_000..210_000].fill(1);
    model[..5000].fill(2);
    assert_eq!(read_all(&ov), model);
    drop(ov);
    let file = store.to_vec();
    assert!(
        !any_piece(&file, &wrapped),
        "a piece of the wrapped key is left"
    );
    assert!(!any_piece(&file, &raw), "a piece of the raw key is on disk");
    let ov = reopen(&store, &base).unwrap();
    assert_eq!(read_all(&ov), model);
    assert!(matches!(
        ov.retire(1, &mut |_| {}),
        Err(Error::NoSuchGeneration(1))
    ));
}

#[test]
fn snapshots_chain_and_clones_write_under_their_own_keys_invisible_to_the_source() {
    let base = base(512 << 10);
    let stores: std::collections::HashMap<Vec<u8>, Arc<MemStore>> = (0..4)
        .map(|i| (format!("layer{i}").into_bytes(), Arc::new(MemStore::new())))
        .collect();
    let st = |n: usize| stores[format!("layer{n}").as_bytes()].clone();
    let l0 = Arc::new(OverlayDevice::create(st(0), KEY, base.clone(), &opts(4096)).unwrap());
    let mut model = read_all(&*base);
    l0.write_at(&[1; 40_000], 0).unwrap();
    model[..40_000].fill(1);
    // Snapshot: layer0 frozen, layer1 continues with the same keys.
    let l1 = Arc::new(l0.snapshot(st(1), b"layer0").unwrap());
    assert!(l0.is_frozen());
    assert!(l0.write_at(&[0], 0).is_err());
    l1.write_at(&[2; 30_000], 20_000).unwrap();
    model[20_000..50_000].fill(2);
    l1.write_zeroes(100_000, 10_000).unwrap();
    model[100_000..110_000].fill(0);
    let l2 = Arc::new(l1.snapshot(st(2), b"layer1").unwrap());
    l2.write_at(&[3; 1000], 45_000).unwrap();
    model[45_000..46_000].fill(3);
    assert_eq!(read_all(&*l2), model);
    let frozen_model = read_all(&*l1);
    // A clone of layer1 with another key: its writes are invisible to the source.
    let c = OverlayDevice::clone_to(
        &l1,
        st(3),
        b"tenant key",
        b"layer1",
        &crate::CloneOptions::default(),
    )
    .unwrap();
    c.write_at(&[9; 8192], 0).unwrap();
    c.flush().unwrap();
    assert_eq!(read_all(&*l1), frozen_model);
    let mut cm = frozen_model.clone();
    cm[..8192].fill(9);
    assert_eq!(read_all(&c), cm);
    l2.flush().unwrap();
    let (l2cp, ccp) = (l2.checkpoint(), c.checkpoint());
    drop((l0, l1, l2, c));
    let mut resolve = |l: &crate::LowerLayer| -> crate::Result<Arc<dyn Store>> {
        Ok(stores[&l.locator].clone() as Arc<dyn Store>)
    };
    // The chain reopens with the top's key only, and reads the same.
    let top = OverlayDevice::open(
        st(2),
        KEY,
        base.clone(),
        &OpenOptions {
            expect_checkpoint: Some(l2cp),
            ..Default::default()
        },
        &mut resolve,
    )
    .unwrap();
    assert_eq!(top.lower_layers().len(), 2);
    assert_eq!(read_all(&top), model);
    // The clone opens with its own key, not the source's; the source's key opens no clone.
    let clone = OverlayDevice::open(
        st(3),
        b"tenant key",
        base.clone(),
        &OpenOptions {
            expect_checkpoint: Some(ccp),
            ..Default::default()
        },
        &mut resolve,
    )
    .unwrap();
    assert_eq!(read_all(&clone), cm);
    assert!(matches!(
        OverlayDevice::open(
            st(3),
            KEY,
            base.clone(),
            &OpenOptions::default(),
            &mut resolve
        ),
        Err(Error::WrongKey)
    ));
    // Clone and source share no master key.
    let own: Vec<Vec<u8>> = clone
        .keys
        .read()
        .unwrap()
        .values()
        .map(|k| k.raw().expose().to_vec())
        .collect();
    let theirs: Vec<Vec<u8>> = clone
        .state
        .lock()
        .unwrap()
        .inherited
        .iter()
        .map(|(_, _, k)| k.raw().expose().to_vec())
        .collect();
    assert_eq!(own.len(), 1);
    assert!(!theirs.contains(&own[0]));
    // A lower layer changed after it was pinned is refused.
    drop((top, clone));
    // (The two frozen roots differ only in their counters: change another field.)
    st(1).with_bytes(|b| b[ROOT_SLOTS[1] as usize + 50] ^= 1);
    st(1).with_bytes(|b| b[ROOT_SLOTS[0] as usize + 50] ^= 1);
    let e = OverlayDevice::open(
        st(2),
        KEY,
        base.clone(),
        &OpenOptions::default(),
        &mut resolve,
    )
    .unwrap_err();
    assert!(matches!(e, Error::LowerMismatch { index: 0, .. }), "{e}");
}

#[test]
fn flatten_folds_the_chain_into_the_top_layer() {
    let base = base(512 << 10);
    let s0 = Arc::new(MemStore::new());
    let s1 = Arc::new(MemStore::new());
    let s2 = Arc::new(MemStore::new());
    let l0 = Arc::new(OverlayDevice::create(s0.clone(), KEY, base.clone(), &opts(4096)).unwrap());
    let mut model = read_all(&*base);
    l0.write_at(&[1; 100_000], 50_000).unwrap();
    model[50_000..150_000].fill(1);
    let l1 = Arc::new(l0.snapshot(s1.clone(), b"0").unwrap());
    l1.write_zeroes(60_000, 20_000).unwrap();
    model[60_000..80_000].fill(0);
    l1.rekey().unwrap();
    l1.write_at(&[2; 10_000], 140_000).unwrap();
    model[140_000..150_000].fill(2);
    let l2 = l1.snapshot(s2.clone(), b"1").unwrap();
    l2.write_at(&[3; 10], 0).unwrap();
    model[..10].fill(3);
    let report = l2.flatten(&mut |_| {}).unwrap();
    assert_eq!(report.layers, 2);
    assert!(report.clusters > 20);
    assert_eq!(read_all(&l2), model);
    assert!(l2.lower_layers().is_empty());
    let s = l2.status();
    assert!(s.generations.iter().any(|g| g.folded_from.is_some()));
    drop((l0, l1, l2));
    // It opens alone now: the lower files are not needed.
    let l2 = OverlayDevice::open(
        s2,
        KEY,
        base.clone(),
        &OpenOptions::default(),
        &mut no_lower,
    )
    .unwrap();
    assert_eq!(read_all(&l2), model);
    // And its folded generations can be retired like its own.
    let folded: Vec<u32> = l2
        .status()
        .generations
        .iter()
        .filter(|g| !g.current)
        .map(|g| g.id)
        .collect();
    for g in folded {
        l2.retire(g, &mut |_| {}).unwrap();
    }
    assert_eq!(l2.status().generations.len(), 1);
    assert_eq!(read_all(&l2), model);
}

#[test]
fn the_layer_key_opens_what_the_consumer_key_opens_and_nothing_else() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(4096)).unwrap();
    ov.write_at(b"handed over", 8192).unwrap();
    ov.flush().unwrap();
    let cp = ov.checkpoint();
    drop(ov);
    let dyn_store: Arc<dyn Store> = store.clone();
    let lk = crate::unlock_layer_key(&dyn_store, KEY, Default::default()).unwrap();
    assert_eq!(lk.expose().len(), 64);
    let o = OpenOptions {
        expect_checkpoint: Some(cp),
        ..OpenOptions::default()
    };
    let ov =
        OverlayDevice::open_unlocked(store.clone(), &lk, base.clone(), &o, &mut no_lower).unwrap();
    let mut b = [0u8; 11];
    ov.read_at(&mut b, 8192).unwrap();
    assert_eq!(&b, b"handed over");
    drop(ov);
    // Another layer's key is refused by the header's digest, before any root is read.
    let other = Arc::new(MemStore::new());
    drop(OverlayDevice::create(other.clone(), KEY, base.clone(), &opts(4096)).unwrap());
    let other: Arc<dyn Store> = other;
    let wrong = crate::unlock_layer_key(&other, KEY, Default::default()).unwrap();
    let e = OverlayDevice::open_unlocked(store.clone(), &wrong, base.clone(), &o, &mut no_lower)
        .unwrap_err();
    assert!(matches!(e, Error::WrongKey), "{e}");
    assert!(matches!(
        crate::unlock_layer_key(&dyn_store, b"not the key", Default::default()),
        Err(Error::WrongKey)
    ));
}

#[test]
fn peek_reads_the_root_without_a_key_and_refuses_what_is_no_overlay() {
    let base = base(1 << 20);
    let store = Arc::new(MemStore::new());
    let ov =
        Arc::new(OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(4096)).unwrap());
    ov.write_at(b"x", 0).unwrap();
    ov.flush().unwrap();
    let p = crate::peek(&*store).unwrap();
    assert_eq!(p.checkpoint, ov.checkpoint());
    assert_eq!(
        (p.virtual_size, p.base_size, p.cluster_size),
        (1 << 20, 1 << 20, 4096)
    );
    assert!(!p.frozen && p.lower.is_empty());
    assert_eq!(p.uuid, ov.uuid());
    let top = Arc::new(MemStore::new());
    let snap = ov.snapshot(top.clone(), b"lower.ov").unwrap();
    let p = crate::peek(&*top).unwrap();
    assert_eq!(p.lower.len(), 1);
    assert_eq!(p.lower[0].locator, b"lower.ov");
    assert_eq!(p.lower[0].uuid, ov.uuid());
    assert!(crate::peek(&*store).unwrap().frozen);
    drop(snap);
    let junk = MemStore::from_vec(vec![7u8; 4 << 20]);
    assert!(matches!(crate::peek(&junk), Err(Error::NoValidRoot { .. })));
}

/// A store that records every discard (hole punched) it is asked for.
struct CountingStore {
    inner: MemStore,
    discards: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Store for CountingStore {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.discards.lock().unwrap().push((offset, len));
        self.inner.discard(offset, len)
    }
}

#[test]
fn scattered_freed_clusters_are_reused_not_punched_and_large_runs_are_punched() {
    let base = base(8 << 20);
    let store = Arc::new(CountingStore {
        inner: MemStore::new(),
        discards: Default::default(),
    });
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(4096)).unwrap();
    let spots: Vec<u64> = (0..64u64).map(|i| i * 4096 * 7 % (8 << 20)).collect();
    for (n, &at) in spots.iter().enumerate() {
        ov.write_at(&[n as u8; 4096], at).unwrap();
    }
    ov.flush().unwrap();
    // Overwritten again and again: every old cluster is freed once a commit no longer names
    // it, then reused, never punched; after the first round the file stops growing.
    let mut len = 0;
    for round in 1..=3u8 {
        for &at in &spots {
            ov.write_at(&[round; 4096], at).unwrap();
        }
        ov.flush().unwrap();
        if round == 1 {
            len = store.len().unwrap();
        }
    }
    assert!(
        store.discards.lock().unwrap().is_empty(),
        "scattered clusters punched: {:?}",
        store.discards.lock().unwrap()
    );
    assert_eq!(store.len().unwrap(), len, "freed clusters were not reused");
    // A 2 MiB run written, then discarded: its clusters go back to the host.
    ov.write_at(&vec![9u8; 2 << 20], 4 << 20).unwrap();
    ov.flush().unwrap();
    ov.discard(4 << 20, 2 << 20).unwrap();
    ov.flush().unwrap();
    // (Some of its clusters reused scattered freed ones: those stay for reuse again.)
    let d = store.discards.lock().unwrap().clone();
    let punched: u64 = d.iter().map(|d| d.1).sum();
    assert!(
        punched >= 1 << 20 && d.iter().all(|d| d.1 >= 1 << 20),
        "{d:?}"
    );
    let mut b = [7u8; 4096];
    ov.read_at(&mut b, spots[5]).unwrap();
    assert_eq!(b, [3u8; 4096]);
    ov.read_at(&mut b, 5 << 20).unwrap();
    assert_eq!(b, [0u8; 4096]);
}

/// No extent key seals more than `EXTENT_MAX` bytes: neither a large write nor a retire,
/// whatever the cluster size (counted as clusters per (generation, nonce) in the map).
#[test]
fn no_extent_spans_more_than_one_mib() {
    use crate::format::Entry;
    for cluster in [4096u32, 256 << 10] {
        let base = base(4 << 20);
        let store = Arc::new(MemStore::new());
        let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(cluster)).unwrap();
        ov.write_at(&vec![7u8; 3 << 20], 0).unwrap();
        let most = (crate::device::EXTENT_MAX / u64::from(cluster)).max(1) as usize;
        let check = |ov: &OverlayDevice, gen: u32, what: &str| {
            let st = ov.state.lock().unwrap();
            let mut per: std::collections::HashMap<[u8; 16], usize> = Default::default();
            for c in 0..(3u64 << 20) / u64::from(cluster) {
                match st.map.get(c) {
                    Some(Entry::Data { gen: g, nonce, .. }) if g == gen => {
                        *per.entry(nonce).or_default() += 1
                    }
                    other => panic!("{what}: cluster {c} is {other:?}"),
                }
            }
            assert!(per.len() > 1, "{what}: 3 MiB in one extent");
            assert!(
                per.values().all(|&n| n <= most),
                "{what}, {cluster}-byte clusters: an extent of {:?} clusters (at most {most})",
                per.values().max()
            );
        };
        check(&ov, 1, "a 3 MiB write");
        ov.rekey().unwrap();
        ov.retire(1, &mut |_| {}).unwrap();
        check(&ov, 2, "a retire");
        assert_eq!(read_all(&ov)[..3 << 20], vec![7u8; 3 << 20][..]);
    }
}
