//! Puppets, their credentials, API credentials and enrollment tokens.

use std::sync::{Arc, Mutex};

use crate::store::Transactional;

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{EnrollToken, Millis, Principal, Puppet, PuppetState, Rotation};

/// Every credential hash a puppet may hold.
fn puppet_hashes(puppet: &Puppet) -> Vec<String> {
    let mut hashes = vec![puppet.credential_hash.clone()];
    if let Some(rotation) = &puppet.rotation {
        hashes.push(rotation.new_hash.clone());
    }
    if let Some((old, _)) = &puppet.old_credential {
        hashes.push(old.clone());
    }
    hashes
}

/// The names of all puppets, listed once per change of the set rather than
/// at every pass of the sweeper (a scan of the `puppets` tree and ten
/// thousand strings a second, the largest part of an idle puppeteer's CPU
/// once its connections were kept).
///
/// Enrolling and removing a puppet, the only writes that change the set,
/// call [`PuppetNames::changed`] after their transaction. A reader keeps
/// what it listed only if no such write happened since it started (the
/// version did not move), so the list is never older than the tree.
#[derive(Debug, Default)]
pub(crate) struct PuppetNames {
    // A std mutex: held to clone or swap an `Arc`, never across an await.
    inner: Mutex<(u64, Option<Arc<[String]>>)>,
}

impl PuppetNames {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<Arc<[String]>>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The list, or the version to hand to [`PuppetNames::keep`].
    fn get(&self) -> std::result::Result<Arc<[String]>, u64> {
        let inner = self.lock();
        inner.1.clone().ok_or(inner.0)
    }

    /// Keeps a list read from the tree, unless the set changed since `version`.
    fn keep(&self, version: u64, names: &Arc<[String]>) {
        let mut inner = self.lock();
        if inner.0 == version {
            inner.1 = Some(names.clone());
        }
    }

    /// A puppet was enrolled or removed: forget the list.
    fn changed(&self) {
        let mut inner = self.lock();
        inner.0 += 1;
        inner.1 = None;
    }
}

/// What enrolling a puppet needs, all checked by the caller except the token.
#[derive(Debug)]
pub struct NewPuppet {
    pub puppet: Puppet,
    pub enroll_secret_hash: String,
}

