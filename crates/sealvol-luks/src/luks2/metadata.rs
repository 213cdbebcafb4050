//! The typed LUKS2 JSON metadata (LUKS2 on-disk format, §3): keyslots, tokens, segments,
//! digests and config.
//!
//! Parsing is structural here (types, required fields, value forms); cross-object rules
//! (references, areas, sizes) live in `validate.rs`. Fields this crate does not know are
//! kept in each object's `extra` map and written back unchanged, after the known fields,
//! which are written in the order cryptsetup writes them.

use super::json::{self, invalid, show};
use super::validate::cstr;

/// Ids are canonical decimal numbers below this (validation refuses other keys).
const ID_LIMIT: u32 = u32::MAX;
use crate::Result;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The whole JSON area (LUKS2 on-disk format, §3).
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    /// `keyslots`: id → keyslot (§3.2).
    pub keyslots: BTreeMap<u32, Keyslot>,
    /// `tokens`: id → token object, kept as JSON (§3.3). Each has a string `type` and a
    /// `keyslots` array of existing keyslot ids.
    pub tokens: BTreeMap<u32, Value>,
    /// `segments`: id → segment (§3.4).
    pub segments: BTreeMap<u32, Segment>,
    /// `digests`: id → digest (§3.5).
    pub digests: BTreeMap<u32, Digest>,
    /// `config` (§3.6).
    pub config: Config,
    /// Top-level keys this crate does not know, preserved.
    pub extra: Map<String, Value>,
}

/// A keyslot (§3.2). Keyslots of type `luks2` have `kdf` and `af`, and a `raw` area with
/// `encryption` and `key_size`; other types (`reencrypt`) are kept as found.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyslot {
    /// `type`: `"luks2"` (or `"reencrypt"`, which this crate never opens).
    pub kind: String,
    /// `key_size`: bytes of the key stored in this slot (the volume key).
    pub key_size: u32,
    /// `af`: the anti-forensic splitter (luks2 keyslots).
    pub af: Option<Af>,
    /// `area`: where the keyslot material lives in the keyslots area.
    pub area: Area,
    /// `kdf`: how the passphrase becomes the area key (luks2 keyslots).
    pub kdf: Option<Kdf>,
    /// `priority`: 0 ignore (only tried when named), 1 normal (default), 2 prefer.
    pub priority: Option<u32>,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

/// A keyslot's `af` object (§3.2.1): LUKS1 anti-forensic splitter.
#[derive(Clone, Debug, PartialEq)]
pub struct Af {
    /// `type`: always `"luks1"`.
    pub kind: String,
    /// `stripes`: 4000 in every header cryptsetup writes (and the only value it reads).
    pub stripes: u32,
    /// `hash`: the diffuser hash, e.g. `"sha256"`.
    pub hash: String,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

/// A keyslot's `area` object (§3.2.2).
#[derive(Clone, Debug, PartialEq)]
pub struct Area {
    /// `type`: `"raw"` for luks2 keyslots.
    pub kind: String,
    /// `offset`: byte offset of the area on the header device.
    pub offset: u64,
    /// `size`: bytes of the area.
    pub size: u64,
    /// `encryption`: cipher of the area, e.g. `"aes-xts-plain64"` (raw areas).
    pub encryption: Option<String>,
    /// `key_size`: bytes of the area key (raw areas).
    pub key_size: Option<u32>,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

/// A keyslot's `kdf` object (§3.2.3). cryptsetup accepts exactly these fields.
#[derive(Clone, PartialEq)]
pub enum Kdf {
    /// `{"type":"pbkdf2","hash":…,"iterations":…,"salt":…}`
    Pbkdf2 {
        /// `hash`.
        hash: String,
        /// `iterations`.
        iterations: u32,
        /// `salt` (32 bytes).
        salt: Vec<u8>,
    },
    /// `{"type":"argon2i"|"argon2id","time":…,"memory":…,"cpus":…,"salt":…}`
    Argon2 {
        /// `argon2i` or `argon2id`.
        variant: sealvol_crypto::kdf::Argon2Variant,
        /// `time`: passes.
        time: u32,
        /// `memory`: KiB.
        memory: u32,
        /// `cpus`: lanes.
        cpus: u32,
        /// `salt` (32 bytes).
        salt: Vec<u8>,
    },
}

impl std::fmt::Debug for Kdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kdf::Pbkdf2 {
                hash, iterations, ..
            } => f
                .debug_struct("Pbkdf2")
                .field("hash", hash)
                .field("iterations", iterations)
                .finish_non_exhaustive(),
            Kdf::Argon2 {
                variant,
                time,
                memory,
                cpus,
                ..
            } => f
                .debug_struct("Argon2")
                .field("variant", variant)
                .field("time", time)
                .field("memory", memory)
                .field("cpus", cpus)
                .finish_non_exhaustive(),
        }
    }
}

