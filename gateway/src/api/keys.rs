//! API keys: inline ones and a file of keys (one per line), re-read when the file changes
//! so a key rotates without a restart. Compared in constant time.

use crate::config::ApiConfig;
use std::sync::{Mutex, RwLock};

/// The keys in force.
pub struct ApiKeys {
    cfg: ApiConfig,
    keys: RwLock<Vec<String>>,
    /// Contents of the file the keys were read from.
    stamp: Mutex<Option<String>>,
}

fn read(cfg: &ApiConfig) -> Result<(Vec<String>, Option<String>), String> {
    let text = match &cfg.keys_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let from_file = text
        .iter()
        .flat_map(|t| t.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string);
    let keys: Vec<String> = cfg.keys.iter().cloned().chain(from_file).collect();
    Ok((keys, text))
}

/// Equal in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// Reads the keys; at least one is needed to start.
    pub fn new(cfg: &ApiConfig) -> Result<ApiKeys, String> {
        let (keys, stamp) = read(cfg)?;
        if keys.is_empty() {
            return Err("no API key configured".into());
        }
        Ok(ApiKeys {
            cfg: cfg.clone(),
            keys: RwLock::new(keys),
            stamp: Mutex::new(stamp),
        })
    }

    /// Whether no key is in force (the file was emptied of them).
    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether `key` is one of the keys in force.
    pub fn accepts(&self, key: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        // Every key is compared, so the time says nothing about which one matched.
        keys.iter()
            .fold(false, |found, k| same(k.as_bytes(), key.as_bytes()) | found)
    }

    /// Re-reads the key file if it changed; `Ok(true)` when new keys are in force. A file
    /// that cannot be read keeps the keys in force (a Secret being remounted); one read
    /// that names no key (and no inline key) revokes them all: emptying the file is how
    /// an operator takes every key back, and the API then refuses every call.
    pub fn reload(&self) -> Result<bool, String> {
        if self.cfg.keys_file.is_none() {
            return Ok(false);
        }
        let (keys, stamp) = read(&self.cfg)?;
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == stamp {
            return Ok(false);
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        *last = stamp;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_the_file_rotate_and_inline_keys_stay() {
        let dir = std::env::temp_dir().join(format!("chatgw-apikeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        std::fs::write(&file, "# rotated monthly\nold-key\n\n").expect("write");
        let cfg = ApiConfig {
            keys_file: Some(file.clone()),
            keys: vec!["inline".into()],
            ..Default::default()
        };
        let keys = ApiKeys::new(&cfg).expect("keys");
        assert!(keys.accepts("old-key") && keys.accepts("inline"));
        assert!(!keys.accepts("# rotated monthly") && !keys.accepts("") && !keys.accepts("old"));
        assert!(!keys.reload().expect("reload"), "unchanged");
        std::fs::write(&file, "new-key\n").expect("write");
        assert!(keys.reload().expect("reload"));
        assert!(keys.accepts("new-key") && !keys.accepts("old-key") && keys.accepts("inline"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_emptied_of_keys_revokes_them() {
        let dir = std::env::temp_dir().join(format!("chatgw-apikeys-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        std::fs::write(&file, "old-key\n").expect("write");
        let cfg = ApiConfig {
            keys_file: Some(file.clone()),
            ..Default::default()
        };
        let keys = ApiKeys::new(&cfg).expect("keys");
        std::fs::write(&file, "# all revoked\n").expect("write");
        assert!(keys.reload().expect("reload"));
        assert!(!keys.accepts("old-key") && !keys.accepts(""));
        std::fs::remove_file(&file).expect("remove");
        assert!(
            keys.reload().is_err(),
            "a file that cannot be read changes nothing"
        );
        std::fs::write(&file, "new-key\n").expect("write");
        assert!(keys.reload().expect("reload") && keys.accepts("new-key"));
        assert!(ApiKeys::new(&cfg).is_ok());
        std::fs::write(&file, "").expect("write");
        assert!(ApiKeys::new(&cfg).is_err(), "no key to start with");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
