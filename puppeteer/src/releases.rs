//! Puppet releases: the binaries an upgrade can install. A release is an
//! artifact named `puppet-VERSION-OS-ARCH` (`geppetto puppet-releases add`
//! uploads one; the build the puppeteer serves is added as one when first
//! needed). An upgrade task pins every binary of its version, one per
//! platform; each puppet fetches only its own platform's (see the puppet's
//! `upgrade` module).

use std::cmp::Ordering;

use crate::domain::Invalid;

/// The longest version accepted.
pub const MAX_VERSION_BYTES: usize = 64;

/// The artifact name of a release's binary for a platform.
pub fn artifact_name(version: &str, os: &str, arch: &str) -> String {
    format!("puppet-{version}-{os}-{arch}")
}

/// One binary of a release, as its artifact's name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub os: String,
    pub arch: String,
}

/// Checks a release version: `MAJOR.MINOR.PATCH`, optionally `-PRE` (no
/// `+BUILD`: artifact names have no `+`).
pub fn check_version(version: &str) -> Result<(), Invalid> {
    if version.is_empty() || version.len() > MAX_VERSION_BYTES {
        return Err(Invalid(format!(
            "a release version has 1 to {MAX_VERSION_BYTES} bytes"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
    if !version.chars().all(allowed) || crate::versions::parse(version).is_none() {
        return Err(Invalid(format!(
            "{} is not a release version: MAJOR.MINOR.PATCH, optionally -PRE, \
             of letters, digits, '.' and '-'",
            crate::domain::shown(version)
        )));
    }
    Ok(())
}

/// Checks an operating system or architecture name as Rust names them
/// (`linux`, `x86_64`, `aarch64`...).
pub fn check_platform_part(what: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{what} {} is not one: 1 to 32 of a-z, 0-9 and '_', as Rust names them \
             (linux; x86_64, aarch64, arm, riscv64...)",
            crate::domain::shown(value)
        )))
    }
}

/// The release an artifact name holds, if it names one.
pub fn parse_name(name: &str) -> Option<Release> {
    let rest = name.strip_prefix("puppet-")?;
    let mut parts = rest.rsplitn(3, '-');
    let arch = parts.next()?;
    let os = parts.next()?;
    let version = parts.next()?;
    check_version(version).ok()?;
    check_platform_part("os", os).ok()?;
    check_platform_part("arch", arch).ok()?;
    Some(Release {
        version: version.to_string(),
        os: os.to_string(),
        arch: arch.to_string(),
    })
}

/// Newest version first, then by platform.
pub fn newest_first(a: &Release, b: &Release) -> Ordering {
    crate::versions::compare(&b.version, &a.version)
        .unwrap_or(Ordering::Equal)
        .then_with(|| b.version.cmp(&a.version))
        .then_with(|| (&a.os, &a.arch).cmp(&(&b.os, &b.arch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_not_releases() {
        let name = artifact_name("0.2.0-rc1", "linux", "x86_64");
        assert_eq!(name, "puppet-0.2.0-rc1-linux-x86_64");
        assert_eq!(
            parse_name(&name),
            Some(Release {
                version: "0.2.0-rc1".into(),
                os: "linux".into(),
                arch: "x86_64".into()
            })
        );
        assert_eq!(
            parse_name("puppet-0.2.0-linux-aarch64").unwrap().arch,
            "aarch64"
        );
        for other in [
            "patch.tar.gz",
            "puppet-linux-x86_64",
            "puppet-0.2-linux-x86_64",
            "puppet-0.2.0-Linux-x86_64",
            "puppet-0.2.0-linux-",
            "puppets-0.2.0-linux-x86_64",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn versions_are_checked() {
        assert!(check_version("1.2.3").is_ok());
        assert!(check_version("1.2.3-beta.1").is_ok());
        assert!(check_version("1.2.3+build").is_err());
        assert!(check_version("").is_err());
        assert!(check_version("1.2").is_err());
        assert!(check_version(&"1".repeat(65)).is_err());
        assert!(check_platform_part("arch", "x86_64").is_ok());
        assert!(check_platform_part("arch", "x86-64").is_err());
    }

    #[test]
    fn releases_sort_newest_first() {
        let r = |v: &str, arch: &str| Release {
            version: v.into(),
            os: "linux".into(),
            arch: arch.into(),
        };
        let mut all = vec![
            r("0.9.0", "x86_64"),
            r("0.10.0", "x86_64"),
            r("0.10.0", "aarch64"),
        ];
        all.sort_by(newest_first);
        assert_eq!(
            all,
            vec![
                r("0.10.0", "aarch64"),
                r("0.10.0", "x86_64"),
                r("0.9.0", "x86_64")
            ]
        );
    }
}
