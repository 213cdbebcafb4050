//! The fixed newstyle handshake as a state machine over any `Read + Write` byte stream (a
//! socket, a TLS stream, or bytes in memory for tests and fuzzing).
//!
//! [`greet`] sends the greeting and reads the client's flags; [`negotiate`] answers options
//! until the client asks for transmission, gives up, or asks for TLS. With TLS required,
//! every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`
//! (`NBD_OPT_EXPORT_NAME`, which has no error reply, ends the connection), as the protocol's
//! "forced TLS" mode says; after `NBD_OPT_STARTTLS` succeeded the caller wraps the stream
//! in TLS and calls [`negotiate`] again with [`Tls::Active`].
//!
//! Time is not this module's business: the server bounds the whole negotiation from outside
//! (it shuts the socket down when the handshake limit passes).

use std::io::{self, Read, Write};

use super::proto::*;
use crate::{Error, Result};

/// The export as the handshake describes it.
#[derive(Clone, Debug)]
pub struct Export<'a> {
    /// Its name; the empty name (the default export) is accepted too.
    pub name: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`TF_*`).
    pub flags: u16,
    /// The device's block size (the preferred block size is at least 4096).
    pub block_size: u32,
}

/// Where the connection stands with respect to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// The server has no TLS credentials: `NBD_OPT_STARTTLS` is unsupported.
    Off,
    /// The server speaks only TLS and the client has not asked for it yet.
    Required,
    /// The connection runs over TLS.
    Active,
}

/// How a negotiation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// The client chose the export: transmission starts.
    Transmission,
    /// The client aborted or went away.
    Aborted,
    /// `NBD_OPT_STARTTLS` was acknowledged: the caller starts TLS on the stream and
    /// negotiates again with [`Tls::Active`].
    StartTls,
}

fn io_err(e: io::Error) -> Error {
    Error::io("NBD handshake", e)
}

/// Sends the greeting and reads the client's flags.
///
/// # Errors
/// [`Error::Io`] when the stream fails; [`Error::Protocol`] for unknown client flags.
pub fn greet<S: Read + Write>(s: &mut S) -> Result<ClientFlags> {
    s.write_all(&greeting()).map_err(io_err)?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(io_err)?;
    ClientFlags::parse(b)
}

fn reply<S: Write>(s: &mut S, opt: u32, kind: u32, data: &[u8]) -> Result<()> {
    s.write_all(&option_reply(opt, kind, data)).map_err(io_err)
}

