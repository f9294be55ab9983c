//! Groups: named sets of puppets.

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::Group;
use crate::store::Transactional;

impl Store {
    pub fn create_group(&self, group: &Group) -> Result<()> {
        self.groups.transaction(|groups| {
            if groups.get(group.name.as_bytes())?.is_some() {
                return abort(StoreError::AlreadyExists {
                    kind: "group",
                    id: group.name.clone(),
                });
            }
            groups.insert(group.name.as_bytes(), encode(group))?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn get_group(&self, name: &str) -> Result<Group> {
        match self.groups.get(name)? {
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "group",
                id: name.to_string(),
            }),
        }
    }

    pub fn list_groups(&self) -> Result<Vec<Group>> {
        self.groups
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn remove_group(&self, name: &str) -> Result<()> {
        if self.groups.remove(name)?.is_none() {
            return Err(StoreError::NotFound {
                kind: "group",
                id: name.to_string(),
            });
        }
        Ok(())
    }
}
