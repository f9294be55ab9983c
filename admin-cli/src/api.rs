//! The connection to the puppeteer: generated clients over one channel, and
//! the deadline and error mapping every call goes through.

use std::future::Future;
use std::time::Duration;

use geppetto_proto::client::{Channel, Endpoint, TokenSlot};
use geppetto_proto::v1::artifacts_client::ArtifactsClient;
use geppetto_proto::v1::audit_client::AuditClient;
use geppetto_proto::v1::enroll_tokens_client::EnrollTokensClient;
use geppetto_proto::v1::events_client::EventsClient;
use geppetto_proto::v1::groups_client::GroupsClient;
use geppetto_proto::v1::jobs_client::JobsClient;
use geppetto_proto::v1::notifications_client::NotificationsClient;
use geppetto_proto::v1::puppets_client::PuppetsClient;
use geppetto_proto::v1::resources_client::ResourcesClient;
use geppetto_proto::v1::runs_client::RunsClient;
use geppetto_proto::v1::server_client::ServerClient;
use geppetto_proto::v1::tasks_client::TasksClient;
use geppetto_proto::v1::tokens_client::TokensClient;
use geppetto_proto::v1::users_client::UsersClient;
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::error::{Error, ErrorContext};

/// Deadline of every unary call, and of opening a stream.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected (lazily: nothing is dialled before the first call) client.
#[derive(Debug, Clone)]
pub struct Api {
    channel: Channel,
    context: ErrorContext,
    /// The CA file the puppeteer is checked against, if not the system's.
    ca: Option<std::path::PathBuf>,
}

impl Api {
    pub fn connect(settings: &Settings) -> Result<Self, Error> {
        let token = settings.token.as_ref().ok_or_else(|| {
            Error::Config(
                "no API token: give --token or --token-file, set GEPPETTO_TOKEN, \
                 or put `token` in the config file"
                    .into(),
            )
        })?;
        let slot = TokenSlot::default();
        slot.set(Some(secrecy::ExposeSecret::expose_secret(token)))?;
        let endpoint = Endpoint {
            url: settings.server.clone(),
            ca_file: settings.ca.clone(),
            transport: settings.transport,
        };
        let channel = Channel::new(&endpoint, slot)?;
        Ok(Api {
            channel,
            context: ErrorContext {
                url: settings.server.clone(),
                has_ca: settings.ca.is_some(),
            },
            ca: settings.ca.clone(),
        })
    }

    /// The CA file given (`--ca`), if any.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// The puppeteer's URL, for messages.
    pub fn url(&self) -> &str {
        &self.context.url
    }

    pub fn puppets(&self) -> PuppetsClient<Channel> {
        PuppetsClient::new(self.channel.clone())
    }

    pub fn enroll_tokens(&self) -> EnrollTokensClient<Channel> {
        EnrollTokensClient::new(self.channel.clone())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn jobs(&self) -> JobsClient<Channel> {
        JobsClient::new(self.channel.clone())
    }

    /// Logs are read gzip-compressed when the puppeteer offers it.
    pub fn runs(&self) -> RunsClient<Channel> {
        RunsClient::new(self.channel.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    }

    pub fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel.clone())
    }

    pub fn tokens(&self) -> TokensClient<Channel> {
        TokensClient::new(self.channel.clone())
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
    }

    pub fn resources(&self) -> ResourcesClient<Channel> {
        ResourcesClient::new(self.channel.clone())
    }

    pub fn groups(&self) -> GroupsClient<Channel> {
        GroupsClient::new(self.channel.clone())
    }

    pub fn notifications(&self) -> NotificationsClient<Channel> {
        NotificationsClient::new(self.channel.clone())
    }

    pub fn artifacts(&self) -> ArtifactsClient<Channel> {
        ArtifactsClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    pub fn server(&self) -> ServerClient<Channel> {
        ServerClient::new(self.channel.clone())
    }

    /// Awaits a unary call (or the opening of a stream) within
    /// [`CALL_TIMEOUT`], mapping its failure to a readable error.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.error(status)),
            Err(_) => Err(Error::Timeout {
                url: self.context.url.clone(),
                after: CALL_TIMEOUT,
            }),
        }
    }

    pub fn error(&self, status: Status) -> Error {
        self.context.status(status)
    }
}