/// A segment (§3.4).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// `type`: `"crypt"` (or `"linear"` during reencryption).
    pub kind: String,
    /// `offset`: byte offset of the segment on the data device.
    pub offset: u64,
    /// `size`: bytes, or `None` for `"dynamic"` (to the end of the device).
    pub size: Option<u64>,
    /// `iv_tweak`: IV of the first sector, in 512-byte units (crypt segments).
    pub iv_tweak: Option<u64>,
    /// `encryption`: cipher, e.g. `"aes-xts-plain64"` (crypt segments).
    pub encryption: Option<String>,
    /// `sector_size`: encryption sector size in bytes (crypt segments).
    pub sector_size: Option<u32>,
    /// `integrity`: dm-integrity parameters, kept as JSON (crypt segments).
    pub integrity: Option<Value>,
    /// `flags`: e.g. `"backup-final"` during reencryption.
    pub flags: Option<Vec<String>>,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

impl Segment {
    /// True for reencryption backup segments (a flag starting with `backup-`).
    pub fn is_backup(&self) -> bool {
        self.flags
            .as_ref()
            .is_some_and(|f| f.iter().any(|s| cstr(s).starts_with("backup-")))
    }
}

/// A digest (§3.5): checks a candidate volume key. cryptsetup implements only `pbkdf2`
/// digests; a digest of another type, or whose parameters sealvol cannot use, keeps them
/// verbatim in `extra` (`params` is `None`) and opens nothing.
#[derive(Clone, PartialEq)]
pub struct Digest {
    /// `type`: `"pbkdf2"`.
    pub kind: String,
    /// `keyslots`: the keyslots whose key this digest checks.
    pub keyslots: Vec<u32>,
    /// `segments`: the segments that key decrypts.
    pub segments: Vec<u32>,
    /// The PBKDF2 parameters, when this is a `pbkdf2` digest sealvol can compute.
    pub params: Option<DigestParams>,
    /// Unknown fields (and parameters sealvol cannot use), preserved.
    pub extra: Map<String, Value>,
}

/// The parameters of a `pbkdf2` digest.
#[derive(Clone, PartialEq)]
pub struct DigestParams {
    /// `hash`: PBKDF2 hash.
    pub hash: String,
    /// `iterations`.
    pub iterations: u32,
    /// `salt` (32 bytes).
    pub salt: Vec<u8>,
    /// `digest`: PBKDF2 output (20 to 64 bytes).
    pub digest: Vec<u8>,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("kind", &self.kind)
            .field("keyslots", &self.keyslots)
            .field("segments", &self.segments)
            .field("hash", &self.params.as_ref().map(|p| &p.hash))
            .field("iterations", &self.params.as_ref().map(|p| p.iterations))
            .finish_non_exhaustive()
    }
}

/// The `config` object (§3.6).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `json_size`: bytes of the JSON area (`hdr_size - 4096`).
    pub json_size: u64,
    /// `keyslots_size`: bytes of the binary keyslots area after the two header copies.
    pub keyslots_size: u64,
    /// `flags`: activation flags (e.g. `"allow-discards"`).
    pub flags: Option<Vec<String>>,
    /// `requirements`.
    pub requirements: Option<Requirements>,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

/// `config.requirements` (§3.6).
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    /// `mandatory`: features a reader must implement to use the volume.
    pub mandatory: Option<Vec<String>>,
    /// Unknown fields, preserved.
    pub extra: Map<String, Value>,
}

/// Parses a `{"<id>": {...}}` section with ids below `max`.
fn section<'a>(
    top: &'a Map<String, Value>,
    name: &str,
    max: u32,
) -> Result<Vec<(u32, &'a Map<String, Value>)>> {
    let sec = json::obj(top, name, "metadata")?;
    let mut out = Vec::with_capacity(sec.len());
    for (k, v) in sec {
        let id = json::parse_id(k, max).ok_or_else(|| {
            invalid(
                name,
                format_args!(
                    "id {k:?} is not a decimal number from 0 to {} without leading zeros",
                    max - 1
                ),
            )
        })?;
        let Value::Object(o) = v else {
            return Err(invalid(
                &format!("{name}.{k}"),
                format_args!("expected an object, found {}", show(v)),
            ));
        };
        out.push((id, o));
    }
    Ok(out)
}

