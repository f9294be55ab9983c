//! Units every binary reads the same way: sizes.

/// A size refused, with how sizes are written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {text:?}: {why}; write a number of bytes, or a number and a unit in any case: \
     KiB, MiB, GiB, TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000), e.g. 64MiB or 10GiB"
)]
pub struct SizeError {
    text: String,
    why: &'static str,
}

/// Parses a size, the one rule for every size the puppeteer, the puppet and
/// the CLI take: a number of bytes (`4096`), or a number and a unit,
/// case-insensitive, with or without a space, as the `bytesize` crate reads
/// them (`KiB`, `Ki`... powers of 1024; `kB`, `MB`... powers of 1000; a
/// fraction needs a unit: `1.5GiB`). Two spellings bytesize takes are
/// refused: a lone letter (`64m`: a mebibyte or a megabyte? earlier
/// versions read MiB), and a size too large to count in 64 bits (bytesize
/// would cap it silently).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let refused = |why| SizeError {
        text: text.chars().take(64).collect(),
        why,
    };
    let trimmed = text.trim();
    let unit = trimmed.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ');
    if unit.len() == 1 && !unit.eq_ignore_ascii_case("b") {
        return Err(refused("a lone letter is ambiguous"));
    }
    let bytes = trimmed
        .parse::<bytesize::ByteSize>()
        .map_err(|_| refused("not a size"))?
        .as_u64();
    if bytes == u64::MAX {
        return Err(refused("too large"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_either_family_and_any_case() {
        for (text, bytes) in [
            ("4096", 4096),
            ("2GiB", 2 << 30),
            ("2gib", 2 << 30),
            (" 1.5 MiB ", 1_572_864),
            ("100MB", 100_000_000),
            ("64 kb", 64_000),
            ("10Ki", 10 << 10),
            ("512B", 512),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn ambiguous_huge_and_malformed_sizes_are_refused() {
        for (text, why) in [
            ("64m", "lone letter"),
            ("1K", "lone letter"),
            ("99999999999999999999 EiB", "too large"),
            ("2 gigs", "not a size"),
            ("GiB", "not a size"),
            ("", "not a size"),
        ] {
            let e = parse_size(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("e.g. 64MiB"), "{e}");
        }
    }
}
