//! Puppets, their credentials, API credentials and enrollment tokens.

use crate::store::GatedTransaction;

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
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "puppet",
                id: name.to_string(),
            }),
        }
    }

    /// The names of every puppet, without decoding their records.
    pub fn puppet_names(&self) -> Result<Vec<String>> {
        self.puppets
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub fn list_puppets(&self) -> Result<Vec<Puppet>> {
        self.puppets
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Applies `change` to a stored puppet and returns the result.
    /// `change` may run more than once (transaction retries): no side effects.
    pub fn update_puppet(
        &self,
        name: &str,
        change: impl Fn(&mut Puppet) -> Result<()>,
    ) -> Result<Puppet> {
        let puppet = self.puppets.gated_transaction(|puppets| {
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
        Ok(puppet)
    }

    /// Records that a puppet polled (no flush: presence is not a promise).
    pub fn touch_puppet(&self, name: &str, now: Millis) -> Result<()> {
        self.update_puppet(name, |p| {
            p.last_seen = Some(now);
            Ok(())
        })
        .map(|_| ())
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
            .gated_transaction(|(secrets, tokens, puppets, credentials)| {
                let Some(id) = secrets.get(enroll_secret_hash.as_bytes())? else {
                    return abort(StoreError::NotFound {
                        kind: "enrollment token",
                        id: "(secret)".into(),
                    });
                };
                let Some(v) = tokens.get(&id)? else {
                    return abort(StoreError::NotFound {
                        kind: "enrollment token",
                        id: String::from_utf8_lossy(&id).into_owned(),
                    });
                };
                let mut token: EnrollToken = match decode(&id, &v) {
                    Ok(t) => t,
                    Err(e) => return abort(e),
                };
                if let Some(why) = token.unusable(now) {
                    return abort(StoreError::Conflict(why.to_string()));
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
            })?;
        puppet = result;
        Ok(puppet)
    }

    /// Removes a puppet and its credential. Its runs stay for the record.
    pub fn remove_puppet(&self, name: &str) -> Result<Puppet> {
        let puppet =
            (&self.puppets, &self.credentials).gated_transaction(|(puppets, credentials)| {
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
            })?;
        Ok(puppet)
    }

    /// Starts a rotation: the new credential works from now on, the current
    /// one until `rotation.old_expires_at`.
    pub fn rotate_puppet(&self, name: &str, rotation: &Rotation) -> Result<Puppet> {
        let puppet =
            (&self.puppets, &self.credentials).gated_transaction(|(puppets, credentials)| {
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
    pub fn complete_rotation(&self, name: &str) -> Result<Puppet> {
        self.update_puppet(name, |p| {
            if let Some(rotation) = p.rotation.take() {
                let old = std::mem::replace(&mut p.credential_hash, rotation.new_hash);
                p.old_credential = Some((old, rotation.old_expires_at));
            }
            Ok(())
        })
    }

    /// Forgets an expired old credential.
    pub fn expire_old_credential(&self, name: &str, hash: &str) -> Result<()> {
        (&self.puppets, &self.credentials).gated_transaction(|(puppets, credentials)| {
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
        let puppet =
            (&self.puppets, &self.credentials).gated_transaction(|(puppets, credentials)| {
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

    pub fn create_enroll_token(&self, token: &EnrollToken) -> Result<()> {
        (&self.enroll_tokens, &self.enroll_secrets).gated_transaction(|(tokens, secrets)| {
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
        let token = self.enroll_tokens.gated_transaction(|tokens| {
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