impl Store {
    /// Who holds the credential with this hash, if anyone.
    pub fn principal(&self, credential_hash: &str) -> Result<Option<Principal>> {
        match self.credentials.get(credential_hash)? {
            Some(v) => Ok(Some(decode(credential_hash.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn put_credential(&self, credential_hash: &str, principal: &Principal) -> Result<()> {
        self.credentials
            .insert(credential_hash, encode(principal))?;
        Ok(())
    }

    pub fn get_puppet(&self, name: &str) -> Result<Puppet> {
        match self.puppets.get(name)? {
            Some(v) => {
                let mut puppet: Puppet = decode(name.as_bytes(), &v)?;
                self.overlay_seen(&mut puppet)?;
                Ok(puppet)
            }
            None => Err(StoreError::NotFound {
                kind: "puppet",
                id: name.to_string(),
            }),
        }
    }

    /// The last poll recorded by [`Store::touch_puppet`], without reading
    /// the puppet's record; `None` if it never polled since it enrolled
    /// (or since a data dir without the `seen` tree was opened).
    pub fn seen_at(&self, name: &str) -> Result<Option<Millis>> {
        match self.seen.get(name.as_bytes())? {
            Some(v) => Ok(Some(Millis(i64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: format!("seen/{name}"),
                    reason: "not 8 bytes".into(),
                })?,
            )))),
            None => Ok(None),
        }
    }

    /// The puppet's last poll: the later of its record's and the `seen`
    /// tree's (see [`Store::touch_puppet`]).
    pub(super) fn overlay_seen(&self, puppet: &mut Puppet) -> Result<()> {
        if let Some(seen) = self.seen_at(&puppet.name)? {
            puppet.last_seen = puppet.last_seen.max(Some(seen));
        }
        Ok(())
    }

    /// The names of every puppet, without decoding their records; shared
    /// (see [`PuppetNames`]).
    pub fn puppet_names(&self) -> Result<Arc<[String]>> {
        let version = match self.puppet_names.get() {
            // Other nodes enroll and remove puppets too: no cache then.
            Ok(names) if !self.is_shared() => return Ok(names),
            Ok(_) => 0,
            Err(version) => version,
        };
        let names: Arc<[String]> = self
            .puppets
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect::<Result<Vec<_>>>()?
            .into();
        self.puppet_names.keep(version, &names);
        Ok(names)
    }

    pub fn list_puppets(&self) -> Result<Vec<Puppet>> {
        self.puppets().collect()
    }

    /// Every puppet, one at a time: for a pass over all of them that keeps
    /// none (ten thousand decoded records are about 12 MB at once).
    pub fn puppets(&self) -> impl Iterator<Item = Result<Puppet>> + '_ {
        self.puppets.iter().map(|kv| {
            let (k, v) = kv?;
            let mut puppet: Puppet = decode(&k, &v)?;
            self.overlay_seen(&mut puppet)?;
            Ok(puppet)
        })
    }

    /// Applies `change` to a stored puppet and returns the result.
    /// `change` may run more than once (transaction retries): no side effects.
    pub fn update_puppet(
        &self,
        name: &str,
        change: impl Fn(&mut Puppet) -> Result<()>,
    ) -> Result<Puppet> {
        let puppet = self.puppets.transaction(|puppets| {
            let Some(v) = puppets.get(name)? else {
                return abort(StoreError::NotFound {
                    kind: "puppet",
                    id: name.to_string(),
                });
            };
            let mut puppet: Puppet = match decode(name.as_bytes(), &v) {
                Ok(p) => p,
                Err(e) => return abort(e),
            };
            if let Err(e) = change(&mut puppet) {
                return abort(e);
            }
            puppets.insert(name.as_bytes(), encode(&puppet))?;
            Ok(puppet)
        })?;
        let mut puppet = puppet;
        self.overlay_seen(&mut puppet)?;
        Ok(puppet)
    }

    /// Records that a puppet polled (no flush: presence is not a promise).
    /// The time goes to the `seen` tree, eight bytes, rather than into the
    /// puppet's record: ten thousand idle puppets poll and end a poll
    /// several times a second between them, and rewriting (and re-encoding)
    /// a record with its facts each time was most of the idle puppeteer's
    /// disk writes. Readers of a puppet get the later of both times.
    pub fn touch_puppet(&self, name: &str, now: Millis) -> Result<()> {
        if self.puppets.get(name)?.is_none() {
            return Err(StoreError::NotFound {
                kind: "puppet",
                id: name.to_string(),
            });
        }
        self.seen.insert(name.as_bytes(), &now.0.to_be_bytes())?;
        Ok(())
    }

    /// Enrolls a puppet: uses one use of its token, stores the puppet and its
    /// credential, all or nothing.
    pub fn enroll(&self, new: NewPuppet, now: Millis) -> Result<Puppet> {
        let NewPuppet {
            mut puppet,
            enroll_secret_hash,
        } = new;
        let result = (
            &self.enroll_secrets,
            &self.enroll_tokens,
            &self.puppets,
            &self.credentials,
        )
            .transaction(|(secrets, tokens, puppets, credentials)| {
                // A secret of no token and a token gone are the same to the
                // caller: its credential is unknown.
                let unknown =
                    || abort(StoreError::BadCredential("unknown enrollment token".into()));
                let Some(id) = secrets.get(enroll_secret_hash.as_bytes())? else {
                    return unknown();
                };
                let Some(v) = tokens.get(&id)? else {
                    return unknown();
                };
                let mut token: EnrollToken = match decode(&id, &v) {
                    Ok(t) => t,
                    Err(e) => return abort(e),
                };
                if let Some(why) = token.unusable(now) {
                    return abort(StoreError::BadCredential(why.to_string()));
                }
                if puppets.get(puppet.name.as_bytes())?.is_some() {
                    return abort(StoreError::AlreadyExists {
                        kind: "puppet",
                        id: puppet.name.clone(),
                    });
                }
                token.used += 1;
                if let Some(left) = token.uses_left.as_mut() {
                    *left -= 1;
                }
                let mut puppet = puppet.clone();
                puppet.enroll_token_id = token.id.clone();
                puppet.assigned_labels.extend(token.labels.clone());
                puppet.state = if token.auto_approve {
                    PuppetState::Enabled
                } else {
                    PuppetState::Pending
                };
                tokens.insert(id.clone(), encode(&token))?;
                puppets.insert(puppet.name.as_bytes(), encode(&puppet))?;
                credentials.insert(
                    puppet.credential_hash.as_bytes(),
                    encode(&Principal::Puppet {
                        name: puppet.name.clone(),
                    }),
                )?;
                Ok(puppet)
            });
        self.puppet_names.changed();
        puppet = result?;
        Ok(puppet)
    }

    /// Removes a puppet and its credential. Its runs stay for the record.
    pub fn remove_puppet(&self, name: &str) -> Result<Puppet> {
        let puppet = (&self.puppets, &self.credentials, &self.seen).transaction(
            |(puppets, credentials, seen)| {
                seen.remove(name.as_bytes())?;
                let Some(v) = puppets.remove(name.as_bytes())? else {
                    return abort(StoreError::NotFound {
                        kind: "puppet",
                        id: name.to_string(),
                    });
                };
                let puppet: Puppet = match decode(name.as_bytes(), &v) {
                    Ok(p) => p,
                    Err(e) => return abort(e),
                };
                for hash in puppet_hashes(&puppet) {
                    credentials.remove(hash.as_bytes())?;
                }
                Ok(puppet)
            },
        );
        self.puppet_names.changed();
        puppet
    }

    /// Starts a rotation: the new credential works from now on, the current
    /// one until `rotation.old_expires_at`.
    pub fn rotate_puppet(&self, name: &str, rotation: &Rotation) -> Result<Puppet> {
        let puppet = (&self.puppets, &self.credentials).transaction(|(puppets, credentials)| {
            let Some(v) = puppets.get(name.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "puppet",
                    id: name.to_string(),
                });
            };
            let mut puppet: Puppet = match decode(name.as_bytes(), &v) {
                Ok(p) => p,
                Err(e) => return abort(e),
            };
            if puppet.revoked {
                return abort(StoreError::Conflict(format!(
                    "puppet {name} was revoked: remove it and enroll it again"
                )));
            }
            // A rotation replacing one not yet picked up: the older new
            // credential was never used, it simply stops existing.
            if let Some(previous) = &puppet.rotation {
                credentials.remove(previous.new_hash.as_bytes())?;
            }
            puppet.rotation = Some(rotation.clone());
            credentials.insert(
                rotation.new_hash.as_bytes(),
                encode(&Principal::Puppet {
                    name: name.to_string(),
                }),
            )?;
            puppets.insert(name.as_bytes(), encode(&puppet))?;
            Ok(puppet)
        })?;
        Ok(puppet)
    }

    /// The puppet used its new credential: it becomes the current one, and
    /// the old one lives on until its expiry.
    ///
    /// An older credential still kept from a previous rotation is forgotten
    /// at once (its hash left the lookup table too): only the current and
    /// the one just replaced can work.
    pub fn complete_rotation(&self, name: &str) -> Result<Puppet> {
        // Set by the last (the committed) run of the change.
        let forgotten = std::cell::Cell::new(None);
        let puppet = self.update_puppet(name, |p| {
            forgotten.set(None);
            if let Some(rotation) = p.rotation.take() {
                let old = std::mem::replace(&mut p.credential_hash, rotation.new_hash);
                forgotten.set(
                    p.old_credential
                        .replace((old, rotation.old_expires_at))
                        .map(|(hash, _)| hash),
                );
            }
            Ok(())
        })?;
        if let Some(hash) = forgotten.into_inner() {
            // No longer the puppet's old credential: only its lookup is left.
            self.credentials.remove(hash.as_bytes())?;
        }
        Ok(puppet)
    }

    /// Forgets an expired old credential.
    pub fn expire_old_credential(&self, name: &str, hash: &str) -> Result<()> {
        (&self.puppets, &self.credentials).transaction(|(puppets, credentials)| {
            credentials.remove(hash.as_bytes())?;
            if let Some(v) = puppets.get(name.as_bytes())? {
                let mut puppet: Puppet = match decode(name.as_bytes(), &v) {
                    Ok(p) => p,
                    Err(e) => return abort(e),
                };
                if puppet
                    .old_credential
                    .as_ref()
                    .is_some_and(|(h, _)| h == hash)
                {
                    puppet.old_credential = None;
                    puppets.insert(name.as_bytes(), encode(&puppet))?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Revokes every credential of a puppet and disables it.
    pub fn revoke_puppet(&self, name: &str) -> Result<Puppet> {
        let puppet = (&self.puppets, &self.credentials).transaction(|(puppets, credentials)| {
            let Some(v) = puppets.get(name.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "puppet",
                    id: name.to_string(),
                });
            };
            let mut puppet: Puppet = match decode(name.as_bytes(), &v) {
                Ok(p) => p,
                Err(e) => return abort(e),
            };
            for hash in puppet_hashes(&puppet) {
                credentials.remove(hash.as_bytes())?;
            }
            puppet.revoked = true;
            puppet.state = PuppetState::Disabled;
            puppet.rotation = None;
            puppet.old_credential = None;
            puppets.insert(name.as_bytes(), encode(&puppet))?;
            Ok(puppet)
        })?;
        Ok(puppet)
    }

    /// Whether `secret` is an enrollment token usable now (nothing used).
    pub fn enroll_token_usable(&self, secret: &str, now: Millis) -> Result<bool> {
        let hash = crate::ids::hash_secret(secret);
        let Some(id) = self.enroll_secrets.get(hash.as_bytes())? else {
            return Ok(false);
        };
        let Some(v) = self.enroll_tokens.get(&id)? else {
            return Ok(false);
        };
        let token: EnrollToken = decode(&id, &v)?;
        Ok(token.unusable(now).is_none())
    }

    pub fn create_enroll_token(&self, token: &EnrollToken) -> Result<()> {
        (&self.enroll_tokens, &self.enroll_secrets).transaction(|(tokens, secrets)| {
            tokens.insert(token.id.as_bytes(), encode(token))?;
            secrets.insert(token.secret_hash.as_bytes(), token.id.as_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn list_enroll_tokens(&self) -> Result<Vec<EnrollToken>> {
        let mut tokens: Vec<EnrollToken> = self
            .enroll_tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_>>()?;
        tokens.sort_by_key(|t| t.created_at);
        Ok(tokens)
    }

    pub fn revoke_enroll_token(&self, id: &str) -> Result<EnrollToken> {
        let token = self.enroll_tokens.transaction(|tokens| {
            let Some(v) = tokens.get(id.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "enrollment token",
                    id: id.to_string(),
                });
            };
            let mut token: EnrollToken = match decode(id.as_bytes(), &v) {
                Ok(t) => t,
                Err(e) => return abort(e),
            };
            token.revoked = true;
            tokens.insert(id.as_bytes(), encode(&token))?;
            Ok(token)
        })?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn enroll(store: &Store, name: &str, now: Millis) -> Puppet {
        let token = EnrollToken {
            id: "tok-1".into(),
            description: String::new(),
            labels: Default::default(),
            uses_left: None,
            used: 0,
            created_at: Millis(0),
            expires_at: None,
            revoked: false,
            secret_hash: "secret-hash".into(),
            auto_approve: true,
        };
        if store.list_enroll_tokens().unwrap().is_empty() {
            store.create_enroll_token(&token).unwrap();
        }
        let puppet = Puppet {
            peer: None,
            name: name.into(),
            state: PuppetState::Pending,
            enrolled_at: now,
            last_seen: Some(now),
            declared_labels: Default::default(),
            assigned_labels: Default::default(),
            facts: Default::default(),
            enroll_token_id: String::new(),
            credential_hash: format!("hash-of-{name}"),
            rotation: None,
            old_credential: None,
            revoked: false,
            reported_presence: None,
        };
        let new = NewPuppet {
            puppet,
            enroll_secret_hash: "secret-hash".into(),
        };
        store.enroll(new, now).unwrap()
    }

    /// Two rotations completed one after the other: the first credential,
    /// no longer kept as the old one, is gone from the lookup too (it
    /// stayed there, orphaned, and still proved connections).
    #[test]
    fn a_second_rotation_forgets_the_first_credential_entirely() {
        for (_engine, store) in testing::stores() {
            enroll(&store, "p1", Millis(1_000));
            for (secret, hash) in [("s2", "hash-2"), ("s3", "hash-3")] {
                let rotation = Rotation {
                    new_secret: secret.into(),
                    new_hash: hash.into(),
                    old_expires_at: Millis(i64::MAX),
                };
                store.rotate_puppet("p1", &rotation).unwrap();
                store.complete_rotation("p1").unwrap();
            }
            let puppet = store.get_puppet("p1").unwrap();
            assert_eq!(puppet.credential_hash, "hash-3");
            assert_eq!(puppet.old_credential.as_ref().unwrap().0, "hash-2");
            assert!(store.principal("hash-of-p1").unwrap().is_none());
            assert!(store.principal("hash-2").unwrap().is_some());
            assert!(store.principal("hash-3").unwrap().is_some());
        }
    }

    #[test]
    fn a_touch_is_seen_by_every_reader_and_leaves_the_record_alone() {
        for (_engine, store) in testing::stores() {
            enroll(&store, "p1", Millis(1_000));
            let record = store.puppets.get("p1").unwrap().unwrap();
            store.touch_puppet("p1", Millis(5_000)).unwrap();
            assert_eq!(store.puppets.get("p1").unwrap().unwrap(), record);
            assert_eq!(
                store.get_puppet("p1").unwrap().last_seen,
                Some(Millis(5_000))
            );
            assert_eq!(
                store.list_puppets().unwrap()[0].last_seen,
                Some(Millis(5_000))
            );
            // A rewrite of the record with a later time wins, an earlier loses.
            let p = store
                .update_puppet("p1", |p| {
                    p.last_seen = Some(Millis(7_000));
                    Ok(())
                })
                .unwrap();
            assert_eq!(p.last_seen, Some(Millis(7_000)));
            let p = store
                .update_puppet("p1", |p| {
                    p.last_seen = Some(Millis(2_000));
                    Ok(())
                })
                .unwrap();
            assert_eq!(p.last_seen, Some(Millis(5_000)));
            // Unknown puppets are not touched.
            assert!(matches!(
                store.touch_puppet("nobody", Millis(1)),
                Err(StoreError::NotFound { .. })
            ));
        }
    }

    #[test]
    fn the_shared_names_follow_enrollments_and_removals() {
        for (_engine, store) in testing::stores() {
            assert!(store.puppet_names().unwrap().is_empty());
            enroll(&store, "p1", Millis(1_000));
            assert_eq!(&*store.puppet_names().unwrap(), ["p1"]);
            enroll(&store, "p2", Millis(1_000));
            let names = store.puppet_names().unwrap();
            assert_eq!(&*names, ["p1", "p2"]);
            // Unchanged: the same list, not a new scan.
            // (Cached on sled only: other nodes write a shared store.)
            assert!(store.is_shared() || Arc::ptr_eq(&names, &store.puppet_names().unwrap()));
            store.remove_puppet("p1").unwrap();
            assert_eq!(&*store.puppet_names().unwrap(), ["p2"]);
            // A failed enrollment changes nothing, and the list says so.
            let mut failed = NewPuppet {
                puppet: store.get_puppet("p2").unwrap(),
                enroll_secret_hash: "secret-hash".into(),
            };
            failed.puppet.credential_hash = "other".into();
            assert!(store.enroll(failed, Millis(2_000)).is_err());
            assert_eq!(&*store.puppet_names().unwrap(), ["p2"]);
        }
    }

    #[test]
    fn a_listing_that_raced_an_enrollment_is_not_kept() {
        let names = PuppetNames::default();
        let version = names.get().unwrap_err();
        // A puppet is enrolled between the scan and keeping what it found.
        names.changed();
        names.keep(version, &Arc::from(vec!["p1".to_string()]));
        assert!(names.get().is_err());
        let version = names.get().unwrap_err();
        names.keep(version, &Arc::from(vec!["p1".to_string()]));
        assert!(names.get().is_ok());
    }

    #[test]
    fn concurrent_enrollments_all_show_in_the_names() {
        for (_engine, store) in testing::stores() {
            enroll(&store, "p0", Millis(1_000));
            std::thread::scope(|scope| {
                for t in 0..4 {
                    let store = &store;
                    scope.spawn(move || {
                        for i in 0..10 {
                            enroll(store, &format!("t{t}-{i}"), Millis(1_000));
                            // Readers between the writers keep lists as they go.
                            let _ = store.puppet_names().unwrap();
                        }
                    });
                }
            });
            assert_eq!(store.puppet_names().unwrap().len(), 41);
        }
    }

    #[test]
    fn a_removed_puppet_leaves_no_last_poll_behind() {
        for (_engine, store) in testing::stores() {
            enroll(&store, "p1", Millis(1_000));
            store.touch_puppet("p1", Millis(9_000)).unwrap();
            store.remove_puppet("p1").unwrap();
            assert!(store.seen.get("p1").unwrap().is_none());
            let again = enroll(&store, "p1", Millis(3_000));
            assert_eq!(again.last_seen, Some(Millis(3_000)));
            assert_eq!(
                store.get_puppet("p1").unwrap().last_seen,
                Some(Millis(3_000))
            );
        }
    }
}
