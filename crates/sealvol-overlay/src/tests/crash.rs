//! Crash consistency: a store that records every write, discard and sync; the disk is
//! rebuilt as it would be after a crash at every write (cut there, the last write torn),
//! and, more harshly, with any subset of the writes since the last sync lost. Every such
//! disk must open, hold exactly the state of one commit no older than the last durable
//! one, and keep working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sealvol_block::BlockDevice;
use sealvol_crypto::SecretBytes;

use super::{base, opts, read_all, KEY};
use crate::device::unlock_luks;
use crate::format::{ROOT_SLOTS, ROOT_SLOT_LEN};
use crate::store::{MemStore, Store};
use crate::{OpenOptions, OverlayDevice};

#[derive(Clone, Debug)]
enum Event {
    Write(u64, Vec<u8>),
    Discard(u64, u64),
    Sync,
}

/// A [`MemStore`] that logs what reaches it.
#[derive(Default)]
struct Recorder {
    inner: MemStore,
    log: Mutex<Vec<Event>>,
}

impl Store for Recorder {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Event::Write(offset, buf.to_vec()));
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Event::Sync);
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Event::Discard(offset, len));
        self.inner.discard(offset, len)
    }
}

fn apply(img: &mut Vec<u8>, e: &Event, keep: Option<usize>) {
    match e {
        Event::Write(off, data) => {
            let n = keep.unwrap_or(data.len()).min(data.len());
            let end = *off as usize + n;
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].copy_from_slice(&data[..n]);
        }
        Event::Discard(off, len) => {
            let start = (*off as usize).min(img.len());
            let end = ((off + len) as usize).min(img.len());
            if keep != Some(0) {
                img[start..end].fill(0);
            }
        }
        Event::Sync => {}
    }
}

/// The counter a root write carries (None for other writes).
fn root_counter(e: &Event) -> Option<u64> {
    match e {
        Event::Write(off, data) if ROOT_SLOTS.contains(off) && data.len() >= 48 => {
            Some(u64::from_le_bytes(data[40..48].try_into().unwrap()))
        }
        _ => None,
    }
}

/// A small xorshift for the "lost writes" choice (deterministic per crash point).
fn coin(seed: &mut u64) -> bool {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed & 1 == 1
}

