//! The transmission phase: one reader, a few workers, and nothing that can wait forever.
//!
//! The connection's thread reads requests (and write payloads), several per `recv` when the
//! client sends them back to back. Reads and writes up to [`INLINE_MAX`] it runs itself
//! between two reads; larger ones (and flushes, trims, zeroing) it queues for workers that
//! run them against the device and send the replies, so a client with many large requests
//! in flight (qemu keeps up to 16) keeps both cores busy. Every blocking point has an end:
//!
//! - reading the socket ends when the peer goes, when a worker fails (it shuts the socket
//!   down) and when the server stops (it shuts every socket down);
//! - sending a reply ends within the send timeout (`SO_SNDTIMEO`, and a deadline over the
//!   whole reply so a peer that reads a byte now and then cannot stretch it), or at once when
//!   the socket is shut down;
//! - the queue between reader and workers is closed, waking both sides, when either side
//!   fails; the reader only finishes it (workers drain it) when the client hung up cleanly;
//! - waiting for in-flight budget ends when the connection failed or the server stops.
//!
//! When the connection ends every queued request is dropped and its budget given back.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sealvol_block::BlockDevice;

use super::budget::{Budget, Grant};
use super::proto::*;
use super::socket::Conn;
use crate::{Error, Result};

/// Reads and writes up to this size run on the connection's reading thread, between two
/// reads: handing a 4 KiB request to a worker and waking it cost more than running it
/// (futex waits and wakes were half of a 4 KiB write's time). Larger ones, and everything
/// else, go to the workers, which crypt them on both cores.
const INLINE_MAX: usize = 64 << 10;

/// What a connection's transmission needs.
pub(crate) struct Setup<'a> {
    pub(crate) dev: &'a dyn BlockDevice,
    pub(crate) read_only: bool,
    pub(crate) workers: usize,
    pub(crate) send_timeout: Duration,
    pub(crate) budget: &'a Arc<Budget>,
    pub(crate) stop: &'a AtomicBool,
}

/// One request, ready for a worker, with the budget (and buffer) it holds.
struct Job {
    req: Request,
    grant: Option<Grant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// No more requests; the queued ones still run.
    Finished,
    /// The connection failed: queued requests are dropped.
    Closed,
}

