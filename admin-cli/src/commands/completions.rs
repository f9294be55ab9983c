//! `geppetto completions SHELL` and `geppetto man`: generated from the clap
//! definition, so they never lag behind it. Neither needs a puppeteer.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Error;

/// The completion script of `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), Error> {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    // Generated into memory: `clap_complete::generate` panics on a write
    // error (a closed pipe), a buffer cannot fail.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// The roff man page of the top command (its SUBCOMMANDS section names them
/// all; `geppetto COMMAND --help` details each).
pub fn man(out: &mut dyn Write) -> Result<(), Error> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    out.write_all(title_first(&page).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The page with its `.TH` header line first. The renderer puts a preamble
/// defining the apostrophe string (`.ie`/`.el` lines) before it; used only
/// later in the page, it can follow the header just as well, and tools that
/// look for the header on the first line (`file`, `whatis` builders) find it.
fn title_first(page: &str) -> String {
    let lines: Vec<&str> = page.lines().collect();
    let Some(th) = lines.iter().position(|l| l.starts_with(".TH")) else {
        return page.to_string();
    };
    let preamble_only = lines[..th]
        .iter()
        .all(|l| l.starts_with(".ie") || l.starts_with(".el"));
    if th == 0 || !preamble_only {
        return page.to_string();
    }
    let mut text = String::with_capacity(page.len());
    for line in std::iter::once(&lines[th])
        .chain(&lines[..th])
        .chain(&lines[th + 1..])
    {
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("geppetto"), "{shell}");
            for word in ["events", "status", "enroll-tokens", "--follow"] {
                assert!(text.contains(word), "{shell} lacks {word}");
            }
        }
    }

    #[test]
    fn man_page_is_roff() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(".TH geppetto 1"), "{text}");
        assert!(text.contains(".ds Aq"), "the preamble is kept: {text}");
        assert!(text.contains("status"), "{text}");
    }

    #[test]
    fn title_moves_before_the_preamble_only() {
        assert_eq!(
            title_first(".ie a\n.el b\n.TH x 1\n.SH NAME\n"),
            ".TH x 1\n.ie a\n.el b\n.SH NAME\n"
        );
        assert_eq!(title_first(".TH x 1\n.SH N\n"), ".TH x 1\n.SH N\n");
        assert_eq!(title_first(".SH N\n.TH x\n"), ".SH N\n.TH x\n");
        assert_eq!(title_first("no header"), "no header");
    }
}
