//! Whole-image verification and verified reads: corruption anywhere is found at exactly its
//! block, a wrong root hash is refused, the reader keeps every other block readable, and a
//! real squashfs (from `mksquashfs`) reads back through the tree file for file.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use sealvol_verity::{
    format, root_matches_tree, verify, Error, Failure, HashAlgorithm, HashArea, HashTree, HashType,
    Params, Report, Salt, VerityReader,
};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Image {
    params: Params,
    area: HashArea,
    data: Vec<u8>,
    hash: Vec<u8>,
    root: Vec<u8>,
}

fn image(blocks: u64, dbs: u32, hbs: u32) -> Image {
    let params = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        dbs,
        hbs,
        blocks,
        Salt::from_hex("5a5a").unwrap(),
    )
    .unwrap();
    let area = HashArea::with_superblock(0);
    let data = data(blocks as usize * dbs as usize, blocks);
    let mut hash = Cursor::new(Vec::new());
    let tree = format(&data, &mut hash, &params, area, None, &mut |_| {}).unwrap();
    Image {
        params,
        area,
        data,
        hash: hash.into_inner(),
        root: tree.root().to_vec(),
    }
}

impl Image {
    fn verify(&self, all: bool) -> Report {
        self.verify_root(&self.root, all)
    }

    fn verify_root(&self, root: &[u8], all: bool) -> Report {
        verify(
            &self.data,
            &mut Cursor::new(&self.hash),
            &self.params,
            self.area,
            root,
            all,
            &mut |_| {},
        )
        .unwrap()
    }

    fn reader(&self) -> VerityReader<Cursor<&Vec<u8>>, Cursor<&Vec<u8>>> {
        VerityReader::new(
            Cursor::new(&self.data),
            Cursor::new(&self.hash),
            self.params.clone(),
            self.area,
            &self.root,
        )
        .unwrap()
    }
}

#[test]
fn clean_image_verifies() {
    let img = image(1000, 4096, 4096);
    let r = img.verify(true);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.data_blocks_ok, 1000);
}

