//! Ids that carry their kind (`job-…`, `run-…`, `enr-…`) and secrets.

use rand::Rng;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn random_chars(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new id: `kind-` and 12 random characters (60 bits).
pub fn new_id(kind: &str) -> String {
    format!("{kind}-{}", random_chars(12))
}

/// A new secret: `prefix_` and 40 random characters (200 bits).
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}_{}", random_chars(40))
}

/// The hash under which a secret is stored; the secret itself never is.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks that `id` has the `kind-` prefix, with a message that says which
/// kind of id was given instead.
pub fn check_kind(kind: &str, id: &str) -> Result<(), String> {
    let prefix = format!("{kind}-");
    if id.is_empty() {
        return Err(format!("a {kind} id is required ({kind}-…)"));
    }
    if !id.starts_with(&prefix) || id.len() == prefix.len() {
        let given = id.split('-').next().unwrap_or("");
        return Err(match given {
            "job" | "run" | "enr" => {
                format!("{id:?} is a {given} id, not a {kind} id ({kind}-…)")
            }
            _ => format!("{id:?} is not a {kind} id: {kind} ids look like {kind}-…"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_kind() {
        let id = new_id("job");
        assert!(id.starts_with("job-") && id.len() == 16);
        assert!(check_kind("job", &id).is_ok());
        assert!(check_kind("run", &id).unwrap_err().contains("is a job id"));
        assert!(check_kind("run", "").is_err());
        assert!(check_kind("run", "run-").is_err());
        assert_ne!(hash_secret("a"), hash_secret("b"));
    }
}
