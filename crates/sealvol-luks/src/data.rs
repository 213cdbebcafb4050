//! Streaming plaintext into and out of a LUKS data segment.
//!
//! [`import`] reads plaintext from any [`Read`], encrypts it sector by sector with the
//! segment's cipher and writes the ciphertext at the segment's offset; [`export`] does the
//! reverse. Both run a three-stage pipeline (read, crypt, write) on scoped threads with a few
//! large recycled buffers, and the crypt stage spreads each buffer over the available cores
//! ([`sealvol_crypto::ParallelXts`]), so the copy runs at the speed of the slower of the two
//! ends rather than of the cipher.
//!
//! The IV of a sector is `iv_tweak + offset_in_segment / 512` (dm-crypt `plain64`, counted in
//! 512-byte units whatever the sector size).

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc;

use sealvol_crypto::{ParallelXts, SecretBytes};

use crate::{DataSegment, Error, Result};

/// Bytes moved through the pipeline per buffer. Large enough that per-call overhead (thread
/// hand-off, syscalls) vanishes, small enough that four of them stay cheap.
pub const CHUNK: usize = 8 << 20;

/// Buffers in flight: one being read, one being crypted, one being written, one spare.
const BUFFERS: usize = 4;

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Plaintext bytes read from the source (import) or written to the destination (export).
    pub bytes: u64,
    /// Bytes written to the data segment including zero padding of a partial last sector.
    pub padded_bytes: u64,
}

/// Worker threads for the crypt stage: the machine's parallelism, at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

fn cipher_for(segment: &DataSegment, volume_key: &SecretBytes, threads: usize) -> Result<ParallelXts> {
    // `DataSegment::cipher` refuses cipher_null, unknown ciphers and wrong key lengths; the
    // parallel cipher is built only after that check passed.
    let single = segment.cipher(volume_key)?;
    Ok(ParallelXts::new(volume_key, single.backend(), threads)?)
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context: context.to_string(), source }
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

/// Encrypts plaintext from `src` into the data segment on `dev`, starting at the segment's
/// first byte.
///
/// `capacity` is the segment's size in bytes when it is fixed (or when the caller does not
/// want the device to grow); `None` lets the copy write past the current end of `dev`, as a
/// dynamic segment on a growable file allows. A partial last sector is padded with zeros.
/// `progress` is called with the running count of plaintext bytes.
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
    D: Write + Seek + Send + ?Sized,
{
    let mut cipher = cipher_for(segment, volume_key, default_threads())?;
    let sector = segment.sector_size.bytes();
    dev.seek(SeekFrom::Start(segment.offset))
        .map_err(io_err("seeking to the data segment"))?;

    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (crypted_tx, crypted_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx.send(vec![0u8; CHUNK]).expect("channel has room for every buffer");
    }

    std::thread::scope(|s| {
        // Stage 1: read plaintext into free buffers.
        let reader = s.spawn(move || -> Result<()> {
            while let Ok(mut buf) = free_rx.recv() {
                let n = read_full(src, &mut buf).map_err(io_err("reading the source"))?;
                if n == 0 {
                    break;
                }
                let last = n < buf.len();
                if full_tx.send((buf, n)).is_err() || last {
                    break;
                }
            }
            Ok(())
        });
        // Stage 3: write ciphertext and recycle buffers.
        let free_back = free_tx.clone();
        let writer = s.spawn(move || -> Result<u64> {
            let mut written = 0u64;
            for buf in crypted_rx {
                dev.write_all(&buf).map_err(io_err("writing the volume"))?;
                written += buf.len() as u64;
                // The reader may have finished; a closed channel is not an error.
                let _ = free_back.send(buf);
            }
            dev.flush().map_err(io_err("flushing the volume"))?;
            Ok(written)
        });
        drop(free_tx);

        // Stage 2 (this thread): encrypt. The IV advances with the position in the segment.
        let mut pos = 0u64;
        let mut plain = 0u64;
        let crypt_result = (|| -> Result<()> {
            for (mut buf, n) in full_rx {
                let padded = n.div_ceil(sector) * sector;
                if let Some(cap) = capacity {
                    if pos + padded as u64 > cap {
                        return Err(Error::SourceTooLarge { capacity: cap, at_least: pos + n as u64 });
                    }
                }
                buf[n..padded].fill(0);
                buf.truncate(padded);
                let first_iv = segment.iv_tweak + pos / 512;
                cipher.encrypt_sectors(&mut buf, segment.sector_size, first_iv)?;
                pos += padded as u64;
                plain += n as u64;
                progress(plain);
                if crypted_tx.send(buf).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(())
        })();
        drop(crypted_tx);
        let write_result = writer.join().expect("writer thread panicked");
        let read_result = reader.join().expect("reader thread panicked");
        crypt_result?;
        read_result?;
        let written = write_result?;
        Ok(Copied { bytes: plain, padded_bytes: written })
    })
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
    W: Write + Send + ?Sized,
{
    let mut cipher = cipher_for(segment, volume_key, default_threads())?;
    let sector = segment.sector_size.bytes() as u64;
    if len % sector != 0 {
        return Err(Error::Unaligned { len, sector_size: sector });
    }
    dev.seek(SeekFrom::Start(segment.offset))
        .map_err(io_err("seeking to the data segment"))?;

    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (plain_tx, plain_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx.send(vec![0u8; CHUNK]).expect("channel has room for every buffer");
    }

    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut left = len;
            while left > 0 {
                let Ok(mut buf) = free_rx.recv() else { break };
                let want = left.min(CHUNK as u64) as usize;
                buf.resize(want, 0);
                let n = read_full(dev, &mut buf).map_err(io_err("reading the volume"))?;
                if n < want {
                    return Err(Error::TruncatedData {
                        expected: segment.offset + len,
                        found: segment.offset + (len - left) + n as u64,
                    });
                }
                left -= n as u64;
                if full_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let free_back = free_tx.clone();
        let writer = s.spawn(move || -> Result<u64> {
            let mut written = 0u64;
            for buf in plain_rx {
                dst.write_all(&buf).map_err(io_err("writing the destination"))?;
                written += buf.len() as u64;
                let _ = free_back.send(buf);
            }
            dst.flush().map_err(io_err("flushing the destination"))?;
            Ok(written)
        });
        drop(free_tx);

        let mut pos = 0u64;
        let crypt_result = (|| -> Result<()> {
            for mut buf in full_rx {
                let first_iv = segment.iv_tweak + pos / 512;
                cipher.decrypt_sectors(&mut buf, segment.sector_size, first_iv)?;
                pos += buf.len() as u64;
                progress(pos);
                if plain_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(plain_tx);
        let write_result = writer.join().expect("writer thread panicked");
        let read_result = reader.join().expect("reader thread panicked");
        crypt_result?;
        read_result?;
        let written = write_result?;
        Ok(Copied { bytes: written, padded_bytes: written })
    })
}
