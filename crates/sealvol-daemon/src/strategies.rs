//! Proptest strategies both protocols' parser tests share.

use proptest::prelude::*;
use sealvol_host::export::{BaseSpec, VeritySpec};
use sealvol_host::volume::{LuksType, Params};

/// A volume's parameters as options and API bodies can say them, with sizes from `size`.
pub fn params(size: impl Strategy<Value = u64>) -> impl Strategy<Value = Params> {
    (size, "[a-z0-9]{1,8}", any::<bool>(), any::<bool>(), base()).prop_map(
        |(size, fs, luks1, detached_header, base)| Params {
            size,
            fs,
            detached_header,
            luks_type: if luks1 {
                LuksType::Luks1
            } else {
                LuksType::Luks2
            },
            base,
        },
    )
}

/// An overlay volume's base as options and API bodies can say it: none, a plain image or a
/// verity one.
pub fn base() -> impl Strategy<Value = Option<BaseSpec>> {
    prop::option::of((
        "/[a-zA-Z0-9 ._/-]{1,40}",
        prop::option::of(("/[a-zA-Z0-9 ._/-]{1,40}", any::<u64>(), "[0-9a-f]{2,64}")),
    ))
    .prop_map(|b| {
        b.map(|(image, verity)| match verity {
            None => BaseSpec::Image { path: image.into() },
            Some((hash, hash_offset, root)) => BaseSpec::Verity {
                image: image.into(),
                verity: VeritySpec {
                    hash: hash.into(),
                    hash_offset,
                    root,
                    signature: None,
                },
            },
        })
    })
}

/// Bodies that are JSON values of any shape, whose objects' keys are mostly `fields` (the
/// ones a protocol's requests take), so the parsers get past their first check.
pub fn json_body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z0-9/+=.-]{0,30}".prop_map(serde_json::Value::from),
        "\\PC{0,30}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    3 => prop::sample::select(fields).prop_map(str::to_string),
                    1 => "[A-Za-z_-]{1,10}".prop_map(String::from),
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    value.prop_map(|v| v.to_string().into_bytes())
}
