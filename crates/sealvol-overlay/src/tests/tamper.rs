//! Every single-bit flip of a small overlay file is detected (an error at open or on the
//! read of what it touches, EIO through the BlockDevice), never wrong data.

use std::sync::Arc;

use sealvol_block::BlockDevice;

use super::{base, no_lower, opts, read_all, KEY};
use crate::device::unlock_luks;
use crate::format::{LUKS_AREA, ROOT_SLOTS};
use crate::store::{MemStore, Store};
use crate::{OpenOptions, OverlayDevice};

/// What a flipped image gives: an error somewhere, or exactly the right bytes.
fn outcome(dev: &OverlayDevice, want: &[u8]) -> Result<(), ()> {
    let mut b = vec![0u8; want.len()];
    match dev.read_at(&mut b, 0) {
        Err(e) => {
            assert_eq!(e.errno(), rustix::io::Errno::IO.raw_os_error(), "{e}");
            Err(())
        }
        Ok(()) => {
            assert!(b == want, "a flipped bit gave wrong data");
            Ok(())
        }
    }
}

#[test]
fn every_single_bit_flip_is_an_error_never_wrong_data() {
    let base = base(64 << 10);
    let store = Arc::new(MemStore::new());
    let ov = OverlayDevice::create(store.clone(), KEY, base.clone(), &opts(4096)).unwrap();
    ov.write_at(&[1; 8192], 0).unwrap();
    ov.write_at(&[2; 100], 20_000).unwrap();
    ov.discard(40_960, 4096).unwrap();
    ov.flush().unwrap();
    let want = read_all(&ov);
    let cp = ov.checkpoint();
    let (root_len, live): (usize, Vec<(u64, u64)>) = {
        let st = ov.state.lock().unwrap();
        let data = st
            .map
            .entries()
            .filter_map(|(_, e)| match e {
                crate::format::Entry::Data { block, .. } => Some((block * 4096, 4096)),
                _ => None,
            })
            .collect();
        (st.slot_len[(cp.counter % 2) as usize], data)
    };
    drop(ov);
    let image = store.to_vec();
    let lk = unlock_luks(&(store.clone() as Arc<dyn Store>), KEY, Default::default()).unwrap();
    let with_checkpoint = OpenOptions {
        expect_checkpoint: Some(cp),
        ..OpenOptions::default()
    };
    let open = |s: &Arc<MemStore>| {
        OverlayDevice::open_with_layer_key(
            s.clone(),
            &lk,
            base.clone(),
            &with_checkpoint,
            &mut no_lower,
        )
    };
    let flipped = Arc::new(MemStore::from_vec(image.clone()));
    let mut last: Option<usize> = None;
    // Flips `bit` in `flipped`, undoing the previous flip (no copy of the image).
    let mut flip = |bit: usize| {
        flipped.with_bytes(|b| {
            if let Some(l) = last {
                b[l / 8] ^= 1 << (l % 8);
            }
            b[bit / 8] ^= 1 << (bit % 8);
        });
        last = Some(bit);
    };
    // 1. The active root slot (content and MAC) and every map node: refused at open.
    let active = ROOT_SLOTS[(cp.counter % 2) as usize] as usize;
    let node_blocks: Vec<usize> = {
        let dev = open(&store).unwrap();
        let st = dev.state.lock().unwrap();
        st.map.node_blocks().map(|b| b as usize * 4096).collect()
    };
    let mut metadata_bits = 0;
    // A node's entries end at 64 + 64 × 48 bytes; its zero padding (also hashed) is sampled.
    let used = crate::format::NODE_HEADER_LEN + 64 * crate::format::LEAF_ENTRY_LEN;
    let regions = std::iter::once((active, root_len, 1))
        .chain(node_blocks.iter().map(|&b| (b, used, 1)))
        .chain(node_blocks.iter().map(|&b| (b + used, 4096 - used, 13)));
    for region in regions {
        for bit in (region.0 * 8..(region.0 + region.1) * 8).step_by(region.2) {
            flip(bit);
            let e = open(&flipped).map(|d| outcome(&d, &want));
            assert!(
                matches!(e, Err(_) | Ok(Err(()))),
                "bit {bit}: a flipped metadata bit went unnoticed"
            );
            metadata_bits += 1;
        }
    }
    // 2. Every bit of every data cluster: its read fails with EIO.
    let dev = open(&store).unwrap();
    let mut data_bits = 0;
    for (off, len) in &live {
        for bit in *off as usize * 8..(*off + len) as usize * 8 {
            store.with_bytes(|b| b[bit / 8] ^= 1 << (bit % 8));
            assert_eq!(outcome(&dev, &want), Err(()), "bit {bit} of a data cluster");
            store.with_bytes(|b| b[bit / 8] ^= 1 << (bit % 8));
            data_bits += 1;
        }
    }
    assert_eq!(outcome(&dev, &want), Ok(()));
    drop(dev);
    // 3. Everything else (the other root slot, padding, free space): a sample of bits, each
    //    an error or the right data.
    let covered = |byte: usize| {
        (active..active + root_len).contains(&byte)
            || node_blocks.iter().any(|&b| (b..b + 4096).contains(&byte))
            || live
                .iter()
                .any(|&(o, l)| (o as usize..(o + l) as usize).contains(&byte))
    };
    let mut other_bits = 0;
    for bit in (LUKS_AREA as usize * 8..image.len() * 8).step_by(499) {
        if covered(bit / 8) {
            continue;
        }
        flip(bit);
        if let Ok(d) = open(&flipped) {
            let _ = outcome(&d, &want);
        }
        other_bits += 1;
    }
    // 4. The embedded LUKS2 header: a sample; a flip there opens with the right data (the
    //    other header copy), or is refused (wrong key, damaged header).
    for bit in (0..LUKS_AREA as usize * 8).step_by(8191 * 8 + 3) {
        flip(bit);
        match OverlayDevice::open(
            flipped.clone(),
            KEY,
            base.clone(),
            &with_checkpoint,
            &mut no_lower,
        ) {
            Ok(d) => assert_eq!(outcome(&d, &want), Ok(()), "LUKS bit {bit}"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(metadata_bits > 25_000 && data_bits == 3 * 4096 * 8 && other_bits > 1500);
}