impl Metadata {
    /// Structural parse of the top-level JSON object.
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the offending field.
    pub fn from_json(v: &Value) -> Result<Self> {
        let Value::Object(top) = v else {
            return Err(invalid(
                "metadata",
                format_args!("expected a JSON object, found {}", show(v)),
            ));
        };
        let mut keyslots = BTreeMap::new();
        for (id, o) in section(top, "keyslots", ID_LIMIT)? {
            keyslots.insert(id, Keyslot::from_json(o, &format!("keyslots.{id}"))?);
        }
        let mut tokens = BTreeMap::new();
        for (id, o) in section(top, "tokens", ID_LIMIT)? {
            let path = format!("tokens.{id}");
            json::string(o, "type", &path)?;
            let ks = o
                .get("keyslots")
                .ok_or_else(|| invalid(&path, "missing required array \"keyslots\""))?;
            json::ids(ks, &format!("{path}.keyslots"), ID_LIMIT)?;
            tokens.insert(id, Value::Object(o.clone()));
        }
        let mut segments = BTreeMap::new();
        for (id, o) in section(top, "segments", ID_LIMIT)? {
            segments.insert(id, Segment::from_json(o, &format!("segments.{id}"))?);
        }
        let mut digests = BTreeMap::new();
        for (id, o) in section(top, "digests", ID_LIMIT)? {
            digests.insert(id, Digest::from_json(o, &format!("digests.{id}"))?);
        }
        let config = Config::from_json(json::obj(top, "config", "metadata")?)?;
        Ok(Metadata {
            keyslots,
            tokens,
            segments,
            digests,
            config,
            extra: json::extra(
                top,
                &["keyslots", "tokens", "segments", "digests", "config"],
            ),
        })
    }

    /// Encodes as cryptsetup does: sections in the order keyslots, tokens, segments, digests,
    /// config; ids ascending; known fields in cryptsetup's order, then preserved unknown ones.
    pub fn to_json(&self) -> Value {
        fn sec<T>(m: &BTreeMap<u32, T>, f: impl Fn(&T) -> Value) -> Value {
            Value::Object(m.iter().map(|(k, v)| (k.to_string(), f(v))).collect())
        }
        let mut top = Map::new();
        top.insert("keyslots".into(), sec(&self.keyslots, Keyslot::to_json));
        top.insert("tokens".into(), sec(&self.tokens, Clone::clone));
        top.insert("segments".into(), sec(&self.segments, Segment::to_json));
        top.insert("digests".into(), sec(&self.digests, Digest::to_json));
        top.insert("config".into(), self.config.to_json());
        append(&mut top, &self.extra);
        Value::Object(top)
    }

    /// Compact JSON text as written to the JSON area (no spaces, `/` not escaped).
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }

    /// The id of the digest that lists `keyslot`, if any.
    pub fn digest_of_keyslot(&self, keyslot: u32) -> Option<u32> {
        self.digests
            .iter()
            .find(|(_, d)| d.keyslots.contains(&keyslot))
            .map(|(&id, _)| id)
    }

    /// The id of the digest that lists `segment`, if any.
    pub fn digest_of_segment(&self, segment: u32) -> Option<u32> {
        self.digests
            .iter()
            .find(|(_, d)| d.segments.contains(&segment))
            .map(|(&id, _)| id)
    }

    /// `config.requirements.mandatory`, or empty.
    pub fn mandatory_requirements(&self) -> &[String] {
        self.config
            .requirements
            .as_ref()
            .and_then(|r| r.mandatory.as_deref())
            .unwrap_or(&[])
    }
}

/// Serializes as the JSON area holds it (the same value as [`Metadata::to_json`]).
impl serde::Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// Removes `key` from `extra` and returns it typed when `fit` takes it; otherwise the value
/// stays in `extra`, verbatim.
fn take<T>(
    extra: &mut Map<String, Value>,
    key: &str,
    fit: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    let t = extra.get(key).and_then(fit)?;
    extra.shift_remove(key);
    Some(t)
}

fn append(dst: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (k, v) in extra {
        dst.insert(k.clone(), v.clone());
    }
}