/// Pages through a listing: `page` asks for the page at a token (empty:
/// the first) and gives its items and the next token (empty: none left).
/// Stops once `want` items were received, or at the last page.
pub async fn pages<T, Fut>(
    want: Option<usize>,
    page: impl FnMut(String) -> Fut,
) -> Result<Vec<T>, Error>
where
    Fut: Future<Output = Result<(Vec<T>, String), Error>>,
{
    Ok(pages_at_most(want, usize::MAX, page).await?.0)
}

/// [`pages`], reading at most `max_pages` pages; says whether the listing
/// went on past them.
pub async fn pages_at_most<T, Fut>(
    want: Option<usize>,
    max_pages: usize,
    page: impl FnMut(String) -> Fut,
) -> Result<(Vec<T>, bool), Error>
where
    Fut: Future<Output = Result<(Vec<T>, String), Error>>,
{
    let mut items = Vec::new();
    let more = each_page(max_pages, page, |mut got| {
        items.append(&mut got);
        match want {
            Some(want) if items.len() >= want => {
                items.truncate(want);
                false
            }
            _ => true,
        }
    })
    .await?;
    Ok((items, more))
}

/// Reads pages one after the other, at most `max_pages`, handing each to
/// `take` (which returns whether to go on) and keeping none: what a listing
/// printed as it comes uses. Says whether the listing went on past them.
pub async fn each_page<T, Fut>(
    max_pages: usize,
    mut page: impl FnMut(String) -> Fut,
    mut take: impl FnMut(Vec<T>) -> bool,
) -> Result<bool, Error>
where
    Fut: Future<Output = Result<(Vec<T>, String), Error>>,
{
    let mut token = String::new();
    for _ in 0..max_pages {
        let (got, next) = page(token.clone()).await?;
        if !take(got) || next.is_empty() {
            return Ok(false);
        }
        if next == token {
            return Err(Error::Api(
                "the puppeteer answered the same page twice; stopping".into(),
            ));
        }
        token = next;
    }
    Ok(true)
}

/// A request that tells the server our deadline too, so it can give up.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// How often a broken stream (watch, follow) is reopened before giving up.
const STREAM_RETRIES: u32 = 5;
const STREAM_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Reopens a broken stream a few times: links drop, and a watch or a
/// follow resumes where it stopped. The budget is refilled by every message
/// received, so only a link that stays down ends the command.
#[derive(Debug)]
pub struct Reconnect {
    left: u32,
    tries: u32,
    /// The wait before the first reopening; `None`: always
    /// [`STREAM_RETRY_DELAY`].
    backoff: Option<Backoff>,
}

/// Waits that double after each failed reopening, up to a ceiling.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            left: STREAM_RETRIES,
            tries: STREAM_RETRIES,
            backoff: None,
        }
    }
}

impl Reconnect {
    /// For long follows (`events --follow`): up to `tries` reopenings in a
    /// row, waiting `first`, then twice as long each time, at most `max`.
    pub fn with_backoff(tries: u32, first: Duration, max: Duration) -> Self {
        Reconnect {
            left: tries,
            tries,
            backoff: Some(Backoff { first, max }),
        }
    }

    /// Something arrived: the link works again.
    pub fn reset(&mut self) {
        self.left = self.tries;
    }

    /// The wait before the next reopening.
    pub fn delay(&self) -> Duration {
        match self.backoff {
            None => STREAM_RETRY_DELAY,
            Some(Backoff { first, max }) => {
                let failed = self.tries.saturating_sub(self.left).min(16);
                first.saturating_mul(1 << failed).min(max)
            }
        }
    }

    /// Whether to reopen after `error`; waits a little first if so.
    pub async fn retry(&mut self, error: &Error) -> bool {
        let transient = matches!(error, Error::Unreachable { .. } | Error::Timeout { .. });
        if !transient || self.left == 0 {
            return false;
        }
        let delay = self.delay();
        self.left -= 1;
        eprintln!("warning: {error}; reconnecting");
        tokio::time::sleep(delay).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut r = Reconnect::with_backoff(10, Duration::from_secs(1), Duration::from_secs(5));
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.push(r.delay().as_secs());
            r.left -= 1;
        }
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        r.reset();
        assert_eq!(r.delay(), Duration::from_secs(1));
        assert_eq!(Reconnect::default().delay(), STREAM_RETRY_DELAY);
    }
}
