//! Streaming plaintext into and out of a LUKS data segment.
//!
//! [`import`] reads plaintext from any [`Read`], encrypts it sector by sector with the
//! segment's cipher and writes the ciphertext at the segment's offset; [`export`] does the
//! reverse. Both run a two-stage pipeline on two threads with a few recycled 1 MiB buffers:
//! one thread reads and crypts (aws-lc's AES-XTS runs at several GB/s, far above file I/O),
//! the other writes, so the copy runs at the speed of the slower end rather than of the sum.
//!
//! The cipher is the segment's ([`DataSegment::cipher`], any
//! [`sealvol_crypto::CipherSpec`]). The IV number of a sector is
//! `iv_tweak + offset_in_segment / 512` (dm-crypt counts 512-byte units whatever the sector
//! size), made into bytes by the spec's IV generator (`plain64`, `plain`, `essiv`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc;

use sealvol_crypto::SecretBytes;

use crate::{DataSegment, Error, Result};

/// Bytes moved through the pipeline per buffer: small enough that a buffer read, crypted and
/// written stays in the CPU's caches, large enough that per-call costs vanish.
pub const CHUNK: usize = 1 << 20;

/// Buffers in flight between the two stages.
const BUFFERS: usize = 4;

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Plaintext bytes read from the source (import) or written to the destination (export).
    pub bytes: u64,
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(src: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Two stages on two threads: `produce` (read and crypt, on a scoped thread) fills recycled
/// buffers, `consume` (write, on the calling thread) drains them. `produce` returns
/// `Ok(false)` when there is nothing more (its buffer is then ignored). The first error of
/// either stage stops both and is returned.
fn pipeline<P, C>(mut produce: P, mut consume: C) -> Result<()>
where
    P: FnMut(&mut Vec<u8>) -> Result<bool> + Send,
    C: FnMut(&[u8]) -> Result<()>,
{
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx
            .send(Vec::with_capacity(CHUNK))
            .expect("channel has room for every buffer");
    }
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<()> {
            while let Ok(mut buf) = free_rx.recv() {
                if !produce(&mut buf)? {
                    break;
                }
                if full_tx.send(buf).is_err() {
                    break; // the consumer stopped; its error is reported
                }
            }
            Ok(())
        });
        let consumed = (|| -> Result<()> {
            for buf in full_rx {
                consume(&buf)?;
                // The producer may have finished; a closed channel is not an error.
                let _ = free_tx.send(buf);
            }
            Ok(())
        })();
        drop(free_tx);
        let produced = producer.join().expect("pipeline producer panicked");
        consumed.and(produced)
    })
}

/// Encrypts plaintext from `src` into the data segment on `dev`, starting at the segment's
/// first byte.
///
/// `capacity` is the most the segment may take in bytes (its fixed size, or what the device
/// holds); `None` lets the copy write past the current end of `dev`, as a dynamic segment on
/// a growable file allows. A partial last sector is padded with zeros. `progress` is called
/// with the running count of plaintext bytes.
///
/// # Errors
/// I/O errors of either side, an unsupported cipher, or a source longer than `capacity`
/// ([`Error::SourceTooLarge`], raised before the chunk that would overflow is written).
pub fn import<R, D>(
    src: &mut R,
    dev: &mut D,
    segment: &DataSegment,
    volume_key: &SecretBytes,
    capacity: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied>
where
    R: Read + Send + ?Sized,
    D: Write + Seek + ?Sized,
{
    // Refuses cipher_null, unknown ciphers and wrong key lengths.
    let mut cipher = segment.cipher(volume_key)?;
    let sector = segment.sector_size.bytes();
    dev.seek(SeekFrom::Start(segment.offset))
        .map_err(io_err("seeking to the data segment"))?;

    let mut pos = 0u64; // bytes of the segment produced so far (whole sectors)
    let mut plain = 0u64;
    let mut done = false;
    let mut written = 0u64;
    pipeline(
        |buf| {
            if done {
                return Ok(false);
            }
            buf.resize(CHUNK, 0);
            let n = read_full(src, buf).map_err(io_err("reading the source"))?;
            if n == 0 {
                return Ok(false);
            }
            done = n < CHUNK;
            let padded = n.div_ceil(sector) * sector;
            if let Some(cap) = capacity {
                if pos + padded as u64 > cap {
                    return Err(Error::SourceTooLarge {
                        capacity: cap,
                        at_least: pos + n as u64,
                    });
                }
            }
            buf[n..padded].fill(0);
            buf.truncate(padded);
            cipher.encrypt_sectors(buf, segment.sector_size, segment.iv_tweak + pos / 512)?;
            pos += padded as u64;
            plain += n as u64;
            Ok(true)
        },
        |buf| {
            dev.write_all(buf).map_err(io_err("writing the volume"))?;
            written += buf.len() as u64;
            progress(written);
            Ok(())
        },
    )?;
    dev.flush().map_err(io_err("flushing the volume"))?;
    Ok(Copied { bytes: plain })
}

/// Decrypts `len` bytes of the data segment on `dev` (from its first byte) into `dst`.
/// `len` must be a multiple of the sector size ([`DataSegment::data_len`] is).
/// `progress` is called with the running count of bytes written.
///
/// # Errors
/// I/O errors of either side, an unsupported cipher, a `len` that is not whole sectors, or a
/// device shorter than `offset + len`.
pub fn export<D, W>(
    dev: &mut D,
    dst: &mut W,
    segment: &DataSegment,
    volume_key: &SecretBytes,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied>
where
    D: Read + Seek + Send + ?Sized,
    W: Write + ?Sized,
{
    // Refuses cipher_null, unknown ciphers and wrong key lengths.
    let mut cipher = segment.cipher(volume_key)?;
    let sector = segment.sector_size.bytes() as u64;
    if len % sector != 0 {
        return Err(Error::Unaligned {
            len,
            sector_size: sector,
        });
    }
    dev.seek(SeekFrom::Start(segment.offset))
        .map_err(io_err("seeking to the data segment"))?;

    let mut pos = 0u64;
    let mut written = 0u64;
    pipeline(
        |buf| {
            if pos == len {
                return Ok(false);
            }
            let want = (len - pos).min(CHUNK as u64) as usize;
            buf.resize(want, 0);
            let n = read_full(dev, buf).map_err(io_err("reading the volume"))?;
            if n < want {
                return Err(Error::TruncatedData {
                    expected: segment.offset + len,
                    found: segment.offset + pos + n as u64,
                });
            }
            cipher.decrypt_sectors(buf, segment.sector_size, segment.iv_tweak + pos / 512)?;
            pos += n as u64;
            Ok(true)
        },
        |buf| {
            dst.write_all(buf)
                .map_err(io_err("writing the destination"))?;
            written += buf.len() as u64;
            progress(written);
            Ok(())
        },
    )?;
    dst.flush().map_err(io_err("flushing the destination"))?;
    Ok(Copied { bytes: written })
}
