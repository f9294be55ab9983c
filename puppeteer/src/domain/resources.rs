//! Resources: named counting semaphores, and what runs need of them.

use serde::{Deserialize, Serialize};

use super::{Invalid, Millis, check_resource_name};

/// A named counting semaphore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub capacity: u32,
    pub created_at: Millis,
    /// Bytes per second shared by the artifact downloads of the runs
    /// holding it; 0: no budget.
    #[serde(default)]
    pub bandwidth: u64,
    /// The site whose uplink it models (empty: none): fetches from the
    /// puppeteer by that site's puppets draw on its bandwidth budget.
    #[serde(default)]
    pub site: String,
}

/// Some capacity of a resource that a run holds while offered or running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceNeed {
    pub name: String,
    pub count: u32,
}

/// Checks a list of needs: valid names, counts of at least 1, no name twice.
pub fn check_needs(needs: &[ResourceNeed]) -> Result<(), Invalid> {
    let mut seen = std::collections::BTreeSet::new();
    for need in needs {
        check_resource_name(&need.name)?;
        if need.count == 0 {
            return Err(Invalid(format!(
                "resource {}: the count must be at least 1",
                need.name
            )));
        }
        if !seen.insert(&need.name) {
            return Err(Invalid(format!("resource {} is listed twice", need.name)));
        }
    }
    Ok(())
}
