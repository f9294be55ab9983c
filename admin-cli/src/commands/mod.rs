//! One module per command group. Each command takes the connection, its
//! parsed arguments and the output format, prints its result on stdout and
//! returns an [`Error`](crate::error::Error) for `main` to report.

pub mod artifacts;
pub mod audit;
pub mod completions;
pub mod enroll_tokens;
pub mod events;
pub mod groups;
pub mod jobs;
pub mod logs;
pub mod notifications;
pub mod puppet_releases;
pub mod puppets;
pub mod resources;
pub mod runs;
pub mod status;
pub mod tasks;
pub mod tokens;
pub mod users;
mod watch;

use crate::api::Api;
use crate::cli::{Command, Format};
use crate::error::Error;

/// Runs one command against the puppeteer.
pub async fn dispatch(api: &Api, command: Command, format: Format) -> Result<(), Error> {
    match command {
        Command::Puppets(c) => puppets::run(api, c, format).await,
        Command::EnrollTokens(c) => enroll_tokens::run(api, c, format).await,
        Command::PuppetReleases(c) => puppet_releases::run(api, c, format).await,
        Command::Users(c) => users::run(api, c, format).await,
        Command::Whoami => users::whoami(api, format).await,
        Command::Tokens(c) => tokens::run(api, c, format).await,
        Command::Audit(args) => audit::run(api, args, format).await,
        Command::Tasks(c) => tasks::run(api, c, format).await,
        Command::Jobs(c) => jobs::run(api, c, format).await,
        Command::Runs(c) => runs::run(api, c, format).await,
        Command::Logs(args) => logs::run(api, args).await,
        Command::Resources(c) => resources::run(api, c, format).await,
        Command::Artifacts(c) => artifacts::run(api, c, format).await,
        Command::Groups(c) => groups::run(api, c, format).await,
        Command::Notifications(c) => notifications::run(api, c, format).await,
        Command::Events(args) => events::run(api, args, format).await,
        Command::Status => status::run(api, format).await,
        Command::Completions { .. } | Command::Man => {
            local(&command).unwrap_or_else(|| unreachable!("a local command"))
        }
    }
}

/// Runs a command that needs no puppeteer (completions, man page); `None`
/// for the others.
pub fn local(command: &Command) -> Option<Result<(), Error>> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => Some(completions::completions(*shell, &mut out)),
        Command::Man => Some(completions::man(&mut out)),
        _ => None,
    }
}