impl Keyslot {
    /// Types what fits sealvol's model and keeps everything else verbatim in `extra`
    /// (validation has already decided the header is acceptable).
    fn from_json(o: &Map<String, Value>, path: &str) -> Result<Self> {
        let kind = json::string(o, "type", path)?.to_string();
        let key_size = json::u32_int(o, "key_size", path)?;
        let area = Area::from_json(json::obj(o, "area", path)?, &format!("{path}.area"))?;
        let mut extra = json::extra(o, &["type", "key_size", "area"]);
        let af = take(&mut extra, "af", Af::fit);
        let kdf = take(&mut extra, "kdf", Kdf::fit);
        let priority = take(&mut extra, "priority", |v| {
            v.as_u64().and_then(|p| u32::try_from(p).ok())
        });
        Ok(Keyslot {
            kind,
            key_size,
            af,
            area,
            kdf,
            priority,
            extra,
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.clone().into());
        m.insert("key_size".into(), self.key_size.into());
        if let Some(af) = &self.af {
            m.insert("af".into(), af.to_json());
        }
        m.insert("area".into(), self.area.to_json());
        if let Some(kdf) = &self.kdf {
            m.insert("kdf".into(), kdf.to_json());
        }
        if let Some(p) = self.priority {
            m.insert("priority".into(), p.into());
        }
        append(&mut m, &self.extra);
        Value::Object(m)
    }

    /// The priority cryptsetup uses when trying keyslots (missing means 1, normal). A
    /// `priority` that is not a uint32 counts as 0: the keyslot is tried only when named.
    pub fn effective_priority(&self) -> u32 {
        match (self.priority, self.extra.contains_key("priority")) {
            (Some(p), _) => p,
            (None, true) => 0,
            (None, false) => 1,
        }
    }

    /// Why keyslot `id` cannot be opened by sealvol, if it cannot: a type, KDF, cipher or
    /// hash sealvol does not implement, or parameters outside what it accepts. Such a
    /// keyslot stays in the header (and in every header sealvol writes) unchanged.
    pub fn unusable(&self, id: u32) -> Option<String> {
        super::keyslot::slot_params(id, self)
            .err()
            .map(|e| e.to_string())
    }
}

impl Af {
    /// The splitter when it is a `luks1` splitter with a uint32 stripe count.
    fn fit(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        let kind = o.get("type")?.as_str()?;
        if kind != "luks1" {
            return None;
        }
        Some(Af {
            kind: kind.to_string(),
            stripes: u32::try_from(o.get("stripes")?.as_u64()?).ok()?,
            hash: o.get("hash")?.as_str()?.to_string(),
            extra: json::extra(o, &["type", "stripes", "hash"]),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.clone().into());
        m.insert("stripes".into(), self.stripes.into());
        m.insert("hash".into(), self.hash.clone().into());
        append(&mut m, &self.extra);
        Value::Object(m)
    }
}

impl Area {
    fn from_json(o: &Map<String, Value>, path: &str) -> Result<Self> {
        let kind = json::string(o, "type", path)?.to_string();
        let offset = json::u64_str(o, "offset", path)?;
        let size = json::u64_str(o, "size", path)?;
        let mut extra = json::extra(o, &["type", "offset", "size"]);
        let encryption = take(&mut extra, "encryption", |v| v.as_str().map(str::to_string));
        let key_size = take(&mut extra, "key_size", |v| {
            v.as_u64().and_then(|k| u32::try_from(k).ok())
        });
        Ok(Area {
            kind,
            offset,
            size,
            encryption,
            key_size,
            extra,
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.clone().into());
        m.insert("offset".into(), json::u64s(self.offset));
        m.insert("size".into(), json::u64s(self.size));
        if let Some(e) = &self.encryption {
            m.insert("encryption".into(), e.clone().into());
        }
        if let Some(k) = self.key_size {
            m.insert("key_size".into(), k.into());
        }
        append(&mut m, &self.extra);
        Value::Object(m)
    }
}

/// Bytes of a KDF or digest salt (cryptsetup `LUKS_SALTSIZE`).
pub const SALT_LEN: usize = 32;

impl Kdf {
    /// The KDF when it is one sealvol implements, in the exact form cryptsetup writes:
    /// `pbkdf2` (hash, uint32 iterations, 32-byte salt) or `argon2i`/`argon2id` (uint32 time,
    /// memory, cpus, 32-byte salt), no other field. Anything else stays verbatim in the
    /// keyslot's `extra` and makes the keyslot unusable ([`Keyslot::unusable`]).
    fn fit(v: &Value) -> Option<Self> {
        use sealvol_crypto::kdf::Argon2Variant;
        let o = v.as_object()?;
        let u32_of = |k: &str| o.get(k)?.as_u64().and_then(|n| u32::try_from(n).ok());
        let salt = || {
            use base64::Engine as _;
            let s = o.get("salt")?.as_str()?;
            let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            (b.len() == SALT_LEN).then_some(b)
        };
        match o.get("type")?.as_str()? {
            "pbkdf2" if o.len() == 4 => Some(Kdf::Pbkdf2 {
                hash: o.get("hash")?.as_str()?.to_string(),
                iterations: u32_of("iterations")?,
                salt: salt()?,
            }),
            kind @ ("argon2i" | "argon2id") if o.len() == 5 => Some(Kdf::Argon2 {
                variant: if kind == "argon2i" {
                    Argon2Variant::Argon2i
                } else {
                    Argon2Variant::Argon2id
                },
                time: u32_of("time")?,
                memory: u32_of("memory")?,
                cpus: u32_of("cpus")?,
                salt: salt()?,
            }),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                m.insert("type".into(), "pbkdf2".into());
                m.insert("hash".into(), hash.clone().into());
                m.insert("iterations".into(), (*iterations).into());
                m.insert("salt".into(), json::b64(salt));
            }
            Kdf::Argon2 {
                variant,
                time,
                memory,
                cpus,
                salt,
            } => {
                let name = match variant {
                    sealvol_crypto::kdf::Argon2Variant::Argon2i => "argon2i",
                    sealvol_crypto::kdf::Argon2Variant::Argon2id => "argon2id",
                };
                m.insert("type".into(), name.into());
                m.insert("time".into(), (*time).into());
                m.insert("memory".into(), (*memory).into());
                m.insert("cpus".into(), (*cpus).into());
                m.insert("salt".into(), json::b64(salt));
            }
        }
        Value::Object(m)
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        match self {
            Kdf::Pbkdf2 { salt, .. } | Kdf::Argon2 { salt, .. } => salt,
        }
    }
}

impl Segment {
    fn from_json(o: &Map<String, Value>, path: &str) -> Result<Self> {
        let kind = json::string(o, "type", path)?.to_string();
        let offset = json::u64_str(o, "offset", path)?;
        let size = match cstr(json::string(o, "size", path)?) {
            "dynamic" => None,
            s => match json::parse_u64_str(s) {
                Some(0) | None => {
                    return Err(invalid(
                        &format!("{path}.size"),
                        format_args!(
                            "expected \"dynamic\" or a non-zero decimal string-uint64, found {s:?}"
                        ),
                    ))
                }
                Some(v) => Some(v),
            },
        };
        let flags = match o.get("flags") {
            None => None,
            Some(v) => Some(json::strings(v, &format!("{path}.flags"))?),
        };
        let crypt = kind == "crypt";
        let (iv_tweak, encryption, sector_size, integrity) = if crypt {
            let integrity = match o.get("integrity") {
                None => None,
                Some(Value::Object(i)) => {
                    let ip = format!("{path}.integrity");
                    json::string(i, "type", &ip)?;
                    json::string(i, "journal_encryption", &ip)?;
                    json::string(i, "journal_integrity", &ip)?;
                    Some(Value::Object(i.clone()))
                }
                Some(v) => {
                    return Err(invalid(
                        &format!("{path}.integrity"),
                        format_args!("expected an object, found {}", show(v)),
                    ))
                }
            };
            (
                Some(json::u64_str(o, "iv_tweak", path)?),
                Some(json::string(o, "encryption", path)?.to_string()),
                Some(json::u32_int(o, "sector_size", path)?),
                integrity,
            )
        } else {
            (None, None, None, None)
        };
        let known: &[&str] = if crypt {
            &[
                "type",
                "offset",
                "size",
                "iv_tweak",
                "encryption",
                "sector_size",
                "integrity",
                "flags",
            ]
        } else {
            &["type", "offset", "size", "flags"]
        };
        Ok(Segment {
            kind,
            offset,
            size,
            iv_tweak,
            encryption,
            sector_size,
            integrity,
            flags,
            extra: json::extra(o, known),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.clone().into());
        m.insert("offset".into(), json::u64s(self.offset));
        m.insert(
            "size".into(),
            match self.size {
                None => "dynamic".into(),
                Some(s) => json::u64s(s),
            },
        );
        if let Some(t) = self.iv_tweak {
            m.insert("iv_tweak".into(), json::u64s(t));
        }
        if let Some(e) = &self.encryption {
            m.insert("encryption".into(), e.clone().into());
        }
        if let Some(s) = self.sector_size {
            m.insert("sector_size".into(), s.into());
        }
        if let Some(i) = &self.integrity {
            m.insert("integrity".into(), i.clone());
        }
        if let Some(f) = &self.flags {
            m.insert("flags".into(), f.clone().into());
        }
        append(&mut m, &self.extra);
        Value::Object(m)
    }
}

impl Digest {
    fn from_json(o: &Map<String, Value>, path: &str) -> Result<Self> {
        let kind = json::string(o, "type", path)?.to_string();
        let ids = |key: &str| {
            json::ids(
                o.get(key)
                    .ok_or_else(|| invalid(path, format_args!("missing required array {key:?}")))?,
                &format!("{path}.{key}"),
                ID_LIMIT,
            )
        };
        let keyslots = ids("keyslots")?;
        let segments = ids("segments")?;
        let mut extra = json::extra(o, &["type", "keyslots", "segments"]);
        let params = if kind == "pbkdf2" {
            DigestParams::fit(&extra)
        } else {
            None
        };
        if params.is_some() {
            for k in ["hash", "iterations", "salt", "digest"] {
                extra.shift_remove(k);
            }
        }
        Ok(Digest {
            kind,
            keyslots,
            segments,
            params,
            extra,
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.clone().into());
        m.insert("keyslots".into(), json::id_array(&self.keyslots));
        m.insert("segments".into(), json::id_array(&self.segments));
        if let Some(p) = &self.params {
            m.insert("hash".into(), p.hash.clone().into());
            m.insert("iterations".into(), p.iterations.into());
            m.insert("salt".into(), json::b64(&p.salt));
            m.insert("digest".into(), json::b64(&p.digest));
        }
        append(&mut m, &self.extra);
        Value::Object(m)
    }

    /// Why this digest cannot check a key, if it cannot.
    pub fn unusable(&self) -> Option<String> {
        if self.kind != "pbkdf2" {
            return Some(format!(
                "digest type {:?} is not implemented (cryptsetup implements only pbkdf2)",
                self.kind
            ));
        }
        match &self.params {
            None => Some("its hash, iterations, salt (32 bytes base64) or digest (20 to 64 bytes base64) are missing or malformed".into()),
            Some(p) => super::keyslot::hash_alg(&p.hash, "digest hash")
                .err()
                .map(|e| e.to_string()),
        }
    }
}

impl DigestParams {
    fn fit(o: &Map<String, Value>) -> Option<Self> {
        use base64::Engine as _;
        let b64 = |k: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(o.get(k)?.as_str()?)
                .ok()
        };
        let salt = b64("salt").filter(|s| s.len() == SALT_LEN)?;
        let digest = b64("digest").filter(|d| (20..=64).contains(&d.len()))?;
        Some(DigestParams {
            hash: o.get("hash")?.as_str()?.to_string(),
            iterations: u32::try_from(o.get("iterations")?.as_u64()?).ok()?,
            salt,
            digest,
        })
    }
}

impl Config {
    fn from_json(o: &Map<String, Value>) -> Result<Self> {
        let path = "config";
        let flags = match o.get("flags") {
            None => None,
            Some(v) => Some(json::strings(v, "config.flags")?),
        };
        let requirements = match o.get("requirements") {
            None => None,
            Some(Value::Object(r)) => Some(Requirements {
                mandatory: match r.get("mandatory") {
                    None => None,
                    Some(v) => Some(json::strings(v, "config.requirements.mandatory")?),
                },
                extra: json::extra(r, &["mandatory"]),
            }),
            Some(v) => {
                return Err(invalid(
                    "config.requirements",
                    format_args!("expected an object, found {}", show(v)),
                ))
            }
        };
        Ok(Config {
            json_size: json::u64_str(o, "json_size", path)?,
            keyslots_size: json::u64_str(o, "keyslots_size", path)?,
            flags,
            requirements,
            extra: json::extra(o, &["json_size", "keyslots_size", "flags", "requirements"]),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("json_size".into(), json::u64s(self.json_size));
        m.insert("keyslots_size".into(), json::u64s(self.keyslots_size));
        if let Some(f) = &self.flags {
            m.insert("flags".into(), f.clone().into());
        }
        if let Some(r) = &self.requirements {
            let mut rm = Map::new();
            if let Some(md) = &r.mandatory {
                rm.insert("mandatory".into(), md.clone().into());
            }
            append(&mut rm, &r.extra);
            m.insert("requirements".into(), Value::Object(rm));
        }
        append(&mut m, &self.extra);
        Value::Object(m)
    }
}
