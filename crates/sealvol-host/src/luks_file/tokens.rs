//! LUKS2 tokens: JSON objects in the header.

use std::io::Read;

use serde_json::Value;

use super::{Access, LuksFile};
use crate::{Error, Result};

/// The most token JSON read: a header's whole JSON area is at most 4 MiB.
const MAX_TOKEN_BYTES: u64 = 4 << 20;

impl LuksFile {
    /// Adds the token whose JSON text `json` gives (an object with `type` and `keyslots`)
    /// as token `id`, or the first free id. Returns the id.
    ///
    /// # Errors
    /// [`Error::Io`] when `json` cannot be read; [`Error::Invalid`] when it is not JSON (read
    /// and parsed before the header is opened); [`Error::Luks`] for a token the format
    /// refuses, an id in use, a LUKS1 volume or a read-only header.
    pub fn token_add(&self, json: &mut dyn Read, id: Option<u32>) -> Result<u32> {
        let mut text = String::new();
        json.take(MAX_TOKEN_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("cannot read the token", e))?;
        let token: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("the token is not valid JSON: {e}")))?;
        let mut open = self.open_to_change()?;
        Ok(open.vol.luks2_mut("tokens")?.add_token(token, id)?)
    }

    /// Removes token `id`.
    ///
    /// # Errors
    /// [`Error::Luks`] for a token that does not exist, a LUKS1 volume or a read-only
    /// header.
    pub fn token_remove(&self, id: u32) -> Result<()> {
        let mut open = self.open_to_change()?;
        Ok(open.vol.luks2_mut("tokens")?.remove_token(id)?)
    }

    /// Token `id`'s JSON object.
    ///
    /// # Errors
    /// [`Error::Luks`] for a token that does not exist or a LUKS1 volume.
    pub fn token_export(&self, id: u32) -> Result<Value> {
        let mut open = self.open_verb(Access::Read)?;
        open.vol
            .luks2_mut("tokens")?
            .header()
            .metadata()
            .tokens
            .get(&id)
            .cloned()
            .ok_or_else(|| sealvol_luks::Error::NoSuchToken(id).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luks_file::FormatRequest;
    use sealvol_luks::{NewHeader, Version};

    fn formatted(dir: &std::path::Path, version: Version) -> LuksFile {
        let files = LuksFile::new(dir.join(format!("{}.img", version.as_str())), None);
        let request = FormatRequest {
            header: NewHeader {
                version,
                ..NewHeader::default()
            },
            size: Some(64 << 10),
            overwrite: false,
        };
        files.format(&request, &[0xff; 32]).unwrap();
        files
    }

    #[test]
    fn tokens_are_added_exported_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2);
        let token = serde_json::json!({"type": "sealvol-test", "keyslots": ["0"], "x": 1});
        let text = token.to_string();
        let id = files.token_add(&mut text.as_bytes(), None).unwrap();
        assert_eq!(id, 0);
        assert_eq!(files.token_add(&mut text.as_bytes(), Some(7)).unwrap(), 7);
        assert_eq!(files.token_export(id).unwrap(), token);
        files.token_remove(id).unwrap();
        assert!(files.token_export(id).is_err());
        assert_eq!(files.token_export(7).unwrap(), token);
        let e = files.token_remove(id).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn bad_tokens_and_luks1_are_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let files = formatted(dir.path(), Version::Luks2);
        let before = std::fs::read(files.data()).unwrap();
        let e = files.token_add(&mut &b"{not json"[..], None).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = files
            .token_add(&mut &br#"{"type": "t", "keyslots": ["5"]}"#[..], None)
            .unwrap_err();
        assert!(matches!(e, Error::Luks(_)), "{e}");
        assert!(std::fs::read(files.data()).unwrap() == before);

        let luks1 = formatted(dir.path(), Version::Luks1);
        let e = luks1
            .token_add(&mut &br#"{"type": "t", "keyslots": []}"#[..], None)
            .unwrap_err();
        assert!(e.to_string().contains("only in LUKS2"), "{e}");
    }
}
