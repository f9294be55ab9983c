//! Name and label rules, and the error every validation of outside input
//! returns.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// A validation failure of outside input, with a message that says what is
/// wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// `s` as an error may quote it: whole if short, else its first characters
/// and its size (a refused value is never echoed whole).
pub fn shown(s: &str) -> String {
    const QUOTED: usize = 64;
    if s.len() <= QUOTED {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(QUOTED / 2).collect();
    format!("{head:?}... ({} bytes)", s.len())
}

fn check_name(kind: &str, s: &str, extra: &[char]) -> Result<(), Invalid> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c);
    let extra_list: String = extra.iter().map(|c| format!(" '{c}'")).collect();
    if s.is_empty() {
        return Err(Invalid(format!("{kind} name is empty")));
    }
    if s.len() > 63 {
        return Err(Invalid(format!(
            "{kind} name {} is {} characters long; at most 63 are allowed",
            shown(s),
            s.len()
        )));
    }
    if let Some((i, c)) = s.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(Invalid(format!(
            "{kind} name {s:?} has {c:?} at character {}: use lowercase letters, digits and{extra_list}",
            i + 1
        )));
    }
    let first = s.chars().next().expect("not empty");
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(Invalid(format!(
            "{kind} name {s:?} must start with a lowercase letter or a digit"
        )));
    }
    Ok(())
}

/// Checks a puppet name: 1-63 of `[a-z0-9.-]`, starting with a letter or digit.
pub fn check_puppet_name(s: &str) -> Result<(), Invalid> {
    check_name("puppet", s, &['-', '.'])
}

/// Checks a task name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_task_name(s: &str) -> Result<(), Invalid> {
    check_name("task", s, &['-', '.', '_'])
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Checks a label key: 1-63 of `[A-Za-z0-9._/-]`.
pub fn check_label_key(k: &str) -> Result<(), Invalid> {
    if k.is_empty() || k.len() > 63 {
        return Err(Invalid(format!(
            "label key {} must be 1 to 63 characters long",
            shown(k)
        )));
    }
    if let Some(c) = k.chars().find(|&c| !label_char(c)) {
        return Err(Invalid(format!(
            "label key {k:?} has {c:?}: use letters, digits, '.', '_', '-' and '/'"
        )));
    }
    Ok(())
}

/// Checks a label value: 0-63 of `[A-Za-z0-9._/-]`.
pub fn check_label_value(k: &str, v: &str) -> Result<(), Invalid> {
    if v.len() > 63 {
        return Err(Invalid(format!(
            "label {}: value is longer than 63 characters",
            shown(k)
        )));
    }
    if let Some(c) = v.chars().find(|&c| !label_char(c)) {
        return Err(Invalid(format!(
            "label {k}: value {v:?} has {c:?}: use letters, digits, '.', '_', '-' and '/'"
        )));
    }
    Ok(())
}

pub fn check_labels(labels: &Labels) -> Result<(), Invalid> {
    if labels.len() > 64 {
        return Err(Invalid("at most 64 labels are allowed".into()));
    }
    for (k, v) in labels {
        check_label_key(k)?;
        check_label_value(k, v)?;
    }
    Ok(())
}

/// Checks a resource name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_resource_name(s: &str) -> Result<(), Invalid> {
    check_name("resource", s, &['-', '.', '_'])
}

/// Checks a group name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_group_name(s: &str) -> Result<(), Invalid> {
    check_name("group", s, &['-', '.', '_'])
}

/// Checks a user name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_user_name(s: &str) -> Result<(), Invalid> {
    check_name("user", s, &['-', '.', '_'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_position() {
        assert!(check_puppet_name("web-01.lyon").is_ok());
        assert!(check_puppet_name("").unwrap_err().0.contains("empty"));
        let err = check_puppet_name("web_01").unwrap_err().0;
        assert!(err.contains("character 4"), "{err}");
        assert!(check_puppet_name("-web").is_err());
        assert!(check_puppet_name(&"a".repeat(64)).is_err());
        assert!(check_task_name("apt_upgrade").is_ok());
        assert!(check_task_name("Apt").is_err());
    }
}
