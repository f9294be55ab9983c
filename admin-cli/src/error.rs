//! The CLI's errors, and how gRPC statuses become one readable line.
//!
//! `main` prints an error as `error: <Display>` on stderr and exits with
//! [`Error::exit_code`]: 2 for usage errors (as clap does), 1 otherwise.

use std::time::Duration;

use geppetto_proto::client::ClientError;
use geppetto_proto::proxy::ProxyError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong in a way clap could not see.
    #[error("{0}")]
    Usage(String),
    /// The config file, the environment or a file named by them is wrong.
    #[error("{0}")]
    Config(String),
    /// A local file or value the command needs is wrong (a script file).
    #[error("{0}")]
    Input(String),
    /// The channel could not be built (bad URL, bad CA file, bad token).
    #[error("{0}")]
    Client(#[from] ClientError),
    /// No connection could be made, or it broke.
    #[error("cannot reach the puppeteer at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The HTTP proxy on the way (HTTPS_PROXY) could not be reached or
    /// refused the tunnel; the message names the proxy, not the puppeteer.
    #[error("{0}")]
    Proxy(String),
    #[error("no answer from the puppeteer at {url} within {}", humantime::format_duration(*.after))]
    Timeout { url: String, after: Duration },
    /// The puppeteer answered with an error status.
    #[error("{0}")]
    Api(String),
    /// The command worked but what it watched did not succeed (a job with
    /// failed runs).
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A closed stdout (`geppetto logs RUN | head`) is not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// What the error mapping needs to know about the connection.
#[derive(Debug, Clone)]
pub struct ErrorContext {
    pub url: String,
    pub has_ca: bool,
}

impl ErrorContext {
    /// Turns a status into an error that says what happened and what to do.
    pub fn status(&self, status: Status) -> Error {
        // A status made on this side from a transport failure carries its
        // cause as source; one that came from the puppeteer does not.
        if let Some(source) = std::error::Error::source(&status) {
            if let Some(proxy) = source.downcast_ref::<ProxyError>() {
                return Error::Proxy(proxy.to_string());
            }
            return self.unreachable(&error_chain(source));
        }
        let message = status.message().trim();
        let detail = |what: &str| {
            if message.is_empty() {
                what.to_string()
            } else {
                format!("{what}: {message}")
            }
        };
        Error::Api(match status.code() {
            Code::NotFound => detail("not found"),
            Code::AlreadyExists => detail("already exists"),
            Code::InvalidArgument => detail("invalid request"),
            Code::FailedPrecondition => detail("refused"),
            Code::Aborted => detail("conflict"),
            Code::OutOfRange => detail("out of range"),
            Code::PermissionDenied => {
                format!(
                    "{} (the token's role does not allow this)",
                    detail("permission denied")
                )
            }
            Code::Unauthenticated => format!(
                "{} (check --token / --token-file / GEPPETTO_TOKEN)",
                detail("not authenticated")
            ),
            Code::Unavailable => {
                return self.unreachable(if message.is_empty() {
                    "unavailable"
                } else {
                    message
                });
            }
            Code::DeadlineExceeded => detail("deadline exceeded"),
            Code::ResourceExhausted => detail("too many requests"),
            Code::Unimplemented => detail(
                "the puppeteer does not know this call (is it an older version than this CLI?)",
            ),
            Code::Internal => detail("internal error in the puppeteer"),
            _ => detail(&format!("{:?}", status.code()).to_lowercase()),
        })
    }

    fn unreachable(&self, cause: &str) -> Error {
        let mut cause = cause.to_string();
        // Plain HTTP to the TLS port: the connection breaks at once, with
        // nothing that says why.
        if let Some(rest) = self.url.strip_prefix("http://")
            && !cause.to_lowercase().contains("refused")
        {
            cause.push_str(&format!(
                " (the puppeteer speaks TLS unless started with --insecure-plaintext: \
                 try https://{rest})"
            ));
        }
        if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            cause.push_str(if self.has_ca {
                " (is --ca the CA that signed the puppeteer's certificate?)"
            } else {
                " (give the puppeteer's CA certificate with --ca or GEPPETTO_CA)"
            });
        }
        Error::Unreachable {
            url: self.url.clone(),
            cause,
        }
    }
}

/// The innermost cause of an error: hyper and tonic wrap the one that says
/// what happened ("Connection refused") in ones that say where it happened
/// ("client error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext {
            url: "https://p:7443".into(),
            has_ca: false,
        }
    }

    #[test]
    fn server_statuses_read_well() {
        let e = ctx().status(Status::not_found("no task named \"foo\""));
        assert_eq!(e.to_string(), "not found: no task named \"foo\"");
        assert_eq!(e.exit_code(), 1);
        let e = ctx().status(Status::unauthenticated("bad token"));
        assert!(e.to_string().contains("GEPPETTO_TOKEN"), "{e}");
        let e = ctx().status(Status::unavailable("shutting down"));
        assert_eq!(
            e.to_string(),
            "cannot reach the puppeteer at https://p:7443: shutting down"
        );
    }

    #[test]
    fn proxy_failures_name_the_proxy() {
        let proxy = ProxyError::Unreachable {
            proxy: "http://px:3128 (from HTTPS_PROXY)".into(),
            cause: "Connection refused".into(),
        };
        let mut status = Status::unavailable(proxy.to_string());
        status.set_source(std::sync::Arc::new(proxy));
        assert_eq!(
            ctx().status(status).to_string(),
            "cannot reach the proxy at http://px:3128 (from HTTPS_PROXY): Connection refused"
        );
    }

    #[test]
    fn plain_http_to_the_tls_port_suggests_https() {
        let plain = ErrorContext {
            url: "http://p:7443".into(),
            has_ca: false,
        };
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let text = plain.status(Status::from_error(Box::new(io))).to_string();
        assert!(text.contains("try https://p:7443"), "{text}");
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let text = plain
            .status(Status::from_error(Box::new(refused)))
            .to_string();
        assert!(!text.contains("https"), "{text}");
    }

    #[test]
    fn transport_failures_name_the_server_and_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = ctx().status(Status::from_error(Box::new(io)));
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach the puppeteer at https://p:7443: "),
            "{text}"
        );
        assert!(text.contains("Connection refused"), "{text}");
    }
}