fn run(cluster: u32) {
    let base = base(16 * cluster as usize);
    let rec = Arc::new(Recorder::default());
    let ov = OverlayDevice::create(rec.clone(), KEY, base.clone(), &opts(cluster)).unwrap();
    let initial = rec.inner.to_vec();
    let lk: SecretBytes = unlock_luks(
        &(Arc::new(MemStore::from_vec(initial.clone())) as Arc<dyn Store>),
        KEY,
        Default::default(),
    )
    .unwrap();
    rec.log.lock().unwrap().clear();
    // The model at every commit counter.
    let mut model = read_all(&*base);
    let mut states: HashMap<u64, Vec<u8>> =
        HashMap::from([(ov.checkpoint().counter, model.clone())]);
    let cs = cluster as usize;
    let record = |ov: &OverlayDevice, model: &Vec<u8>, states: &mut HashMap<u64, Vec<u8>>| {
        let c = ov.checkpoint().counter;
        states.entry(c).or_insert_with(|| model.clone());
    };
    let write = |ov: &OverlayDevice, model: &mut Vec<u8>, off: usize, len: usize, byte: u8| {
        let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
        ov.write_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
    };
    write(&ov, &mut model, 0, 3 * cs, 1);
    write(&ov, &mut model, cs / 2, 100, 2);
    ov.flush().unwrap();
    record(&ov, &model, &mut states);
    write(&ov, &mut model, cs, 2 * cs, 3); // overwrite: old clusters freed at the commit
    ov.discard(5 * cs as u64, 2 * cs as u64).unwrap();
    model[5 * cs..7 * cs].fill(0);
    ov.flush().unwrap();
    record(&ov, &model, &mut states);
    write(&ov, &mut model, 8 * cs + 7, cs, 4); // reuses the freed slots
    let g = ov.rekey().unwrap();
    record(&ov, &model, &mut states);
    write(&ov, &mut model, 0, cs, 5);
    ov.flush().unwrap();
    record(&ov, &model, &mut states);
    let mut counters = Vec::new();
    let before = ov.checkpoint().counter;
    ov.retire(g - 1, &mut |_| {}).unwrap();
    for c in before..=ov.checkpoint().counter {
        counters.push(c);
        states.entry(c).or_insert_with(|| model.clone());
    }
    write(&ov, &mut model, 2 * cs, 10, 6);
    ov.flush().unwrap();
    record(&ov, &model, &mut states);
    drop(ov);
    let log = rec.log.lock().unwrap().clone();
    assert!(
        log.len() > 20,
        "the sequence makes many writes ({})",
        log.len()
    );

    let writes: Vec<usize> = (0..log.len())
        .filter(|&i| !matches!(log[i], Event::Sync))
        .collect();
    let mut checked = 0;
    for &k in &writes {
        let len = match &log[k] {
            Event::Write(_, d) => d.len(),
            _ => 1,
        };
        // Cut before write k; with half of it; with all but its last sector; with all of
        // it; each in order, and with any writes since the last sync lost.
        for (variant, keep) in [
            (0, 0usize),
            (1, len / 2),
            (2, len.saturating_sub(512)),
            (3, len),
        ] {
            for reorder in [false, true] {
                let last_sync = log[..k].iter().rposition(|e| matches!(e, Event::Sync));
                let mut img = initial.clone();
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 + 1);
                for (i, e) in log[..k].iter().enumerate() {
                    let after_sync = last_sync.is_none_or(|s| i > s);
                    if reorder && after_sync && coin(&mut seed) {
                        continue; // lost
                    }
                    apply(&mut img, e, None);
                }
                apply(&mut img, &log[k], Some(keep));
                // Durable: roots written before the last sync before k.
                let durable = log[..last_sync.map_or(0, |s| s + 1)]
                    .iter()
                    .filter_map(root_counter)
                    .max()
                    .unwrap_or(1);
                let newest = log[..=k].iter().filter_map(root_counter).max().unwrap_or(1);
                check(
                    &img, &lk, &base, &states, durable, newest, k, variant, reorder,
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "{checked} crash images");
}

#[allow(clippy::too_many_arguments)]
fn check(
    img: &[u8],
    lk: &SecretBytes,
    base: &Arc<dyn BlockDevice>,
    states: &HashMap<u64, Vec<u8>>,
    durable: u64,
    newest: u64,
    k: usize,
    variant: u8,
    reorder: bool,
) {
    let ctx = format!("crash at event {k}, variant {variant}, reorder {reorder}");
    let store = Arc::new(MemStore::from_vec(img.to_vec()));
    let ov = OverlayDevice::open_with_layer_key(
        store.clone(),
        lk,
        base.clone(),
        &OpenOptions::default(),
        &mut |_| unreachable!(),
    )
    .unwrap_or_else(|e| panic!("{ctx}: does not open: {e}"));
    let c = ov.checkpoint().counter;
    assert!(
        c >= durable && c <= newest,
        "{ctx}: counter {c} outside {durable}..={newest}"
    );
    let want = states
        .get(&c)
        .unwrap_or_else(|| panic!("{ctx}: counter {c} is no commit"));
    assert!(
        read_all(&ov) == *want,
        "{ctx}: counter {c} reads other bytes than its commit"
    );
    // An interrupted retire goes on; the overlay keeps working.
    if let Some(g) = ov.status().retiring_generation {
        ov.retire(g, &mut |_| {}).unwrap();
        assert!(
            read_all(&ov) == *want,
            "{ctx}: resumed retire changed the data"
        );
    }
    ov.write_at(&[0xEE; 5000], 1000).unwrap();
    ov.flush().unwrap();
    let mut b = [0u8; 5000];
    ov.read_at(&mut b, 1000).unwrap();
    assert!(b.iter().all(|&x| x == 0xEE), "{ctx}");
    let _ = ROOT_SLOT_LEN;
}

#[test]
fn a_crash_at_any_write_leaves_the_old_or_the_new_state_4k() {
    run(4096);
}

#[test]
fn a_crash_at_any_write_leaves_the_old_or_the_new_state_64k() {
    run(65536);
}