/// A bounded queue whose waits end when either side closes it. A push wakes one waiting
/// worker and a pop wakes the reader waiting for room (not everyone: with a wake for every
/// thread per request, small requests paid more in context switches than in work).
struct Queue<T> {
    state: Mutex<(VecDeque<T>, Option<End>)>,
    /// Signalled when an item is queued (workers wait on it).
    items: Condvar,
    /// Signalled when an item is taken (the reader waits on it for room).
    room: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Self {
        Queue {
            state: Mutex::new((VecDeque::with_capacity(cap), None)),
            items: Condvar::new(),
            room: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (VecDeque<T>, Option<End>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting for room; `false` (and the item dropped) once the queue ended.
    fn push(&self, item: T) -> bool {
        let mut st = self.lock();
        loop {
            if st.1.is_some() {
                drop(st);
                drop(item);
                return false;
            }
            if st.0.len() < self.cap {
                st.0.push_back(item);
                drop(st);
                self.items.notify_one();
                return true;
            }
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next item; `None` once the queue is closed, or finished and empty.
    fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if st.1 == Some(End::Closed) {
                return None;
            }
            if let Some(item) = st.0.pop_front() {
                drop(st);
                self.room.notify_one();
                return Some(item);
            }
            if st.1 == Some(End::Finished) {
                return None;
            }
            st = self.items.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn end(&self, how: End) {
        let dropped = {
            let mut st = self.lock();
            if st.1 != Some(End::Closed) {
                st.1 = Some(how);
            }
            if how == End::Closed {
                std::mem::take(&mut st.0)
            } else {
                VecDeque::new()
            }
        };
        self.items.notify_all();
        self.room.notify_all();
        drop(dropped); // outside the lock: each gives its budget back
    }

    fn is_closed(&self) -> bool {
        self.lock().1 == Some(End::Closed)
    }
}

/// The NBD error number for a device error.
fn nbd_errno(e: &sealvol_block::Error) -> u32 {
    match e {
        sealvol_block::Error::ReadOnly { .. } => EPERM,
        sealvol_block::Error::OutOfRange { .. } => EINVAL,
        other => match other.errno() as u32 {
            x @ (EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP) => x,
            _ => EIO,
        },
    }
}

/// Runs one request; returns the error number and whether the reply carries the data in
/// the job's buffer.
fn run_job(dev: &dyn BlockDevice, read_only: bool, job: &mut Job) -> (u32, bool) {
    let r = job.req;
    let in_range = r
        .offset
        .checked_add(r.len.into())
        .is_some_and(|end| end <= dev.size());
    let fua = |res: sealvol_block::Result<()>| {
        res.and_then(|()| {
            if r.flags & CMD_FLAG_FUA != 0 {
                dev.flush()
            } else {
                Ok(())
            }
        })
    };
    let writes = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && read_only {
        return (EPERM, false);
    }
    if matches!(r.kind, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && !in_range {
        return (if writes { ENOSPC } else { EINVAL }, false);
    }
    let empty: &mut [u8] = &mut [];
    let buf = job.grant.as_mut().map_or(empty, |g| &mut g.buf[..]);
    let result = match r.kind {
        CMD_READ => {
            return match dev.read_at(buf, r.offset) {
                Ok(()) => (0, true),
                Err(e) => {
                    tracing::error!(offset = r.offset, len = r.len, error = %e, "NBD read failed");
                    (nbd_errno(&e), false)
                }
            };
        }
        CMD_WRITE => fua(dev.write_at(buf, r.offset)),
        CMD_FLUSH => dev.flush(),
        CMD_TRIM => fua(dev.discard(r.offset, r.len.into())),
        CMD_WRITE_ZEROES => fua(dev.write_zeroes(r.offset, r.len.into())),
        _ => return (EINVAL, false),
    };
    match result {
        Ok(()) => (0, false),
        Err(e) => {
            tracing::error!(kind = r.kind, offset = r.offset, len = r.len, error = %e, "NBD request failed");
            (nbd_errno(&e), false)
        }
    }
}

/// Sends a simple reply: the whole reply within `timeout`, or an error.
fn send_reply(
    w: &Mutex<Conn>,
    cookie: u64,
    error: u32,
    data: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let h = simple_reply(cookie, error);
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + timeout;
    let mut bufs = [IoSlice::new(&h), IoSlice::new(data)];
    let n = if data.is_empty() { 1 } else { 2 };
    let mut slices: &mut [IoSlice<'_>] = &mut bufs[..n];
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client did not read a reply of {} bytes within {} s (--send-timeout)",
                data.len() + h.len(),
                timeout.as_secs_f32()
            ),
        )
    };
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(e),
        }
        if !slices.is_empty() && Instant::now() >= deadline {
            return Err(timed_out());
        }
    }
    Ok(())
}

/// The reading side of a connection with the bytes read ahead of the message being
/// parsed: a client with many requests in flight sends them back to back, and one `recv`
/// then takes several headers (and small payloads) at once. At most [`Inbox::SIZE`] bytes
/// are held per connection; larger payloads are read straight into their buffers.
struct Inbox {
    conn: Conn,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbox {
    const SIZE: usize = 64 << 10;

    fn new(conn: Conn) -> Self {
        Inbox {
            conn,
            buf: vec![0; Self::SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl Read for Inbox {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if dst.len() >= Self::SIZE {
                return self.conn.read(dst);
            }
            self.start = 0;
            self.end = 0;
            self.end = self.conn.read(&mut self.buf)?;
        }
        let n = dst.len().min(self.end - self.start);
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Reads all of `buf` (a request header or payload) from `conn`, whose receive timeout is
/// `timeout`. Before the first byte the client may idle as long as it likes when `idle_ok`
/// (between requests); once a message has begun, it must arrive within about `timeout`, so
/// a client that stops in the middle of a write's payload cannot hold that payload's budget.
fn read_message(
    conn: &mut impl Read,
    buf: &mut [u8],
    idle_ok: bool,
    timeout: Duration,
) -> io::Result<()> {
    let mut got = 0;
    let mut started = Instant::now();
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if idle_ok && got == 0 {
                    started = Instant::now();
                    continue;
                }
                if started.elapsed() >= timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client sent {got} of {} bytes of a request and then nothing \
                             for {} s (--send-timeout)",
                            buf.len(),
                            timeout.as_secs_f32()
                        ),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves requests on `conn` until the client disconnects, the connection fails, or the
/// server stops. Returns once every worker has ended.
pub(crate) fn transmission(setup: &Setup<'_>, conn: Conn) -> Result<()> {
    let io_err = |e: io::Error| Error::io("NBD connection", e);
    conn.widen_send_buffer();
    conn.set_send_timeout(setup.send_timeout).map_err(io_err)?;
    conn.set_receive_timeout(setup.send_timeout)
        .map_err(io_err)?;
    let writer = Mutex::new(conn.try_clone().map_err(io_err)?);
    let mut conn = Inbox::new(conn);
    let queue: Queue<Job> = Queue::new(setup.workers.max(1));
    // The first reason the connection failed (a worker's or the reader's).
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |why: Error| {
        failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        queue.end(End::Closed);
        writer.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        setup.budget.wake_all();
    };
    let ended = || Error::Ended {
        why: if setup.stop.load(Ordering::SeqCst) {
            "the server is stopping".into()
        } else {
            "the connection failed".into()
        },
    };
    // Runs a job and sends its reply (the budget goes back when the caller drops it).
    let run_and_reply = |job: &mut Job| -> io::Result<()> {
        let (err, with_data) = run_job(setup.dev, setup.read_only, job);
        let data: &[u8] = match (&job.grant, with_data) {
            (Some(g), true) => &g.buf,
            _ => &[],
        };
        send_reply(&writer, job.req.cookie, err, data, setup.send_timeout)
    };
    let clean = std::thread::scope(|s| {
        for _ in 0..setup.workers.max(1) {
            s.spawn(|| {
                while let Some(mut job) = queue.pop() {
                    if let Err(e) = run_and_reply(&mut job) {
                        fail(Error::io("sending a reply", e));
                        return;
                    }
                    drop(job); // gives the budget back
                }
            });
        }
        let mut read_requests = || -> Result<()> {
            let mut head = [0u8; Request::LEN];
            loop {
                match read_message(&mut conn, &mut head, true, setup.send_timeout) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(io_err(e)),
                }
                let req = Request::parse(&head)?;
                match req.admit()? {
                    Admit::Disconnect => return Ok(()),
                    Admit::Refuse(errno) => {
                        send_reply(&writer, req.cookie, errno, &[], setup.send_timeout)
                            .map_err(|e| Error::io("sending a reply", e))?;
                        continue;
                    }
                    Admit::Run => {}
                }
                let grant = match req.buffer_len() {
                    0 => None,
                    n => {
                        let cancelled = || setup.stop.load(Ordering::SeqCst) || queue.is_closed();
                        match setup.budget.acquire(n as usize, &cancelled) {
                            Some(g) => Some(g),
                            None => return Err(ended()),
                        }
                    }
                };
                let mut job = Job { req, grant };
                if req.payload_len() > 0 {
                    if let Some(g) = job.grant.as_mut() {
                        read_message(&mut conn, &mut g.buf, false, setup.send_timeout)
                            .map_err(io_err)?;
                    }
                }
                if (job.req.kind == CMD_READ || job.req.kind == CMD_WRITE)
                    && job.req.len as usize <= INLINE_MAX
                {
                    run_and_reply(&mut job).map_err(|e| Error::io("sending a reply", e))?;
                    continue;
                }
                if !queue.push(job) {
                    return Err(ended());
                }
            }
        };
        match read_requests() {
            Ok(()) => {
                queue.end(End::Finished);
                true
            }
            Err(e) => {
                fail(e);
                false
            }
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None if clean => Ok(()),
        None => Err(ended()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_the_queue_wakes_a_full_push_and_an_empty_pop() {
        let q: Queue<u32> = Queue::new(1);
        assert!(q.push(1));
        std::thread::scope(|s| {
            let t = s.spawn(|| q.push(2));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!t.is_finished(), "waits for room");
            q.end(End::Closed);
            assert!(!t.join().unwrap());
        });
        assert_eq!(q.pop(), None, "closed: queued items are dropped");
        let q: Queue<u32> = Queue::new(2);
        std::thread::scope(|s| {
            let t = s.spawn(|| q.pop());
            std::thread::sleep(Duration::from_millis(50));
            q.end(End::Closed);
            assert_eq!(t.join().unwrap(), None);
        });
    }

    #[test]
    fn finishing_lets_workers_drain() {
        let q: Queue<u32> = Queue::new(2);
        assert!(q.push(1));
        assert!(q.push(2));
        q.end(End::Finished);
        assert!(!q.push(3));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), None);
    }
}
