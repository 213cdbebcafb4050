//! Strict readers for the JSON value forms LUKS2 uses (LUKS2 on-disk format, §3):
//! string-uint64 (`"16777216"`), object ids (`"0"`..), JSON integers, base64 strings.
//! Every reader names the offending path and value in its error.

use crate::{Error, Result};
use base64::Engine as _;
use serde_json::{Map, Value};

pub(crate) fn invalid(path: &str, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{path}: {what}"))
}

/// Shortens a value for an error message.
pub(crate) fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Parses a string-uint64 as cryptsetup does (C `strtoull`, base 10, the whole string up to
/// any NUL): validation has already required plain digits wherever cryptsetup does.
pub(crate) fn parse_u64_str(s: &str) -> Option<u64> {
    super::validate::strtoull(s).filter(|_| !s.is_empty())
}

/// Parses an object id: decimal, no leading zeros, below `max`.
pub(crate) fn parse_id(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse::<u32>().ok().filter(|&v| v < max)
}

/// The object at `key` of `obj`, or an error.
pub(crate) fn obj<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>> {
    match m.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(v) => Err(invalid(
            &format!("{path}.{key}"),
            format_args!("expected an object, found {}", show(v)),
        )),
        None => Err(invalid(
            path,
            format_args!("missing required object {key:?}"),
        )),
    }
}

/// The string at `key`.
pub(crate) fn string<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(invalid(
            &format!("{path}.{key}"),
            format_args!("expected a string, found {}", show(v)),
        )),
        None => Err(invalid(
            path,
            format_args!("missing required string {key:?}"),
        )),
    }
}

/// The string-uint64 at `key`.
pub(crate) fn u64_str(m: &Map<String, Value>, key: &str, path: &str) -> Result<u64> {
    let s = string(m, key, path)?;
    parse_u64_str(s).ok_or_else(|| {
        invalid(
            &format!("{path}.{key}"),
            format_args!("expected a decimal string-uint64 (e.g. \"4096\"), found {s:?}"),
        )
    })
}

/// The JSON integer at `key`, within `u32`.
pub(crate) fn u32_int(m: &Map<String, Value>, key: &str, path: &str) -> Result<u32> {
    match m.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                invalid(
                    &format!("{path}.{key}"),
                    format_args!("expected an integer from 0 to {}, found {n}", u32::MAX),
                )
            }),
        Some(v) => Err(invalid(
            &format!("{path}.{key}"),
            format_args!("expected an integer, found {}", show(v)),
        )),
        None => Err(invalid(
            path,
            format_args!("missing required integer {key:?}"),
        )),
    }
}

pub(crate) fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(crate) fn u64s(v: u64) -> Value {
    Value::String(v.to_string())
}

/// An array of strings.
pub(crate) fn strings(v: &Value, path: &str) -> Result<Vec<String>> {
    let Value::Array(a) = v else {
        return Err(invalid(
            path,
            format_args!("expected an array of strings, found {}", show(v)),
        ));
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(s.clone()),
            other => Err(invalid(
                &format!("{path}[{i}]"),
                format_args!("expected a string, found {}", show(other)),
            )),
        })
        .collect()
}

/// An array of id strings (e.g. a digest's `"keyslots": ["0", "1"]`).
pub(crate) fn ids(v: &Value, path: &str, max: u32) -> Result<Vec<u32>> {
    strings(v, path)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_id(super::validate::cstr(s), max).ok_or_else(|| {
                invalid(
                    &format!("{path}[{i}]"),
                    format_args!("expected an id string from \"0\" to \"{}\" without leading zeros, found {s:?}", max - 1),
                )
            })
        })
        .collect()
}

pub(crate) fn id_array(ids: &[u32]) -> Value {
    Value::Array(ids.iter().map(|i| Value::String(i.to_string())).collect())
}

/// The fields of `m` not named in `known`, in their original order.
pub(crate) fn extra(m: &Map<String, Value>, known: &[&str]) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_uint64_follows_strtoull() {
        assert_eq!(parse_u64_str("0"), Some(0));
        assert_eq!(parse_u64_str("16777216"), Some(16777216));
        assert_eq!(parse_u64_str("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "1 ", "18446744073709551616", "0x10", "1e3", "1.0"] {
            assert_eq!(parse_u64_str(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_strict() {
        assert_eq!(parse_id("0", 32), Some(0));
        assert_eq!(parse_id("31", 32), Some(31));
        for bad in ["", "32", "01", "-0", "+1", " 1", "1a", "99999999999"] {
            assert_eq!(parse_id(bad, 32), None, "{bad:?}");
        }
    }
}
