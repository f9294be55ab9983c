//! Copies of artifact content on puppets (the site peer cache, see
//! `peers.rs`), in the `copies` tree:
//! - `c\0SHA256\0PUPPET` → the puppet's [`ContentCopy`];
//! - `v\0SHA256\0SITE` → a version of the site's copies of that content,
//!   moved by every change a source decision depends on. A decision reads
//!   the version, then the copies, and stores its outcome only if the
//!   version is still the one it read: two puppets of a site asking at once
//!   (on one node or two) never both take the uplink.

use crate::domain::{ContentCopy, Millis};

use super::{Result, Store, Transactional, abort, decode, encode};

fn copy_key(sha256: &str, puppet: &str) -> Vec<u8> {
    format!("c\0{sha256}\0{puppet}").into_bytes()
}

fn version_key(sha256: &str, site: &str) -> Vec<u8> {
    format!("v\0{sha256}\0{site}").into_bytes()
}

fn version_of(bytes: Option<impl AsRef<[u8]>>) -> u64 {
    bytes.map_or(0, |v| {
        u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
    })
}

impl Store {
    /// Every recorded copy of the content.
    pub fn copies_of(&self, sha256: &str) -> Result<Vec<ContentCopy>> {
        self.copies
            .scan_prefix(format!("c\0{sha256}\0"))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The version of a site's copies of the content.
    pub fn copies_version(&self, sha256: &str, site: &str) -> Result<u64> {
        Ok(version_of(self.copies.get(version_key(sha256, site))?))
    }

    /// Stores `copy` (replacing the puppet's previous one) if the site's
    /// version is still `expected`, moving it; false (nothing stored) if
    /// it moved meanwhile.
    pub fn put_copy_if(&self, expected: u64, copy: &ContentCopy) -> Result<bool> {
        let version = version_key(&copy.sha256, &copy.site);
        self.copies.transaction(|tree| {
            if version_of(tree.get(&version)?) != expected {
                return Ok(false);
            }
            tree.insert(&version, &(expected + 1).to_be_bytes())?;
            tree.insert(copy_key(&copy.sha256, &copy.puppet), encode(copy))?;
            Ok(true)
        })
    }

    /// Records that a puppet holds the content: `held` says which, from
    /// where, the bytes and the time its fetch took (a copy already held
    /// keeps its first source).
    pub fn copy_held(&self, held: &ContentCopy) -> Result<ContentCopy> {
        let key = copy_key(&held.sha256, &held.puppet);
        self.copies.transaction(|tree| {
            let copy = match tree.get(&key)? {
                Some(v) => match decode::<ContentCopy>(&key, &v) {
                    Ok(c) if c.held => ContentCopy {
                        site: held.site.clone(),
                        updated: held.updated,
                        ..c
                    },
                    Ok(c) => ContentCopy {
                        since: c.since,
                        held: true,
                        ..held.clone()
                    },
                    Err(e) => return abort(e),
                },
                None => ContentCopy {
                    held: true,
                    ..held.clone()
                },
            };
            let version = version_key(&held.sha256, &held.site);
            let next = version_of(tree.get(&version)?) + 1;
            tree.insert(&version, &next.to_be_bytes())?;
            tree.insert(&key, encode(&copy))?;
            Ok(copy)
        })
    }

    /// A fetcher reports `puppet`'s copy failing: others are not sent to it
    /// before `until`. Nothing if it has no copy.
    pub fn suspect_copy(
        &self,
        sha256: &str,
        puppet: &str,
        reason: &str,
        until: Millis,
    ) -> Result<()> {
        let key = copy_key(sha256, puppet);
        self.copies.transaction(|tree| {
            let Some(v) = tree.get(&key)? else {
                return Ok(());
            };
            let mut copy: ContentCopy = match decode(&key, &v) {
                Ok(c) => c,
                Err(e) => return abort(e),
            };
            copy.suspect_until = until;
            copy.last_failure = Some(reason.to_string());
            copy.updated = until;
            let version = version_key(sha256, &copy.site);
            let next = version_of(tree.get(&version)?) + 1;
            tree.insert(&version, &next.to_be_bytes())?;
            tree.insert(&key, encode(&copy))?;
            Ok(())
        })
    }

    /// Forgets a puppet's copy (it no longer holds it).
    pub fn forget_copy(&self, sha256: &str, puppet: &str) -> Result<()> {
        let key = copy_key(sha256, puppet);
        self.copies.transaction(|tree| {
            let Some(v) = tree.get(&key)? else {
                return Ok(());
            };
            let copy: ContentCopy = match decode(&key, &v) {
                Ok(c) => c,
                Err(e) => return abort(e),
            };
            let version = version_key(sha256, &copy.site);
            let next = version_of(tree.get(&version)?) + 1;
            tree.insert(&version, &next.to_be_bytes())?;
            tree.remove(&key)?;
            Ok(())
        })
    }

    /// Forgets every copy of the content (it was removed).
    pub fn forget_copies(&self, sha256: &str) -> Result<()> {
        for prefix in [format!("c\0{sha256}\0"), format!("v\0{sha256}\0")] {
            let keys: Vec<_> = self
                .copies
                .scan_prefix(prefix)
                .map(|kv| kv.map(|(k, _)| k))
                .collect::<Result<_>>()?;
            for k in keys {
                self.copies.remove(k)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn copy(puppet: &str, source: &str) -> ContentCopy {
        ContentCopy {
            sha256: "ab".repeat(32),
            puppet: puppet.into(),
            site: "lyon".into(),
            held: false,
            source: source.into(),
            since: Millis(1),
            updated: Millis(1),
            bytes: 0,
            took_ms: 0,
            suspect_until: Millis(0),
            last_failure: None,
        }
    }

    #[test]
    fn a_decision_is_stored_only_on_the_version_it_read() {
        let sha = "ab".repeat(32);
        for (_engine, store) in testing::stores() {
            let v = store.copies_version(&sha, "lyon").unwrap();
            assert!(store.put_copy_if(v, &copy("a", "")).unwrap());
            // b decided on the same version as a: refused, to decide again.
            assert!(!store.put_copy_if(v, &copy("b", "")).unwrap());
            let v = store.copies_version(&sha, "lyon").unwrap();
            assert!(store.put_copy_if(v, &copy("b", "a")).unwrap());
            let mut held = copy("a", "");
            (held.held, held.bytes, held.took_ms) = (true, 10, 5);
            store.copy_held(&held).unwrap();
            store
                .suspect_copy(&sha, "b", "stalled", Millis(99))
                .unwrap();
            store
                .suspect_copy(&sha, "zz", "unknown", Millis(99))
                .unwrap();
            let copies = store.copies_of(&sha).unwrap();
            assert_eq!(copies.len(), 2);
            assert!(copies[0].held && copies[0].bytes == 10);
            assert_eq!(copies[1].last_failure.as_deref(), Some("stalled"));
            assert!(store.copies_version(&sha, "lyon").unwrap() > v + 1);
            store.forget_copies(&sha).unwrap();
            assert!(store.copies_of(&sha).unwrap().is_empty());
            assert_eq!(store.copies_version(&sha, "lyon").unwrap(), 0);
        }
    }
}
