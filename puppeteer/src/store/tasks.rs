//! Tasks and their versions. Every version is kept: jobs refer to the one
//! they were launched with.

use super::keys::{prefix_of, version_key};
use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::Task;
use crate::store::Transactional;

impl Store {
    /// Stores version 1 of a new task.
    pub fn create_task(&self, task: &Task) -> Result<()> {
        let prefix = prefix_of(&task.name);
        // A transactional tree cannot scan, so the existence check reads the
        // first version, which every task has until it is removed as a whole.
        self.tasks.transaction(|tasks| {
            if tasks.get(version_key(&task.name, 1))?.is_some() {
                return abort(StoreError::AlreadyExists {
                    kind: "task",
                    id: task.name.clone(),
                });
            }
            tasks.insert(version_key(&task.name, 1), encode(task))?;
            Ok(())
        })?;
        debug_assert!(self.tasks.scan_prefix(prefix).count() == 1);
        Ok(())
    }

    /// The latest version of a task, or a given one.
    pub fn get_task(&self, name: &str, version: Option<u32>) -> Result<Task> {
        let found = match version {
            Some(v) => self.tasks.get(version_key(name, v))?,
            None => self
                .tasks
                .scan_prefix(prefix_of(name))
                .next_back()
                .transpose()?
                .map(|(_, v)| v),
        };
        match found {
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "task",
                id: match version {
                    Some(v) => format!("{name} version {v}"),
                    None => name.to_string(),
                },
            }),
        }
    }

    /// Stores `task` as the next version after `expected` (the latest one the
    /// caller read); refused if another version came in between.
    pub fn add_task_version(&self, task: &Task) -> Result<()> {
        let previous = task.version - 1;
        self.tasks.transaction(|tasks| {
            if tasks.get(version_key(&task.name, previous))?.is_none() {
                return abort(StoreError::NotFound {
                    kind: "task",
                    id: task.name.clone(),
                });
            }
            if tasks.get(version_key(&task.name, task.version))?.is_some() {
                return abort(StoreError::Stale(format!(
                    "task {} was updated meanwhile (version {} exists); read it again",
                    task.name, task.version
                )));
            }
            tasks.insert(version_key(&task.name, task.version), encode(task))?;
            Ok(())
        })?;
        Ok(())
    }

    /// The latest version of every task, by name.
    pub fn list_tasks(&self) -> Result<Vec<Task>> {
        let mut latest: Vec<Task> = Vec::new();
        for kv in self.tasks.iter() {
            let (k, v) = kv?;
            let task: Task = decode(&k, &v)?;
            match latest.last_mut() {
                Some(last) if last.name == task.name => *last = task,
                _ => latest.push(task),
            }
        }
        Ok(latest)
    }

    /// Removes every version of a task.
    pub fn remove_task(&self, name: &str) -> Result<()> {
        let keys: Vec<_> = self
            .tasks
            .scan_prefix(prefix_of(name))
            .keys()
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Err(StoreError::NotFound {
                kind: "task",
                id: name.to_string(),
            });
        }
        let mut batch = super::kv::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.tasks.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::StoreError;
    use crate::store::testing;

    /// Two updates of the same version: the second finds its version taken
    /// and is told to read again (Stale), nothing is overwritten.
    #[test]
    fn a_concurrent_update_of_the_same_version_is_stale() {
        for (_engine, store) in testing::stores() {
            let mut task = crate::domain::Task {
                name: "t".into(),
                version: 1,
                description: "ours".into(),
                spec: crate::store::testing::job().spec,
                created_at: crate::domain::Millis(1),
                updated_at: crate::domain::Millis(1),
                resources: Vec::new(),
                retries: 0,
                requires: String::new(),
            };
            store.create_task(&task).unwrap();
            task.version = 2;
            store.add_task_version(&task).unwrap();
            let mut other = task.clone();
            other.description = "theirs".into();
            match store.add_task_version(&other) {
                Err(StoreError::Stale(m)) => assert!(m.contains("read it again"), "{m}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                store.get_task("t", Some(2)).unwrap().description,
                task.description
            );
        }
    }
}
