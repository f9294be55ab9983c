//! Users, their API tokens, and the audit trail.
//!
//! A token's secret is stored only as a hash, in `credentials` (for lookup)
//! and on the token record (for revocation). Revoking a token or removing its
//! user removes the `credentials` entry in the same transaction, so a revoked
//! token is refused from the next call on.
//!
//! The last-admin rule is checked inside the transaction that demotes or
//! removes a user: sled runs one transaction at a time, so two admins
//! demoting each other at once cannot both pass the check and leave none.
//! (A user added meanwhile is missed by the count, which only makes it
//! stricter.)

use crate::store::Transactional;

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{ApiToken, AuditEntry, Millis, Principal, Role, User};

impl Store {
    pub fn get_user(&self, name: &str) -> Result<User> {
        match self.users.get(name)? {
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "user",
                id: name.to_string(),
            }),
        }
    }

    pub fn add_user(&self, user: &User) -> Result<()> {
        self.users.transaction(|users| {
            if users.get(user.name.as_bytes())?.is_some() {
                return abort(StoreError::AlreadyExists {
                    kind: "user",
                    id: user.name.clone(),
                });
            }
            users.insert(user.name.as_bytes(), encode(user))?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn list_users(&self) -> Result<Vec<User>> {
        self.users
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The names of all users, read outside a transaction for one to
    /// re-read their records inside it (sled's transactions cannot iterate).
    fn user_names(&self) -> Result<Vec<String>> {
        self.users
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Changes a user's role; the last admin cannot be demoted.
    pub fn set_user_role(&self, name: &str, role: Role) -> Result<User> {
        let names = self.user_names()?;
        let user = self.users.transaction(|users| {
            let Some(v) = users.get(name.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "user",
                    id: name.to_string(),
                });
            };
            let mut user: User = decode(name.as_bytes(), &v).or_else(abort)?;
            if user.role == Role::Admin && role != Role::Admin {
                last_admin_check(users, &names, name)?;
            }
            user.role = role;
            users.insert(name.as_bytes(), encode(&user))?;
            Ok(user)
        })?;
        Ok(user)
    }

    /// Removes a user and revokes all their tokens; the last admin cannot
    /// be removed. Returns how many tokens were revoked.
    pub fn remove_user(&self, name: &str) -> Result<u32> {
        self.get_user(name)?;
        let names = self.user_names()?;
        let tokens: Vec<ApiToken> = self
            .list_api_tokens()?
            .into_iter()
            .filter(|t| t.user == name && !t.revoked)
            .collect();
        (&self.users, &self.api_tokens, &self.credentials).transaction(
            |(users, api_tokens, credentials)| {
                let Some(v) = users.remove(name.as_bytes())? else {
                    return abort(StoreError::NotFound {
                        kind: "user",
                        id: name.to_string(),
                    });
                };
                let user: User = decode(name.as_bytes(), &v).or_else(abort)?;
                if user.role == Role::Admin {
                    last_admin_check(users, &names, name)?;
                }
                for token in &tokens {
                    let mut token = token.clone();
                    token.revoked = true;
                    api_tokens.insert(token.id.as_bytes(), encode(&token))?;
                    credentials.remove(token.secret_hash.as_bytes())?;
                }
                Ok(())
            },
        )?;
        Ok(tokens.len() as u32)
    }

    /// Stores a token and makes its secret usable.
    pub fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        (&self.users, &self.api_tokens, &self.credentials).transaction(
            |(users, api_tokens, credentials)| {
                if users.get(token.user.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound {
                        kind: "user",
                        id: token.user.clone(),
                    });
                }
                api_tokens.insert(token.id.as_bytes(), encode(token))?;
                credentials.insert(
                    token.secret_hash.as_bytes(),
                    encode(&Principal::User {
                        user: token.user.clone(),
                        token_id: token.id.clone(),
                    }),
                )?;
                Ok(())
            },
        )?;
        Ok(())
    }

    pub fn get_api_token(&self, id: &str) -> Result<ApiToken> {
        match self.api_tokens.get(id)? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "token",
                id: id.to_string(),
            }),
        }
    }

    pub fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        let mut tokens: Vec<ApiToken> = self
            .api_tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_>>()?;
        tokens.sort_by_key(|t| t.created_at);
        Ok(tokens)
    }

    /// Revokes a token: its secret stops working at once.
    pub fn revoke_api_token(&self, id: &str) -> Result<ApiToken> {
        let token =
            (&self.api_tokens, &self.credentials).transaction(|(api_tokens, credentials)| {
                let Some(v) = api_tokens.get(id.as_bytes())? else {
                    return abort(StoreError::NotFound {
                        kind: "token",
                        id: id.to_string(),
                    });
                };
                let mut token: ApiToken = match decode(id.as_bytes(), &v) {
                    Ok(t) => t,
                    Err(e) => return abort(e),
                };
                token.revoked = true;
                api_tokens.insert(id.as_bytes(), encode(&token))?;
                credentials.remove(token.secret_hash.as_bytes())?;
                Ok(token)
            })?;
        Ok(token)
    }

    /// Appends an entry to the audit trail (its `seq` is set here).
    pub fn append_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry> {
        entry.seq = self.next_seq()?;
        self.audit.insert(entry.seq.to_be_bytes(), encode(&entry))?;
        Ok(entry)
    }

    /// Removes the audit entries older than `before`; returns how many.
    /// Entries are kept in time order: this reads only what it removes.
    pub fn prune_audit(&self, before: Millis) -> Result<usize> {
        let mut removed = 0;
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let entry: AuditEntry = decode(&k, &v)?;
            if entry.at >= before {
                break;
            }
            self.audit.remove(k)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Audit entries at or after `since`, oldest first, at most the newest `limit`.
    pub fn list_audit(
        &self,
        since: Option<Millis>,
        actor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let mut entries = Vec::new();
        for kv in self.audit.iter().rev() {
            let (k, v) = kv?;
            let entry: AuditEntry = decode(&k, &v)?;
            if since.is_some_and(|s| entry.at < s) {
                break;
            }
            if actor.is_some_and(|a| entry.actor != a) {
                continue;
            }
            entries.push(entry);
            if entries.len() >= limit {
                break;
            }
        }
        entries.reverse();
        Ok(entries)
    }
}

