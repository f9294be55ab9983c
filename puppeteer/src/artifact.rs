//! Artifacts as the domain sees them: files that tasks bring to puppets,
//! stored once per content (SHA-256) and published under names.
//!
//! A name points at one content at a time; a task version pins the content
//! its names had when it was made (an [`ArtifactRef`]), so re-uploading a name
//! never changes what an existing task version runs with.

use serde::{Deserialize, Serialize};

use crate::domain::{ArtifactRef, Invalid, Millis};

/// The largest chunk of an upload.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// The largest artifact accepted (64 GiB): a bigger size is certainly a mistake.
pub const MAX_SIZE: u64 = 64 << 30;
/// The prefix of every artifact's environment variable.
pub const ENV_PREFIX: &str = "GEPPETTO_ARTIFACT_";

/// A published artifact: a name and the content it points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    pub created_at: Millis,
    /// The user who uploaded it.
    pub uploaded_by: String,
}

/// An upload in progress: what the server holds durably so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// Bytes written and synced to the partial file: the client sends from here.
    pub committed: u64,
    pub started_at: Millis,
    pub started_by: String,
}

impl Upload {
    /// Whether this upload is the one a `BeginUpload` of these values resumes.
    pub fn resumes(&self, name: &str, sha256: &str, size: u64) -> bool {
        self.name == name && self.sha256 == sha256 && self.size == size
    }
}

/// Checks an artifact name: 1-128 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn check_name(s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 128 {
        return Err(Invalid(format!(
            "artifact name {s:?} must be 1 to 128 characters long"
        )));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Invalid(format!(
            "artifact name {s:?} must start with a letter or a digit"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Invalid(format!(
            "artifact name {s:?} contains {c:?}; allowed are letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks a SHA-256 as lowercase hex (64 characters).
pub fn check_sha256(s: &str) -> Result<(), Invalid> {
    if s.len() != 64
        || !s
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(Invalid(format!(
            "{s:?} is not a SHA-256: give 64 lowercase hexadecimal characters"
        )));
    }
    Ok(())
}

/// Checks the size announced for an upload.
pub fn check_size(size: u64) -> Result<(), Invalid> {
    if size > MAX_SIZE {
        return Err(Invalid(format!(
            "an artifact of {size} bytes is larger than the {MAX_SIZE} bytes allowed"
        )));
    }
    Ok(())
}

/// The environment variable that holds an artifact's path in a run:
/// `GEPPETTO_ARTIFACT_` and the name uppercased, every character other than a
/// letter or a digit turned into `_` ("patch.tar.gz" gives
/// `GEPPETTO_ARTIFACT_PATCH_TAR_GZ`).
pub fn env_name(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_PREFIX}{tail}")
}

/// Pins names to the content `lookup` finds for them now. Two names that
/// give the same environment variable ("a.b" and "a-b") are refused.
pub fn pin<E>(
    names: &[String],
    mut lookup: impl FnMut(&str) -> Result<Artifact, E>,
) -> Result<Vec<ArtifactRef>, PinError<E>> {
    let mut refs: Vec<ArtifactRef> = Vec::with_capacity(names.len());
    for name in names {
        check_name(name).map_err(PinError::Invalid)?;
        let env = env_name(name);
        if let Some(other) = refs.iter().find(|r| r.env == env) {
            return Err(PinError::Invalid(Invalid(if other.name == *name {
                format!("artifact {name} is named twice")
            } else {
                format!(
                    "artifacts {} and {name} would both be given in {env}: rename one of them",
                    other.name
                )
            })));
        }
        let artifact = lookup(name).map_err(PinError::Lookup)?;
        refs.push(ArtifactRef {
            name: name.clone(),
            sha256: artifact.sha256,
            size: artifact.size,
            env,
        });
    }
    Ok(refs)
}

/// Checks that no two refs share an environment variable.
pub fn check_refs(refs: &[ArtifactRef]) -> Result<(), Invalid> {
    for (i, r) in refs.iter().enumerate() {
        if let Some(other) = refs[..i].iter().find(|o| o.env == r.env) {
            return Err(Invalid(format!(
                "artifacts {} and {} would both be given in {}: rename one of them",
                other.name, r.name, r.env
            )));
        }
    }
    Ok(())
}

/// Why names could not be pinned.
#[derive(Debug)]
pub enum PinError<E> {
    Invalid(Invalid),
    Lookup(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Artifact {
        Artifact {
            name: name.into(),
            sha256: "ab".repeat(32),
            size: 3,
            created_at: Millis(0),
            uploaded_by: "admin".into(),
        }
    }

    #[test]
    fn env_names_are_uppercase_with_underscores() {
        assert_eq!(env_name("patch.tar.gz"), "GEPPETTO_ARTIFACT_PATCH_TAR_GZ");
        assert_eq!(env_name("My-Tool_2"), "GEPPETTO_ARTIFACT_MY_TOOL_2");
        assert_eq!(env_name("x"), "GEPPETTO_ARTIFACT_X");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("patch-1.2.tar.gz").is_ok());
        assert!(check_name("A_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("a/b").unwrap_err().0.contains("'/'"));
        assert!(check_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn sha256_must_be_lowercase_hex() {
        assert!(check_sha256(&"0f".repeat(32)).is_ok());
        assert!(check_sha256(&"0F".repeat(32)).is_err());
        assert!(check_sha256("abc").is_err());
    }

    #[test]
    fn pinning_resolves_and_refuses_colliding_env_names() {
        let names = vec!["a.b".to_string(), "c".to_string()];
        let refs = pin(&names, |n| Ok::<_, ()>(artifact(n))).unwrap();
        assert_eq!(refs[0].env, "GEPPETTO_ARTIFACT_A_B");
        assert_eq!(refs[1].size, 3);
        let clash = vec!["a.b".to_string(), "a-b".to_string()];
        match pin(&clash, |n| Ok::<_, ()>(artifact(n))) {
            Err(PinError::Invalid(e)) => assert!(e.0.contains("GEPPETTO_ARTIFACT_A_B"), "{e}"),
            other => panic!("expected a clash, got {other:?}"),
        }
        let twice = vec!["c".to_string(), "c".to_string()];
        assert!(matches!(
            pin(&twice, |n| Ok::<_, ()>(artifact(n))),
            Err(PinError::Invalid(_))
        ));
        assert!(matches!(
            pin(&names, |_| Err::<Artifact, _>("missing")),
            Err(PinError::Lookup("missing"))
        ));
    }
}
