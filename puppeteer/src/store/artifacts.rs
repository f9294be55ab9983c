//! Artifact metadata: published names and uploads in progress. The content
//! itself is in files (see [`crate::blobs`]); this module only says which
//! names point at which content, and how far each upload has come.
//!
//! | tree        | key       | value          |
//! |-------------|-----------|----------------|
//! | `artifacts` | name      | [`Artifact`]   |
//! | `uploads`   | upload id | [`Upload`]     |

use crate::store::Transactional;

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::artifact::{Artifact, Upload};
use crate::domain::Task;

fn no_upload(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "upload",
        id: id.to_string(),
    }
}

impl Store {
    /// The upload a `BeginUpload` of these values resumes, if any.
    /// `user`'s unfinished upload of this content under this name, and how
    /// many unfinished uploads `user` has.
    pub fn find_upload(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        user: &str,
    ) -> Result<(Option<Upload>, usize)> {
        let (mut found, mut open) = (None, 0);
        for kv in self.uploads.iter() {
            let (k, v) = kv?;
            let upload: Upload = decode(&k, &v)?;
            if upload.started_by != user {
                continue;
            }
            open += 1;
            if found.is_none() && upload.resumes(name, sha256, size) {
                found = Some(upload);
            }
        }
        Ok((found, open))
    }

    pub fn put_upload(&self, upload: &Upload) -> Result<()> {
        self.uploads.insert(upload.id.as_bytes(), encode(upload))?;
        Ok(())
    }

    pub fn get_upload(&self, id: &str) -> Result<Upload> {
        match self.uploads.get(id.as_bytes())? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(no_upload(id)),
        }
    }

    /// Moves an upload's committed length from `from` to `to`; refused if
    /// another call moved it meanwhile.
    pub fn advance_upload(&self, id: &str, from: u64, to: u64) -> Result<Upload> {
        let upload = self.uploads.transaction(|uploads| {
            let Some(v) = uploads.get(id.as_bytes())? else {
                return abort(no_upload(id));
            };
            let mut upload: Upload = match decode(id.as_bytes(), &v) {
                Ok(u) => u,
                Err(e) => return abort(e),
            };
            if upload.committed != from {
                return abort(StoreError::Conflict(format!(
                    "upload {id} is at byte {}, not {from}: send from there",
                    upload.committed
                )));
            }
            upload.committed = to;
            uploads.insert(id.as_bytes(), encode(&upload))?;
            Ok(upload)
        })?;
        Ok(upload)
    }

    /// Every upload in progress.
    pub fn uploads(&self) -> Result<Vec<Upload>> {
        let mut uploads = Vec::new();
        for kv in self.uploads.iter() {
            let (k, v) = kv?;
            uploads.push(decode(&k, &v)?);
        }
        Ok(uploads)
    }

    pub fn remove_upload(&self, id: &str) -> Result<()> {
        self.uploads.remove(id.as_bytes())?;
        Ok(())
    }

    /// Ends an upload by publishing its artifact under its name, in one
    /// transaction; returns what the name pointed at before.
    pub fn publish_artifact(
        &self,
        upload_id: &str,
        artifact: &Artifact,
    ) -> Result<Option<Artifact>> {
        let previous = (&self.uploads, &self.artifacts).transaction(|(uploads, artifacts)| {
            if uploads.remove(upload_id.as_bytes())?.is_none() {
                return abort(no_upload(upload_id));
            }
            let previous = artifacts.insert(artifact.name.as_bytes(), encode(artifact))?;
            Ok(previous)
        })?;
        previous
            .map(|v| decode(artifact.name.as_bytes(), &v))
            .transpose()
    }

    pub fn get_artifact(&self, name: &str) -> Result<Artifact> {
        match self.artifacts.get(name.as_bytes())? {
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "artifact",
                id: name.to_string(),
            }),
        }
    }

    /// Every artifact, by name.
    pub fn list_artifacts(&self) -> Result<Vec<Artifact>> {
        self.artifacts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Removes a name; returns what it pointed at.
    pub fn remove_artifact(&self, name: &str) -> Result<Artifact> {
        match self.artifacts.remove(name.as_bytes())? {
            Some(v) => decode(name.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "artifact",
                id: name.to_string(),
            }),
        }
    }

    /// The content every version of a task pins.
    pub fn task_contents(&self, task: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.tasks.scan_prefix(super::keys::prefix_of(task)) {
            let (k, v) = kv?;
            let task: Task = decode(&k, &v)?;
            for a in task.spec.artifacts {
                if !out.contains(&a.sha256) {
                    out.push(a.sha256);
                }
            }
        }
        Ok(out)
    }

    /// Whether a name, or any version of any task, still pins this content.
    pub fn content_pinned(&self, sha256: &str) -> Result<bool> {
        for artifact in self.list_artifacts()? {
            if artifact.sha256 == sha256 {
                return Ok(true);
            }
        }
        for kv in self.tasks.iter() {
            let (k, v) = kv?;
            let task: Task = decode(&k, &v)?;
            if task.spec.artifacts.iter().any(|a| a.sha256 == sha256) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Millis;
    use crate::store::testing;

    fn upload(id: &str) -> Upload {
        Upload {
            id: id.into(),
            name: "patch".into(),
            sha256: "ab".repeat(32),
            size: 10,
            committed: 0,
            started_at: Millis(1),
            started_by: "admin".into(),
        }
    }

    #[test]
    fn uploads_advance_once_and_publish_in_one_step() {
        for (_engine, store) in testing::stores() {
            store.put_upload(&upload("upl-1")).unwrap();
            let (found, open) = store
                .find_upload("patch", &"ab".repeat(32), 10, "admin")
                .unwrap();
            assert_eq!((found.unwrap().id.as_str(), open), ("upl-1", 1));
            let (found, open) = store
                .find_upload("patch", &"ab".repeat(32), 11, "admin")
                .unwrap();
            assert_eq!((found, open), (None, 1));
            // Another user's upload is theirs alone.
            let (found, open) = store
                .find_upload("patch", &"ab".repeat(32), 10, "bob")
                .unwrap();
            assert_eq!((found, open), (None, 0));
            store.advance_upload("upl-1", 0, 4).unwrap();
            assert!(matches!(
                store.advance_upload("upl-1", 0, 4),
                Err(StoreError::Conflict(_))
            ));
            let artifact = Artifact {
                name: "patch".into(),
                sha256: "ab".repeat(32),
                size: 10,
                created_at: Millis(2),
                uploaded_by: "admin".into(),
            };
            assert_eq!(store.publish_artifact("upl-1", &artifact).unwrap(), None);
            assert!(matches!(
                store.get_upload("upl-1"),
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                store.publish_artifact("upl-1", &artifact),
                Err(StoreError::NotFound { .. })
            ));
            assert_eq!(store.get_artifact("patch").unwrap(), artifact);
            assert!(store.content_pinned(&"ab".repeat(32)).unwrap());
            store.remove_artifact("patch").unwrap();
            assert!(!store.content_pinned(&"ab".repeat(32)).unwrap());
            assert!(store.list_artifacts().unwrap().is_empty());
        }
    }
}