#[test]
fn first_bad_data_block_and_all() {
    let mut img = image(1000, 4096, 4096);
    for at in [10 * 4096 + 17, 500 * 4096, 999 * 4096 + 4095] {
        img.data[at] ^= 0x80;
    }
    let first = img.verify(false);
    assert_eq!(
        first.failures,
        vec![Failure::DataBlock {
            index: 10,
            offset: 40960
        }]
    );
    assert_eq!(first.first_bad_data_block(), Some((10, 40960)));
    let all = img.verify(true);
    let idx: Vec<u64> = all
        .failures
        .iter()
        .map(|f| match f {
            Failure::DataBlock { index, .. } => *index,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(idx, vec![10, 500, 999]);
    assert_eq!(all.data_blocks_ok, 997);
}

#[test]
fn every_byte_of_a_small_tree_is_covered() {
    // 3 levels with 512-byte hash blocks: flip each tree byte in turn.
    let img = image(300, 512, 512);
    let tree_at = img.area.tree_offset(512) as usize;
    for at in tree_at..img.hash.len() {
        let mut hash = img.hash.clone();
        hash[at] ^= 1;
        let r = verify(
            &img.data,
            &mut Cursor::new(&hash),
            &img.params,
            img.area,
            &img.root,
            false,
            &mut |_| {},
        )
        .unwrap();
        match r.failures.as_slice() {
            [Failure::HashBlock { offset, .. }] => {
                assert_eq!(*offset as usize, at / 512 * 512, "byte {at}")
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
}

#[test]
fn wrong_root_hash_is_refused() {
    let img = image(100, 4096, 4096);
    let mut root = img.root.clone();
    root[31] ^= 1;
    let r = img.verify_root(&root, true);
    assert!(matches!(
        r.failures.as_slice(),
        [Failure::HashBlock { top: true, .. }]
    ));
    assert_eq!(r.data_blocks_unverifiable, 100);
    let mut reader = VerityReader::new(
        Cursor::new(&img.data),
        Cursor::new(&img.hash),
        img.params.clone(),
        img.area,
        &root,
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        reader.read_block(0, &mut buf),
        Err(Error::HashBlockCorrupt { top: true, .. })
    ));
    // A root of the wrong length is an error, not a failure.
    assert!(verify(
        &img.data,
        &mut Cursor::new(&img.hash),
        &img.params,
        img.area,
        &root[..20],
        false,
        &mut |_| {}
    )
    .is_err());
}

#[test]
fn root_matches_tree_reads_only_the_top_block() {
    let img = image(300, 4096, 4096);
    let mut hash = Cursor::new(&img.hash);
    assert_eq!(
        root_matches_tree(&mut hash, &img.params, img.area, &img.root).unwrap(),
        Some(true)
    );
    let mut wrong = img.root.clone();
    wrong[0] ^= 1;
    assert_eq!(
        root_matches_tree(&mut hash, &img.params, img.area, &wrong).unwrap(),
        Some(false)
    );
    let one = image(1, 4096, 4096);
    assert_eq!(
        root_matches_tree(
            &mut Cursor::new(&one.hash),
            &one.params,
            one.area,
            &one.root
        )
        .unwrap(),
        None
    );
}

#[test]
fn single_block_image() {
    let mut img = image(1, 4096, 4096);
    assert!(img.verify(false).is_ok());
    let mut reader = img.reader();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!(all, img.data);
    img.data[5] ^= 1;
    assert_eq!(
        img.verify(false).failures,
        vec![Failure::DataBlock {
            index: 0,
            offset: 0
        }]
    );
}

#[test]
fn reader_errors_on_the_corrupt_block_only() {
    let mut img = image(700, 4096, 4096);
    img.data[333 * 4096 + 1000] ^= 4;
    let mut reader = img.reader();
    let mut buf = vec![0u8; 4096];
    for i in (0..700).rev() {
        let r = reader.read_block(i, &mut buf);
        if i == 333 {
            assert!(
                matches!(r, Err(Error::DataBlockCorrupt { index: 333, offset }) if offset == 333 * 4096)
            );
        } else {
            r.unwrap();
            assert!(buf[..] == img.data[i as usize * 4096..(i as usize + 1) * 4096]);
        }
    }
    // Through Read: the bad block is an InvalidData error, reads around it work.
    let mut before = vec![0u8; 4096];
    reader.seek(SeekFrom::Start(332 * 4096)).unwrap();
    reader.read_exact(&mut before).unwrap();
    let err = reader.read_exact(&mut before).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("data block 333"), "{err}");
    reader.seek(SeekFrom::Start(334 * 4096 + 5)).unwrap();
    reader.read_exact(&mut before[..100]).unwrap();
    assert!(before[..100] == img.data[334 * 4096 + 5..334 * 4096 + 105]);
}

#[test]
fn reader_caches_verified_hash_blocks() {
    let img = image(2000, 4096, 4096);
    let mut reader = img.reader();
    let mut buf = vec![0u8; 4096];
    reader.read_block(0, &mut buf).unwrap();
    assert_eq!(reader.cached_hash_blocks(), 2); // top + one level-0 block
    reader.read_block(1, &mut buf).unwrap();
    assert_eq!(reader.cached_hash_blocks(), 2);
    reader.read_block(1999, &mut buf).unwrap();
    assert_eq!(reader.cached_hash_blocks(), 3);
    reader.set_cache_blocks(3);
    reader.read_block(1000, &mut buf).unwrap();
    assert!(reader.cached_hash_blocks() <= 3);
    // A hash block corrupted after it was cached is not re-read: the cache holds verified
    // copies. A fresh reader sees the corruption.
    let mut hash = img.hash.clone();
    let level0_block0 = img.area.tree_offset(4096) as usize + 4096;
    hash[level0_block0 + 7] ^= 1;
    let mut fresh = VerityReader::new(
        Cursor::new(&img.data),
        Cursor::new(&hash),
        img.params.clone(),
        img.area,
        &img.root,
    )
    .unwrap();
    assert!(matches!(
        fresh.read_block(5, &mut buf),
        Err(Error::HashBlockCorrupt {
            level: 0,
            index: 0,
            ..
        })
    ));
    fresh.read_block(128, &mut buf).unwrap();
    assert!(matches!(
        fresh.read_block(2000, &mut buf),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn short_devices_are_errors() {
    let img = image(100, 4096, 4096);
    let short = &img.hash[..img.hash.len() - 1];
    assert!(matches!(
        verify(
            &img.data,
            &mut Cursor::new(short),
            &img.params,
            img.area,
            &img.root,
            false,
            &mut |_| {}
        ),
        Err(Error::HashTooShort { .. })
    ));
    assert!(matches!(
        HashTree::build(&img.data[..4096 * 99], &img.params, &mut |_| {}),
        Err(Error::DataTooShort { .. })
    ));
}

fn need(tool: &str, package: &str) {
    let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    assert!(
        found,
        "`{tool}` is required by this test but is not installed: run `apt-get install -y \
         {package}` (scripts/test installs it). Never skipped."
    );
}

fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn squashfs_reads_back_through_the_tree() {
    need("mksquashfs", "squashfs-tools");
    need("unsquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc/deep")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"sealed\n").unwrap();
    std::fs::write(src.join("etc/deep/blob"), data(300_000, 3)).unwrap();
    std::fs::write(src.join("zeros"), vec![0u8; 100_000]).unwrap();
    let sqfs = dir.path().join("image.sqfs");
    let st = Command::new("mksquashfs")
        .args([&src, &sqfs])
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs failed");
    let image = std::fs::read(&sqfs).unwrap();
    assert_eq!(image.len() % 4096, 0, "mksquashfs pads to 4 KiB");

    let params = Params::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        image.len() as u64 / 4096,
        Salt::from_hex("0011").unwrap(),
    )
    .unwrap();
    let area = HashArea::default();
    let mut hash = Cursor::new(Vec::new());
    let tree = format(&image, &mut hash, &params, area, None, &mut |_| {}).unwrap();
    let hash = hash.into_inner();
    let mut reader = VerityReader::new(
        Cursor::new(&image),
        Cursor::new(&hash),
        params,
        area,
        tree.root(),
    )
    .unwrap();
    let mut verified = Vec::new();
    reader.read_to_end(&mut verified).unwrap();
    assert!(verified == image);
    let copy = dir.path().join("verified.sqfs");
    std::fs::write(&copy, &verified).unwrap();
    let out = dir.path().join("out");
    let st = Command::new("unsquashfs")
        .args(["-no-progress", "-d"])
        .args([&out, &copy])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "unsquashfs failed");
    assert_eq!(files_under(&out), files_under(&src));
}
