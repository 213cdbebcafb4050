//! The NBD wire format: the constants, and pure parsers and encoders of the messages this
//! server reads and writes (`doc/proto.md` of the reference implementation).
//!
//! Nothing here does I/O: every parser takes bytes already read and returns a typed message
//! or an [`Error::Protocol`] that says what was found and what was expected, so the parsers
//! can be fuzzed and property-tested on their own. Lengths a client announces are checked
//! here ([`MAX_OPTION`], [`MAX_REQUEST`]) before anyone allocates for them.

use crate::{Error, Result};

/// The server's greeting magic, `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// The newstyle magic, `IHAVEOPT`: in the greeting and in front of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic in front of every option reply.
pub const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
/// The magic in front of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic in front of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can skip the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`, please.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`: choose an export and go to transmission (no error reply).
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`: the client gives up.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`: list the exports.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`: upgrade the connection to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`: describe an export.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`: describe an export and go to transmission.
pub const OPT_GO: u32 = 7;

/// `NBD_REP_ACK`: the option succeeded.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`: one export in a list.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`: one piece of information about an export.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_ERR_UNSUP`: option not supported.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_INVALID`: malformed option.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_TLS_REQD`: this server speaks only after `NBD_OPT_STARTTLS`.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// `NBD_REP_ERR_UNKNOWN`: no such export.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is valid.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TF_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TF_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const TF_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const TF_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: several connections see one consistent device.
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command flag: force unit access (flush after this write).
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`: the client disconnects.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Error number `EPERM`.
pub const EPERM: u32 = 1;
/// Error number `EIO`.
pub const EIO: u32 = 5;
/// Error number `ENOMEM`.
pub const ENOMEM: u32 = 12;
/// Error number `EINVAL`.
pub const EINVAL: u32 = 22;
/// Error number `ENOSPC`.
pub const ENOSPC: u32 = 28;
/// Error number `EOVERFLOW`: a request larger than the server takes.
pub const EOVERFLOW: u32 = 75;
/// Error number `ENOTSUP`.
pub const ENOTSUP: u32 = 95;

/// Largest read or write accepted (the protocol's customary 32 MiB).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest request the block-size information asks clients to send.
pub const PREFERRED_MAX: u32 = 4 << 20;
/// Largest option payload accepted during the handshake.
pub const MAX_OPTION: u32 = 64 << 10;

fn proto(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, the handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut m = [0u8; 18];
    m[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    m[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    m[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    m
}

/// What the client answered to the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client asked for no zero padding after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// Parses the client's 32-bit flags. Unknown flags are refused, as the protocol asks
    /// (a client that set them expects something this server does not do).
    ///
    /// # Errors
    /// [`Error::Protocol`] for a flag other than fixed newstyle and no-zeroes.
    pub fn parse(b: [u8; 4]) -> Result<Self> {
        let f = u32::from_be_bytes(b);
        let unknown = f & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
        if unknown != 0 {
            return Err(proto(format!(
                "client flags {f:#x} carry unknown bits {unknown:#x}; expected only fixed \
                 newstyle (1) and no-zeroes (2)"
            )));
        }
        Ok(ClientFlags {
            no_zeroes: f & CLIENT_NO_ZEROES != 0,
        })
    }
}

/// The header of a client's option: `IHAVEOPT`, the option, the length of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`NBD_OPT_*`).
    pub option: u32,
    /// The length of the data that follows; at most [`MAX_OPTION`].
    pub len: u32,
}

impl OptionHeader {
    /// Bytes on the wire.
    pub const LEN: usize = 16;

    /// Parses an option header.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a wrong magic or data longer than [`MAX_OPTION`] (the server
    /// hangs up rather than reading it).
    pub fn parse(b: &[u8; Self::LEN]) -> Result<Self> {
        let magic = be64(&b[..8]);
        if magic != IHAVEOPT {
            return Err(proto(format!(
                "option magic {magic:#x}, expected IHAVEOPT ({IHAVEOPT:#x})"
            )));
        }
        let option = be32(&b[8..12]);
        let len = be32(&b[12..16]);
        if len > MAX_OPTION {
            return Err(proto(format!(
                "option {option} carries {len} bytes; at most {MAX_OPTION} are accepted"
            )));
        }
        Ok(OptionHeader { option, len })
    }

    /// The header's bytes (what a client sends).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut m = [0u8; Self::LEN];
        m[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        m[8..12].copy_from_slice(&self.option.to_be_bytes());
        m[12..].copy_from_slice(&self.len.to_be_bytes());
        m
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the information asked
/// for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRequest {
    /// The export's name (bytes as sent; the protocol says UTF-8).
    pub name: Vec<u8>,
    /// The `NBD_INFO_*` items asked for.
    pub info: Vec<u16>,
}

impl GoRequest {
    /// Parses the data: u32 name length, name, u16 count, count × u16.
    ///
    /// # Errors
    /// [`Error::Protocol`] when the lengths do not add up to the data.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let bad = |why: &str| {
            proto(format!(
                "malformed NBD_OPT_INFO/GO data ({} bytes): {why}",
                data.len()
            ))
        };
        if data.len() < 4 {
            return Err(bad("no name length"));
        }
        let nlen = be32(&data[..4]) as usize;
        let rest = &data[4..];
        if rest.len() < nlen {
            return Err(bad("the name is longer than the data"));
        }
        let (name, rest) = rest.split_at(nlen);
        if rest.len() < 2 {
            return Err(bad("no count of information requests"));
        }
        let n = be16(&rest[..2]) as usize;
        let reqs = &rest[2..];
        if reqs.len() != 2 * n {
            return Err(bad(
                "the count of information requests does not match the data",
            ));
        }
        Ok(GoRequest {
            name: name.to_vec(),
            info: reqs.chunks_exact(2).map(be16).collect(),
        })
    }

    /// The data's bytes (what a client sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(6 + self.name.len() + 2 * self.info.len());
        d.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        d.extend_from_slice(&self.name);
        d.extend_from_slice(&(self.info.len() as u16).to_be_bytes());
        for i in &self.info {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }
}

/// An option reply: magic, option, reply type, length, data.
pub fn option_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// The header of an option reply, parsed (what a client reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// `NBD_REP_*`.
    pub kind: u32,
    /// Length of the data that follows.
    pub len: u32,
}

impl OptionReplyHeader {
    /// Bytes on the wire.
    pub const LEN: usize = 20;

    /// Parses an option reply's header.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a wrong magic.
    pub fn parse(b: &[u8; Self::LEN]) -> Result<Self> {
        let magic = be64(&b[..8]);
        if magic != REPLY_MAGIC_OPT {
            return Err(proto(format!("option reply magic {magic:#x}")));
        }
        Ok(OptionReplyHeader {
            option: be32(&b[8..12]),
            kind: be32(&b[12..16]),
            len: be32(&b[16..20]),
        })
    }
}

/// A transmission request's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes (of the data that follows, for a write).
    pub len: u32,
}

/// What the server does with a request whose header parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run it; a write's payload of `len` bytes follows.
    Run,
    /// The client disconnects (`NBD_CMD_DISC`).
    Disconnect,
    /// Answer with this error at once (nothing follows the header).
    Refuse(u32),
}

impl Request {
    /// Bytes on the wire.
    pub const LEN: usize = 28;

    /// Parses a request header.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a wrong magic.
    pub fn parse(b: &[u8; Self::LEN]) -> Result<Self> {
        let magic = be32(&b[..4]);
        if magic != REQUEST_MAGIC {
            return Err(proto(format!(
                "request magic {magic:#x}, expected {REQUEST_MAGIC:#x}"
            )));
        }
        Ok(Request {
            flags: be16(&b[4..6]),
            kind: be16(&b[6..8]),
            cookie: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            len: be32(&b[24..28]),
        })
    }

    /// The header's bytes (what a client sends).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut m = [0u8; Self::LEN];
        m[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m[4..6].copy_from_slice(&self.flags.to_be_bytes());
        m[6..8].copy_from_slice(&self.kind.to_be_bytes());
        m[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        m[16..24].copy_from_slice(&self.offset.to_be_bytes());
        m[24..].copy_from_slice(&self.len.to_be_bytes());
        m
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.len
        } else {
            0
        }
    }

    /// Bytes the server holds for this request: a write's payload or a read's reply.
    pub fn buffer_len(&self) -> u32 {
        match self.kind {
            CMD_READ | CMD_WRITE => self.len,
            _ => 0,
        }
    }

    /// Decides what to do with this request.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a write larger than [`MAX_REQUEST`]: its payload cannot be
    /// skipped safely at that size, so the server hangs up. A read that large is refused
    /// with `EOVERFLOW` and the connection goes on.
    pub fn admit(&self) -> Result<Admit> {
        match self.kind {
            CMD_DISC => Ok(Admit::Disconnect),
            CMD_WRITE if self.len > MAX_REQUEST => Err(proto(format!(
                "a write of {} bytes; at most {MAX_REQUEST} are accepted",
                self.len
            ))),
            CMD_READ if self.len > MAX_REQUEST => Ok(Admit::Refuse(EOVERFLOW)),
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES => Ok(Admit::Run),
            _ => Ok(Admit::Refuse(EINVAL)),
        }
    }
}

/// The 16-byte header of a simple reply.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// A simple reply's header, parsed (what a client reads): `(error, cookie)`.
///
/// # Errors
/// [`Error::Protocol`] for a wrong magic.
pub fn parse_simple_reply(b: &[u8; 16]) -> Result<(u32, u64)> {
    let magic = be32(&b[..4]);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(proto(format!("simple reply magic {magic:#x}")));
    }
    Ok((be32(&b[4..8]), be64(&b[8..16])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = Request> {
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(flags, kind, cookie, offset, len)| Request {
                flags,
                kind,
                cookie,
                offset,
                len,
            })
    }

    proptest! {
        #[test]
        fn request_round_trips(r in arb_request()) {
            prop_assert_eq!(Request::parse(&r.encode()).unwrap(), r);
        }

        #[test]
        fn any_request_bytes_parse_or_fail_cleanly(b in any::<[u8; 28]>()) {
            match Request::parse(&b) {
                Ok(r) => {
                    prop_assert_eq!(r.encode(), b);
                    let _ = r.admit();
                }
                Err(e) => prop_assert!(e.to_string().contains("magic")),
            }
        }

        #[test]
        fn oversized_writes_are_refused_and_reads_answered(len in (MAX_REQUEST + 1)..=u32::MAX, cookie in any::<u64>()) {
            let w = Request { flags: 0, kind: CMD_WRITE, cookie, offset: 0, len };
            prop_assert!(w.admit().is_err());
            let r = Request { kind: CMD_READ, ..w };
            prop_assert_eq!(r.admit().unwrap(), Admit::Refuse(EOVERFLOW));
        }

        #[test]
        fn option_header_round_trips(option in any::<u32>(), len in 0..=MAX_OPTION) {
            let h = OptionHeader { option, len };
            prop_assert_eq!(OptionHeader::parse(&h.encode()).unwrap(), h);
        }

        #[test]
        fn oversized_options_are_refused(option in any::<u32>(), len in (MAX_OPTION + 1)..=u32::MAX) {
            let e = OptionHeader::parse(&OptionHeader { option, len }.encode()).unwrap_err();
            prop_assert!(e.to_string().contains("at most"));
        }

        #[test]
        fn any_option_header_bytes_never_panic(b in any::<[u8; 16]>()) {
            if let Ok(h) = OptionHeader::parse(&b) {
                prop_assert!(h.len <= MAX_OPTION);
                prop_assert_eq!(h.encode(), b);
            }
        }

        #[test]
        fn go_request_round_trips(name in proptest::collection::vec(any::<u8>(), 0..300), info in proptest::collection::vec(any::<u16>(), 0..20)) {
            let g = GoRequest { name, info };
            prop_assert_eq!(GoRequest::parse(&g.encode()).unwrap(), g);
        }

        #[test]
        fn any_go_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(g) = GoRequest::parse(&data) {
                prop_assert_eq!(g.encode(), data);
            }
        }

        #[test]
        fn client_flags_known_bits_only(f in any::<u32>()) {
            let r = ClientFlags::parse(f.to_be_bytes());
            prop_assert_eq!(r.is_ok(), f & !3 == 0);
        }
    }

    #[test]
    fn go_request_with_a_lying_name_length_is_refused() {
        let mut d = GoRequest {
            name: b"vol".to_vec(),
            info: vec![],
        }
        .encode();
        d[3] = 200;
        assert!(GoRequest::parse(&d).is_err());
        assert!(GoRequest::parse(&[0, 0, 0]).is_err());
    }

    #[test]
    fn replies_parse_back() {
        let r = option_reply(OPT_GO, REP_ACK, b"xy");
        let h = OptionReplyHeader::parse(r[..20].try_into().unwrap()).unwrap();
        assert_eq!((h.option, h.kind, h.len), (OPT_GO, REP_ACK, 2));
        assert_eq!(parse_simple_reply(&simple_reply(9, EIO)).unwrap(), (EIO, 9));
    }
}
