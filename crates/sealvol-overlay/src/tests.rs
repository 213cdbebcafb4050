//! Tests across modules: the device against an in-memory model, chains, keys, tampering,
//! rollback and crashes.

use std::sync::Arc;

use sealvol_block::{BlockDevice, MemDevice};

use crate::format::Checkpoint;
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
