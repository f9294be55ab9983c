//! Which puppet versions this puppeteer serves (see `puppet.proto`): its
//! own and older ones down to [`OLDEST_PUPPET`]. Versions are `MAJOR.MINOR.PATCH`
//! (anything after a `-` or `+` is ignored in comparisons).

use std::cmp::Ordering;

/// The oldest puppet version this puppeteer serves.
pub const OLDEST_PUPPET: &str = "0.1.0";

/// This puppeteer's version.
pub const OWN: &str = env!("CARGO_PKG_VERSION");

/// `MAJOR.MINOR.PATCH` as numbers; `None` if it is not one.
pub fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// Compares two versions; `None` if either is not one.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

/// Why a puppet of `version` is not served, if it is not: older than
/// [`OLDEST_PUPPET`]. An unknown or unparsable version is served (a puppet
/// that never said is given the benefit of the doubt).
pub fn refuse(version: &str) -> Option<String> {
    match compare(version, OLDEST_PUPPET) {
        Some(Ordering::Less) => Some(format!(
            "this puppet's version {version} is older than this puppeteer ({OWN}) serves \
             (puppets {OLDEST_PUPPET} or later): install a newer puppet on that machine \
             (README, \"Installing puppets\")"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_their_numbers() {
        assert_eq!(parse("0.1.0"), Some((0, 1, 0)));
        assert_eq!(parse("1.10.2-rc1"), Some((1, 10, 2)));
        assert_eq!(parse("1.2"), None);
        assert_eq!(parse("1.2.3.4"), None);
        assert_eq!(parse(""), None);
        assert_eq!(compare("0.10.0", "0.9.9"), Some(Ordering::Greater));
        assert_eq!(compare("0.1.0", "0.1.0+build7"), Some(Ordering::Equal));
        assert!(refuse("0.0.9").unwrap().contains("older than"));
        assert_eq!(refuse(OLDEST_PUPPET), None);
        assert_eq!(refuse("9.0.0"), None);
        assert_eq!(refuse(""), None);
        assert_eq!(refuse("nonsense"), None);
    }
}