/// Inside a transaction: refuses to leave no admin once `name` is no longer
/// one, counting among `names`.
fn last_admin_check(
    users: &crate::store::TxTree<'_>,
    names: &[String],
    name: &str,
) -> crate::store::TxResult<()> {
    for other in names.iter().filter(|n| n.as_str() != name) {
        if let Some(v) = users.get(other.as_bytes())? {
            let user: User = decode(other.as_bytes(), &v).or_else(abort)?;
            if user.role == Role::Admin {
                return Ok(());
            }
        }
    }
    abort(StoreError::Conflict(format!(
        "{name} is the last admin: make another user admin first"
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::store::testing;

    fn admin(name: &str) -> User {
        User {
            name: name.into(),
            role: Role::Admin,
            created_at: Millis(0),
        }
    }

    /// Two admins demoting (or removing) each other at the same instant:
    /// one wins, the other is refused, and an admin always remains.
    #[test]
    fn two_admins_demoting_each_other_at_once_leave_one() {
        for (_engine, store) in testing::stores() {
            let store = Arc::new(store);
            for round in 0..200 {
                let (a, b) = (format!("a{round}"), format!("b{round}"));
                store.add_user(&admin(&a)).unwrap();
                store.add_user(&admin(&b)).unwrap();
                // Only these two are admins this round.
                for user in store.list_users().unwrap() {
                    if user.name != a && user.name != b && user.role == Role::Admin {
                        store.set_user_role(&user.name, Role::Viewer).unwrap();
                    }
                }
                let barrier = Arc::new(Barrier::new(2));
                let demote = |me: String, other: String| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        if round % 2 == 0 {
                            store.set_user_role(&other, Role::Operator).is_ok()
                        } else {
                            store.remove_user(&other).is_ok()
                        }
                        .then_some(me)
                    })
                };
                let one = demote(a.clone(), b.clone());
                let two = demote(b.clone(), a.clone());
                let won = [one.join().unwrap(), two.join().unwrap()];
                assert_eq!(won.iter().flatten().count(), 1, "round {round}: {won:?}");
                let admins = store
                    .list_users()
                    .unwrap()
                    .into_iter()
                    .filter(|u| u.role == Role::Admin)
                    .count();
                assert_eq!(admins, 1, "round {round}");
            }
        }
    }
}