/// Answers options until the client goes to transmission, aborts, or asks for TLS.
///
/// # Errors
/// [`Error::Io`] when the stream fails mid-option; [`Error::Protocol`] when the client
/// breaks the protocol (bad magic, oversized option, `NBD_OPT_EXPORT_NAME` for an unknown
/// export or before TLS).
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    export: &Export<'_>,
    client: ClientFlags,
    tls: Tls,
) -> Result<Negotiated> {
    loop {
        let mut head = [0u8; OptionHeader::LEN];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Negotiated::Aborted),
            Err(e) => return Err(io_err(e)),
        }
        let OptionHeader { option: opt, len } = OptionHeader::parse(&head)?;
        // At most MAX_OPTION bytes, checked by the parser.
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).map_err(io_err)?;
        if opt == OPT_ABORT {
            let _ = reply(s, opt, REP_ACK, &[]);
            return Ok(Negotiated::Aborted);
        }
        if opt == OPT_STARTTLS {
            match tls {
                Tls::Off => reply(s, opt, REP_ERR_UNSUP, b"this server has no TLS")?,
                Tls::Active => reply(s, opt, REP_ERR_INVALID, b"TLS is already on")?,
                Tls::Required if !data.is_empty() => {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")?
                }
                Tls::Required => {
                    reply(s, opt, REP_ACK, &[])?;
                    s.flush().map_err(io_err)?;
                    return Ok(Negotiated::StartTls);
                }
            }
            continue;
        }
        if tls == Tls::Required {
            if opt == OPT_EXPORT_NAME {
                // This option has no error reply: the server closes.
                return Err(Error::Protocol(
                    "the client asked for an export before NBD_OPT_STARTTLS; this server \
                     speaks only TLS"
                        .into(),
                ));
            }
            reply(
                s,
                opt,
                REP_ERR_TLS_REQD,
                b"this server requires TLS: NBD_OPT_STARTTLS first",
            )?;
            continue;
        }
        let name_ok = |n: &[u8]| n.is_empty() || n == export.name.as_bytes();
        match opt {
            OPT_EXPORT_NAME => {
                if !name_ok(&data) {
                    return Err(Error::Protocol(format!(
                        "the client asked for export {:?}; this server has {:?}",
                        String::from_utf8_lossy(&data),
                        export.name
                    )));
                }
                let mut m = Vec::with_capacity(134);
                m.extend_from_slice(&export.size.to_be_bytes());
                m.extend_from_slice(&export.flags.to_be_bytes());
                if !client.no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&m).map_err(io_err)?;
                return Ok(Negotiated::Transmission);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                reply(s, opt, REP_SERVER, &d)?;
                reply(s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let req = match GoRequest::parse(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(s, opt, REP_ERR_INVALID, e.to_string().as_bytes())?;
                        continue;
                    }
                };
                if !name_ok(&req.name) {
                    let msg = format!("no export named {:?}", String::from_utf8_lossy(&req.name));
                    reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.size.to_be_bytes());
                info.extend_from_slice(&export.flags.to_be_bytes());
                reply(s, opt, REP_INFO, &info)?;
                if req.info.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    bs.extend_from_slice(&1u32.to_be_bytes());
                    bs.extend_from_slice(&export.block_size.max(4096).to_be_bytes());
                    bs.extend_from_slice(&PREFERRED_MAX.to_be_bytes());
                    reply(s, opt, REP_INFO, &bs)?;
                }
                reply(s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(Negotiated::Transmission);
                }
            }
            _ => reply(s, opt, REP_ERR_UNSUP, b"option not supported by sealvol")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A client's bytes in, the server's bytes out.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn export() -> Export<'static> {
        Export {
            name: "vol",
            size: 1 << 20,
            flags: TF_HAS_FLAGS,
            block_size: 512,
        }
    }

    fn opt(o: u32, data: &[u8]) -> Vec<u8> {
        let mut m = OptionHeader {
            option: o,
            len: data.len() as u32,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(data);
        m
    }

    /// Option replies as (option, kind, data).
    type Replies = Vec<(u32, u32, Vec<u8>)>;

    /// The replies in `out`.
    fn replies(mut out: &[u8]) -> Replies {
        let mut v = Vec::new();
        while out.len() >= 20 {
            let h = OptionReplyHeader::parse(out[..20].try_into().unwrap()).unwrap();
            let end = 20 + h.len as usize;
            v.push((h.option, h.kind, out[20..end].to_vec()));
            out = &out[end..];
        }
        assert!(out.is_empty(), "trailing bytes {out:?}");
        v
    }

    fn run(input: Vec<u8>, tls: Tls) -> (Result<Negotiated>, Replies) {
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let r = negotiate(&mut d, &export(), ClientFlags { no_zeroes: true }, tls);
        (r, replies(&d.output))
    }

    fn go() -> Vec<u8> {
        GoRequest {
            name: b"vol".to_vec(),
            info: vec![INFO_BLOCK_SIZE],
        }
        .encode()
    }

    #[test]
    fn greeting_then_flags() {
        let mut d = Duplex {
            input: Cursor::new(3u32.to_be_bytes().to_vec()),
            output: Vec::new(),
        };
        assert!(greet(&mut d).unwrap().no_zeroes);
        assert_eq!(d.output, greeting());
        let mut d = Duplex {
            input: Cursor::new(0x80u32.to_be_bytes().to_vec()),
            output: Vec::new(),
        };
        assert!(greet(&mut d).is_err());
    }

    #[test]
    fn tls_required_refuses_everything_before_starttls() {
        let mut input = opt(OPT_LIST, &[]);
        input.extend(opt(OPT_GO, &go()));
        input.extend(opt(OPT_INFO, &go()));
        input.extend(opt(99, &[]));
        input.extend(opt(OPT_STARTTLS, b"x"));
        input.extend(opt(OPT_STARTTLS, &[]));
        input.extend(opt(OPT_GO, &go())); // never read: TLS starts first
        let (r, reps) = run(input, Tls::Required);
        assert_eq!(r.unwrap(), Negotiated::StartTls);
        let kinds: Vec<u32> = reps.iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                REP_ERR_TLS_REQD,
                REP_ERR_TLS_REQD,
                REP_ERR_TLS_REQD,
                REP_ERR_TLS_REQD,
                REP_ERR_INVALID,
                REP_ACK
            ]
        );
    }

    #[test]
    fn export_name_before_tls_hangs_up() {
        let (r, reps) = run(opt(OPT_EXPORT_NAME, b""), Tls::Required);
        assert!(r.unwrap_err().to_string().contains("TLS"));
        assert!(reps.is_empty(), "no export data leaks: {reps:?}");
    }

    #[test]
    fn after_tls_go_works_and_starttls_is_invalid() {
        let mut input = opt(OPT_STARTTLS, &[]);
        input.extend(opt(OPT_GO, &go()));
        let (r, reps) = run(input, Tls::Active);
        assert_eq!(r.unwrap(), Negotiated::Transmission);
        assert_eq!(reps[0].1, REP_ERR_INVALID);
        assert_eq!(reps[1].1, REP_INFO);
        assert_eq!(reps[2].1, REP_INFO);
        assert_eq!(reps.last().unwrap().1, REP_ACK);
    }

    #[test]
    fn without_tls_starttls_is_unsupported_and_abort_acks() {
        let mut input = opt(OPT_STARTTLS, &[]);
        input.extend(opt(OPT_ABORT, &[]));
        let (r, reps) = run(input, Tls::Off);
        assert_eq!(r.unwrap(), Negotiated::Aborted);
        assert_eq!(reps[0].1, REP_ERR_UNSUP);
        assert_eq!(reps[1].1, REP_ACK);
    }

    #[test]
    fn eof_between_options_is_an_abort_and_mid_option_an_error() {
        assert_eq!(run(vec![], Tls::Off).0.unwrap(), Negotiated::Aborted);
        let mut cut = opt(OPT_GO, &go());
        cut.truncate(cut.len() - 1);
        assert!(run(cut, Tls::Off).0.is_err());
    }

    #[test]
    fn oversized_option_hangs_up_without_reading_it() {
        let h = OptionHeader {
            option: OPT_GO,
            len: u32::MAX,
        }
        .encode()
        .to_vec();
        assert!(run(h, Tls::Off)
            .0
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }
}
