//! Resources: named counting semaphores.
//!
//! `resources` holds each resource's definition, `resource_usage` how much of
//! it is held right now. Usage moves only inside the transactions that offer
//! a run (taking all its needs at once, or none) and that move a run out of
//! `offered`/`running` (giving them back), so the sum of what runs hold always
//! equals the usage, and usage never exceeds capacity when taken.

use crate::store::Transactional;
use crate::store::{TxError, TxTree};

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{Resource, ResourceNeed};

type TxResult<T> = std::result::Result<T, TxError>;

/// A resource with what is held of it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceUse {
    pub resource: Resource,
    pub used: u32,
}

fn used_in(usage: &TxTree<'_>, name: &str) -> TxResult<u32> {
    Ok(usage
        .get(name.as_bytes())?
        .map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])))
        .unwrap_or(0))
}

/// Takes every need, or nothing: `Err(name)` names the first resource
/// lacking capacity (or missing).
pub(crate) fn acquire(
    resources: &TxTree<'_>,
    usage: &TxTree<'_>,
    needs: &[ResourceNeed],
) -> TxResult<std::result::Result<(), String>> {
    for need in needs {
        let Some(v) = resources.get(need.name.as_bytes())? else {
            return Ok(Err(need.name.clone()));
        };
        let capacity = match decode::<Resource>(need.name.as_bytes(), &v) {
            Ok(r) => r.capacity,
            Err(_) => return Ok(Err(need.name.clone())),
        };
        if used_in(usage, &need.name)? + need.count > capacity {
            return Ok(Err(need.name.clone()));
        }
    }
    for need in needs {
        let used = used_in(usage, &need.name)?;
        usage.insert(need.name.as_bytes(), &(used + need.count).to_be_bytes())?;
    }
    Ok(Ok(()))
}

/// Gives back what a run held.
pub(crate) fn release(usage: &TxTree<'_>, hold: &ResourceNeed) -> TxResult<()> {
    let used = used_in(usage, &hold.name)?;
    usage.insert(
        hold.name.as_bytes(),
        &used.saturating_sub(hold.count).to_be_bytes(),
    )?;
    Ok(())
}

impl Store {
    pub fn create_resource(&self, resource: &Resource) -> Result<()> {
        self.resources.transaction(|resources| {
            if resources.get(resource.name.as_bytes())?.is_some() {
                return abort(StoreError::AlreadyExists {
                    kind: "resource",
                    id: resource.name.clone(),
                });
            }
            resources.insert(resource.name.as_bytes(), encode(resource))?;
            Ok(())
        })?;
        Ok(())
    }

    fn used(&self, name: &str) -> Result<u32> {
        Ok(self
            .resource_usage
            .get(name)?
            .map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])))
            .unwrap_or(0))
    }

    pub fn get_resource(&self, name: &str) -> Result<ResourceUse> {
        match self.resources.get(name)? {
            Some(v) => Ok(ResourceUse {
                resource: decode(name.as_bytes(), &v)?,
                used: self.used(name)?,
            }),
            None => Err(StoreError::NotFound {
                kind: "resource",
                id: name.to_string(),
            }),
        }
    }

    pub fn list_resources(&self) -> Result<Vec<ResourceUse>> {
        let mut out = Vec::new();
        for kv in self.resources.iter() {
            let (k, v) = kv?;
            let resource: Resource = decode(&k, &v)?;
            let used = self.used(&resource.name)?;
            out.push(ResourceUse { resource, used });
        }
        Ok(out)
    }

    /// Changes what is given: the capacity, the bandwidth budget.
    pub fn update_resource(
        &self,
        name: &str,
        capacity: Option<u32>,
        bandwidth: Option<u64>,
        site: Option<&str>,
    ) -> Result<ResourceUse> {
        self.resources.transaction(|resources| {
            let Some(v) = resources.get(name.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "resource",
                    id: name.to_string(),
                });
            };
            let mut resource: Resource = match decode(name.as_bytes(), &v) {
                Ok(r) => r,
                Err(e) => return abort(e),
            };
            if let Some(capacity) = capacity {
                resource.capacity = capacity;
            }
            if let Some(bandwidth) = bandwidth {
                resource.bandwidth = bandwidth;
            }
            if let Some(site) = site {
                resource.site = site.to_string();
            }
            resources.insert(name.as_bytes(), encode(&resource))?;
            Ok(())
        })?;
        self.get_resource(name)
    }

    /// The bandwidth budgets (resource name, bytes per second) among `names`.
    pub fn bandwidth_budgets<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for name in names {
            if let Some(v) = self.resources.get(name)? {
                let resource: Resource = decode(name.as_bytes(), &v)?;
                if resource.bandwidth > 0 {
                    out.push((resource.name, resource.bandwidth));
                }
            }
        }
        Ok(out)
    }

    /// Removes a resource that nothing holds.
    pub fn remove_resource(&self, name: &str) -> Result<()> {
        (&self.resources, &self.resource_usage).transaction(|(resources, usage)| {
            if resources.get(name.as_bytes())?.is_none() {
                return abort(StoreError::NotFound {
                    kind: "resource",
                    id: name.to_string(),
                });
            }
            let used = used_in(usage, name)?;
            if used > 0 {
                return abort(StoreError::Conflict(format!(
                    "resource {name} is held ({used} in use): wait until the runs holding it end"
                )));
            }
            resources.remove(name.as_bytes())?;
            usage.remove(name.as_bytes())?;
            Ok(())
        })?;
        Ok(())
    }
}
