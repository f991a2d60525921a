//! Readable repository objects authenticated with the repository key.
//!
//! The `config`, the manifests under `backups/` and the lock objects stay plain, indented JSON
//! that a person can read, with one more top-level field, `mac`: the hex keyed-BLAKE3 MAC
//! ([`MasterKey::mac`]) over the object's kind, its key in the repository and the compact
//! `serde_json` serialisation of the value without `mac`. MAC and content are one object, so
//! they cannot be torn apart; the key in the MAC means a valid manifest copied to another
//! backup's name fails. Readers parse the object, take `mac` out, serialise what they parsed
//! again and verify: the MAC covers exactly what the reader will use (fields it does not know
//! are ignored, so new optional fields must be skipped when absent to keep old MACs valid).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crypto::MasterKey;
use super::error::{BackupError, Result};

/// The field that holds the MAC.
pub const MAC_FIELD: &str = "mac";

/// What kind of object a MAC is for (its domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Config,
    Manifest,
    Lock,
}

impl Kind {
    fn domain(self) -> &'static str {
        match self {
            Kind::Config => "berth config",
            Kind::Manifest => "berth backup manifest",
            Kind::Lock => "berth lock",
        }
    }
}

fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("repository objects serialise")
}

/// `value` as indented JSON with its `mac` for the object at `name`.
pub fn seal<T: Serialize>(key: &MasterKey, kind: Kind, name: &str, value: &T) -> Vec<u8> {
    let mac = key.mac(kind.domain(), name, &canonical(value)).to_hex();
    let mut doc = serde_json::to_value(value).expect("repository objects serialise");
    let map = doc.as_object_mut().expect("repository objects are JSON objects");
    map.insert(MAC_FIELD.into(), serde_json::Value::String(mac.to_string()));
    serde_json::to_vec_pretty(&doc).expect("json")
}

/// Parses the object at `name` without checking its MAC (only for reading what must be known
/// before the key exists, and for migrating old formats); returns the value and its `mac`.
pub fn parse_unverified<T: DeserializeOwned>(name: &str, data: &[u8]) -> Result<(T, Option<String>)> {
    let mut doc: serde_json::Value = serde_json::from_slice(data).map_err(|e| BackupError::corrupt(name, e))?;
    let map = doc.as_object_mut().ok_or_else(|| BackupError::corrupt(name, "not a JSON object"))?;
    let mac = match map.remove(MAC_FIELD) {
        Some(serde_json::Value::String(m)) => Some(m),
        Some(_) => return Err(BackupError::corrupt(name, "field `mac` is not a string")),
        None => None,
    };
    let value = serde_json::from_value(doc).map_err(|e| BackupError::corrupt(name, e))?;
    Ok((value, mac))
}

/// Whether `value` with `mac` is authentic as the object at `name`.
pub fn verify<T: Serialize>(key: &MasterKey, kind: Kind, name: &str, value: &T, mac: Option<&str>) -> Result<()> {
    let Some(mac) = mac else {
        return Err(BackupError::Unauthenticated { key: name.to_string(), detail: "it has no `mac` field".into() });
    };
    if key.verify_mac(kind.domain(), name, &canonical(value), mac) {
        Ok(())
    } else {
        Err(BackupError::Unauthenticated { key: name.to_string(), detail: "its MAC does not match".into() })
    }
}

/// Parses and authenticates the object at `name`.
pub fn open<T: DeserializeOwned + Serialize>(key: &MasterKey, kind: Kind, name: &str, data: &[u8]) -> Result<T> {
    let (value, mac) = parse_unverified::<T>(name, data)?;
    verify(key, kind, name, &value, mac.as_deref())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        name: String,
        count: u32,
    }

    #[test]
    fn sealed_objects_stay_readable_and_refuse_changes() {
        let k = MasterKey::generate();
        let doc = Doc { name: "a".into(), count: 3 };
        let sealed = seal(&k, Kind::Manifest, "backups/a/backup.json", &doc);
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(text.contains("\"count\": 3") && text.contains("\"mac\": \""), "{text}");
        assert_eq!(open::<Doc>(&k, Kind::Manifest, "backups/a/backup.json", &sealed).unwrap(), doc);

        let tampered = text.replace("\"count\": 3", "\"count\": 4");
        let err = open::<Doc>(&k, Kind::Manifest, "backups/a/backup.json", tampered.as_bytes()).unwrap_err();
        assert!(matches!(&err, BackupError::Unauthenticated { key, .. } if key == "backups/a/backup.json"), "{err}");
        for (kind, name) in [(Kind::Manifest, "backups/b/backup.json"), (Kind::Lock, "backups/a/backup.json")] {
            assert!(matches!(open::<Doc>(&k, kind, name, &sealed), Err(BackupError::Unauthenticated { .. })));
        }
        let other = MasterKey::generate();
        assert!(open::<Doc>(&other, Kind::Manifest, "backups/a/backup.json", &sealed).is_err());
        let unsigned = serde_json::to_vec(&doc).unwrap();
        let err = open::<Doc>(&k, Kind::Manifest, "backups/a/backup.json", &unsigned).unwrap_err();
        assert!(err.to_string().contains("no `mac`"), "{err}");
        // Re-indenting does not matter: the MAC covers the parsed value.
        let compact = serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&sealed).unwrap()).unwrap();
        assert_eq!(open::<Doc>(&k, Kind::Manifest, "backups/a/backup.json", &compact).unwrap(), doc);
    }
}
