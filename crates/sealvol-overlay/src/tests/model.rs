//! Random reads, writes, discards, flushes, reopens, rekeys, snapshots and flattens against
//! an in-memory model of the bytes, through chains of layers.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use sealvol_block::BlockDevice;

use super::{base, opts, read_all, KEY};
use crate::store::{MemStore, Store};
use crate::{OpenOptions, OverlayDevice};

const SIZE: usize = 192 << 10;

#[derive(Clone, Debug)]
enum Op {
    Write { off: usize, len: usize, byte: u8 },
    Discard { off: usize, len: usize },
    Read { off: usize, len: usize },
    Flush,
    Reopen,
    Rekey,
    Snapshot,
    Flatten,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(40_000)));
    prop_oneof![
        6 => (range.clone(), any::<u8>()).prop_map(|((off, len), byte)| Op::Write { off, len, byte }),
        2 => range.clone().prop_map(|(off, len)| Op::Discard { off, len }),
        3 => range.prop_map(|(off, len)| Op::Read { off, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Rekey),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Flatten),
    ]
}

struct Chain {
    base: Arc<dyn BlockDevice>,
    stores: HashMap<Vec<u8>, Arc<MemStore>>,
    top_name: Vec<u8>,
    top: Arc<OverlayDevice>,
}

impl Chain {
    fn reopen(&mut self) {
        self.top.flush().unwrap();
        let cp = self.top.checkpoint();
        let top_store = self.stores[&self.top_name].clone();
        let stores = self.stores.clone();
        // Drop the whole chain first: nothing stays open behind the reopen.
        let dummy = Arc::new(
            OverlayDevice::create(
                Arc::new(MemStore::new()),
                KEY,
                self.base.clone(),
                &opts(4096),
            )
            .unwrap(),
        );
        self.top = dummy;
        let mut resolve = |l: &crate::LowerLayer| -> crate::Result<Arc<dyn Store>> {
            Ok(stores[&l.locator].clone() as Arc<dyn Store>)
        };
        self.top = Arc::new(
            OverlayDevice::open(
                top_store,
                KEY,
                self.base.clone(),
                &OpenOptions {
                    expect_checkpoint: Some(cp),
                    ..OpenOptions::default()
                },
                &mut resolve,
            )
            .unwrap(),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn the_chain_reads_what_the_model_holds(
        cluster in prop_oneof![Just(4096u32), Just(16384), Just(65536)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let base = base(SIZE);
        let mut model = read_all(&*base);
        let first = Arc::new(MemStore::new());
        let top = Arc::new(OverlayDevice::create(first.clone(), KEY, base.clone(), &opts(cluster)).unwrap());
        let mut chain = Chain {
            base,
            stores: HashMap::from([(b"l0".to_vec(), first)]),
            top_name: b"l0".to_vec(),
            top,
        };
        for op in ops {
            match op {
                Op::Write { off, len, byte } => {
                    let data: Vec<u8> = (0..len).map(|i| byte ^ (i as u8)).collect();
                    chain.top.write_at(&data, off as u64).unwrap();
                    model[off..off + len].copy_from_slice(&data);
                }
                Op::Discard { off, len } => {
                    chain.top.discard(off as u64, len as u64).unwrap();
                    model[off..off + len].fill(0);
                }
                Op::Read { off, len } => {
                    let mut b = vec![0u8; len];
                    chain.top.read_at(&mut b, off as u64).unwrap();
                    prop_assert_eq!(&b[..], &model[off..off + len]);
                }
                Op::Flush => chain.top.flush().unwrap(),
                Op::Reopen => chain.reopen(),
                Op::Rekey => { chain.top.rekey().unwrap(); }
                Op::Snapshot => {
                    if chain.stores.len() < 5 {
                        let name = format!("l{}", chain.stores.len()).into_bytes();
                        let store = Arc::new(MemStore::new());
                        let next = chain.top.snapshot(store.clone(), &chain.top_name).unwrap();
                        chain.stores.insert(name.clone(), store);
                        chain.top_name = name;
                        chain.top = Arc::new(next);
                    }
                }
                Op::Flatten => { chain.top.flatten(&mut |_| {}).unwrap(); }
            }
        }
        prop_assert_eq!(read_all(&*chain.top), model.clone());
        chain.reopen();
        prop_assert_eq!(read_all(&*chain.top), model);
    }
}
