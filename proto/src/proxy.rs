//! HTTP CONNECT proxies between a client and the puppeteer.
//!
//! Sites that manage machines remotely often let them out only through an
//! HTTP proxy. The client then opens a TCP connection to the proxy, asks it
//! with `CONNECT host:port` for a tunnel to the puppeteer, and speaks TLS to
//! the puppeteer through that tunnel: the proxy sees the puppeteer's name and
//! a byte count, never the traffic.
//!
//! Which proxy, if any, comes from [`ProxyConfig`]: the conventional
//! environment (`HTTPS_PROXY`/`https_proxy`, then `ALL_PROXY`/`all_proxy`;
//! `HTTP_PROXY`/`http_proxy` for a plaintext `http://` puppeteer; hosts in
//! `NO_PROXY`/`no_proxy` bypass it, with curl's rules), an explicit URL that
//! overrides the environment, or none at all. A channel talks to a single
//! server, so the choice is made once, when it is built, and a malformed
//! proxy URL is an error then rather than a silent direct connection.
//!
//! Basic authentication travels as `http://user:password@host:port`. The
//! password is kept only as the encoded `Proxy-Authorization` header value,
//! marked sensitive, and never appears in a message, a `Debug` output or a log.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the proxy may take to answer a `CONNECT`.
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest proxy answer read before giving up on it.
const MAX_ANSWER: usize = 16 * 1024;

/// Where the proxy setting comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// The environment: `HTTPS_PROXY` and friends, minus `NO_PROXY`.
    #[default]
    FromEnv,
    /// This proxy, whatever the environment says.
    Url(ProxyUrl),
    /// No proxy, whatever the environment says.
    Direct,
}

/// A validated `http://[user:password@]host[:port]` proxy URL. `Debug`
/// never shows the credentials: they are only in `auth`, shown as
/// `Sensitive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `http://host:port`, without credentials.
    uri: Uri,
    /// `Basic ...`, marked sensitive.
    auth: Option<HeaderValue>,
    /// Where the URL came from (`HTTPS_PROXY`, `--proxy`), for messages.
    origin: String,
}

/// `http://host:port (from ORIGIN)`: what messages call the proxy.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or("?");
        write!(f, "http://{authority} (from {})", self.origin)
    }
}

impl ProxyUrl {
    /// Parses a proxy URL; `origin` names where it came from, for messages.
    /// A missing scheme means `http://`, a missing port 80.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid proxy URL in {origin}: {why}");
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let full = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        // The text is not quoted back: it may hold a password.
        let uri: Uri = full
            .parse()
            .map_err(|_| bad("write http://[user:password@]host:port"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "TLS to the proxy (https://) is not supported: write http://host:port \
                     (the tunnel through it to the puppeteer is TLS all the same)",
                ));
            }
            Some(other) => {
                return Err(bad(&format!(
                    "the scheme {other}:// is not supported: only HTTP CONNECT proxies (http://)"
                )));
            }
            None => return Err(bad("write http://[user:password@]host:port")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host_port = match authority.as_str().rsplit_once('@') {
            Some((_, host_port)) => host_port,
            None => authority.as_str(),
        };
        if host_port.is_empty() || host_port.starts_with(':') {
            return Err(bad("no host"));
        }
        let clean: Uri = format!("http://{host_port}/")
            .parse()
            .map_err(|_| bad("write http://[user:password@]host:port"))?;
        if let Some((_, port)) = host_port.rsplit_once(':')
            && !host_port.ends_with(']')
            && port.parse::<u16>().is_err()
        {
            return Err(bad("the port is not a number"));
        }
        // The matcher decodes percent-escapes in the credentials and encodes
        // them as a Basic header, as curl does.
        let auth = Matcher::builder()
            .all(full)
            .build()
            .intercept(&Uri::from_static("https://puppeteer.invalid/"))
            .and_then(|intercept| intercept.basic_auth().cloned())
            .map(|mut header| {
                // Already so from the matcher; made sure of here, since
                // `Debug` relies on it.
                header.set_sensitive(true);
                header
            });
        Ok(ProxyUrl {
            uri: clean,
            auth,
            origin: origin.to_string(),
        })
    }

    /// Whether credentials are sent to the proxy.
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// `host:port` of the proxy.
    pub fn address(&self) -> String {
        let host = self.uri.host().unwrap_or_default();
        let port = self.uri.port_u16().unwrap_or(80);
        format!("{host}:{port}")
    }
}

impl ProxyConfig {
    /// The proxy to use for `server`, reading the environment through `env`
    /// (a parameter so that tests need not change the process environment).
    pub fn resolve(
        &self,
        server: &Uri,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ProxyUrl>, String> {
        match self {
            ProxyConfig::Direct => Ok(None),
            ProxyConfig::Url(url) => Ok(Some(url.clone())),
            ProxyConfig::FromEnv => from_env(server, env),
        }
    }
}

fn from_env(
    server: &Uri,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyUrl>, String> {
    let names: &[&str] = if server.scheme_str() == Some("http") {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    };
    let first_set = |names: &[&'static str]| {
        names.iter().find_map(|name| {
            env(name)
                .filter(|value| !value.trim().is_empty())
                .map(|value| (*name, value))
        })
    };
    let Some((name, value)) = first_set(names) else {
        return Ok(None);
    };
    let proxy = ProxyUrl::parse(&value, name)?;
    let no_proxy = first_set(&["NO_PROXY", "no_proxy"])
        .map(|(_, value)| value)
        .unwrap_or_default();
    // The matcher applies curl's NO_PROXY rules (domains and their
    // subdomains, IP addresses, CIDR ranges, `*`).
    let bypassed = Matcher::builder()
        .all(value)
        .no(no_proxy)
        .build()
        .intercept(server)
        .is_none();
    Ok((!bypassed).then_some(proxy))
}

/// Why a connection through the proxy failed, worded for the operator.
///
/// Cloneable and without a source on purpose: the whole story is in the
/// message, which names the proxy (never its password), so that a chain of
/// wrappers cannot hide it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot reach the proxy at {proxy}: {cause}")]
    Unreachable { proxy: String, cause: String },
    #[error(
        "the proxy at {proxy} refused the credentials (407 Proxy Authentication Required): \
         check the user and password in its URL"
    )]
    BadCredentials { proxy: String },
    #[error(
        "the proxy at {proxy} asks for credentials (407 Proxy Authentication Required): \
         give them in its URL, http://user:password@host:port"
    )]
    CredentialsNeeded { proxy: String },
    #[error("the proxy at {proxy} refused to open a tunnel to {target}: {status}")]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("the proxy at {proxy} broke off while opening a tunnel to {target}: {cause}")]
    Broken {
        proxy: String,
        target: String,
        cause: String,
    },
}

/// The connector under TLS: straight to the server, or through a tunnel.
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    http: HttpConnector,
    proxy: Option<Arc<ProxyUrl>>,
}

impl ProxyConnector {
    pub(crate) fn new(http: HttpConnector, proxy: Option<ProxyUrl>) -> Self {
        ProxyConnector {
            http,
            proxy: proxy.map(Arc::new),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(proxy) = self.proxy.clone() else {
            let connecting = self.http.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let connecting = self.http.call(proxy.uri.clone());
        Box::pin(async move {
            let shown = proxy.to_string();
            let conn = connecting.await.map_err(|e| ProxyError::Unreachable {
                proxy: shown.clone(),
                cause: innermost(&e),
            })?;
            let target = target_of(&dst);
            let mut stream = conn.into_inner();
            let answer = tokio::time::timeout(
                TUNNEL_TIMEOUT,
                open_tunnel(&mut stream, &target, proxy.auth.as_ref()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer to CONNECT within {} s",
                    TUNNEL_TIMEOUT.as_secs()
                ))
            });
            let status = answer.map_err(|cause| ProxyError::Broken {
                proxy: shown.clone(),
                target: target.clone(),
                cause,
            })?;
            check_status(&status, &shown, &target, proxy.auth.is_some())?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// `host:port` of the destination, with the scheme's port when none is given.
fn target_of(dst: &Uri) -> String {
    let host = dst.host().unwrap_or_default();
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    format!("{host}:{port}")
}

/// Sends `CONNECT` and reads the proxy's answer up to its blank line; returns
/// the status line. The answer is read byte by byte, so that nothing the
/// server sends through the fresh tunnel is swallowed.
async fn open_tunnel<S>(
    stream: &mut S,
    target: &str,
    auth: Option<&HeaderValue>,
) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Connection: keep-alive\r\n")
            .into_bytes();
    if let Some(auth) = auth {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_ANSWER {
            return Err(format!("its answer is longer than {MAX_ANSWER} bytes"));
        }
        let byte = stream.read_u8().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "it closed the connection without answering CONNECT".to_string()
            } else {
                format!("reading its answer: {e}")
            }
        })?;
        answer.push(byte);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// Accepts a `2xx` status line; anything else is an error naming the proxy.
fn check_status(
    status_line: &str,
    proxy: &str,
    target: &str,
    sent_credentials: bool,
) -> Result<(), ProxyError> {
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|code| code.parse::<u16>().ok());
    let proxy = proxy.to_string();
    match code {
        Some(200..=299) if version.starts_with("HTTP/1.") => Ok(()),
        Some(407) if sent_credentials => Err(ProxyError::BadCredentials { proxy }),
        Some(407) => Err(ProxyError::CredentialsNeeded { proxy }),
        Some(_) => Err(ProxyError::Refused {
            proxy,
            target: target.to_string(),
            status: status_line.to_string(),
        }),
        None => Err(ProxyError::Broken {
            proxy,
            target: target.to_string(),
            cause: format!("not an HTTP answer: {:?}", truncate(status_line, 80)),
        }),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The innermost cause of an error ("Connection refused"), which the
/// wrappers around it ("tcp connect error") only locate.
pub(crate) fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// The proxy error somewhere in a transport error's chain, if any.
pub(crate) fn find_proxy_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ProxyError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(proxy) = error.downcast_ref::<ProxyError>() {
            return Some(proxy);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn server() -> Uri {
        Uri::from_static("https://puppeteer.example.org:7443")
    }

    #[test]
    fn urls_parse_with_defaults_and_credentials() {
        let url = ProxyUrl::parse("http://alice:s%40cret@proxy.lan:3128", "--proxy").unwrap();
        assert_eq!(url.address(), "proxy.lan:3128");
        assert!(url.has_credentials());
        // "alice:s@cret" in base64.
        assert_eq!(
            url.auth.as_ref().unwrap().to_str().unwrap(),
            "Basic YWxpY2U6c0BjcmV0"
        );
        let url = ProxyUrl::parse("proxy.lan", "HTTPS_PROXY").unwrap();
        assert_eq!(url.address(), "proxy.lan:80");
        assert!(!url.has_credentials());
        assert_eq!(url.to_string(), "http://proxy.lan (from HTTPS_PROXY)");
    }

    #[test]
    fn bad_urls_are_clear_and_never_echo_the_password() {
        for (text, expected) in [
            ("https://u:pw1@proxy:3128", "TLS to the proxy"),
            ("socks5://u:pw1@proxy:1080", "socks5:// is not supported"),
            ("", "empty"),
            ("http://u:pw1@:3128", "no host"),
            ("http://u:pw1@proxy:port", "port"),
        ] {
            let e = ProxyUrl::parse(text, "HTTPS_PROXY").unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(e.contains("HTTPS_PROXY"), "{e}");
            assert!(!e.contains("pw1"), "{e}");
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let url = ProxyUrl::parse("http://alice:pw-secret@proxy:3128", "--proxy").unwrap();
        let config = ProxyConfig::Url(url.clone());
        for shown in [format!("{url}"), format!("{url:?}"), format!("{config:?}")] {
            assert!(!shown.contains("pw-secret"), "{shown}");
            assert!(!shown.contains("YWxpY2U6"), "{shown}");
        }
        let e = check_status("HTTP/1.1 407 Nope", &url.to_string(), "x:1", true).unwrap_err();
        assert!(!e.to_string().contains("pw-secret"));
    }

    #[test]
    fn the_environment_is_read_like_curl_does() {
        let resolve = |vars: &[(&str, &str)]| {
            ProxyConfig::FromEnv
                .resolve(&server(), env(vars))
                .unwrap()
                .map(|p| p.to_string())
        };
        assert_eq!(resolve(&[]), None);
        assert_eq!(
            resolve(&[("HTTPS_PROXY", "http://p:1")]).as_deref(),
            Some("http://p:1 (from HTTPS_PROXY)")
        );
        assert_eq!(
            resolve(&[("https_proxy", "p:2"), ("ALL_PROXY", "p:3")]).as_deref(),
            Some("http://p:2 (from https_proxy)")
        );
        assert_eq!(
            resolve(&[("ALL_PROXY", "p:3")]).as_deref(),
            Some("http://p:3 (from ALL_PROXY)")
        );
        // HTTP_PROXY is for plaintext destinations only.
        assert_eq!(resolve(&[("HTTP_PROXY", "p:4")]), None);
        for no in [
            "puppeteer.example.org",
            ".example.org",
            "example.org",
            "*",
            "a, puppeteer.example.org",
        ] {
            assert_eq!(
                resolve(&[("HTTPS_PROXY", "p:1"), ("NO_PROXY", no)]),
                None,
                "NO_PROXY={no}"
            );
        }
        assert!(resolve(&[("HTTPS_PROXY", "p:1"), ("no_proxy", "other.org,10.0.0.0/8")]).is_some());
        let ip = Uri::from_static("https://10.1.2.3:7443");
        let vars = env(&[("HTTPS_PROXY", "p:1"), ("NO_PROXY", "10.0.0.0/8")]);
        assert_eq!(ProxyConfig::FromEnv.resolve(&ip, vars).unwrap(), None);
        let plain = Uri::from_static("http://127.0.0.1:8080");
        let vars = env(&[("HTTP_PROXY", "p:4"), ("HTTPS_PROXY", "p:1")]);
        let proxy = ProxyConfig::FromEnv.resolve(&plain, vars).unwrap().unwrap();
        assert_eq!(proxy.address(), "p:4");
    }

    #[test]
    fn explicit_settings_override_the_environment() {
        let vars = || env(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(
            ProxyConfig::Direct.resolve(&server(), vars()).unwrap(),
            None
        );
        let config = ProxyConfig::Url(ProxyUrl::parse("http://q:2", "--proxy").unwrap());
        let proxy = config.resolve(&server(), vars()).unwrap().unwrap();
        assert_eq!(proxy.to_string(), "http://q:2 (from --proxy)");
        let e = ProxyConfig::FromEnv
            .resolve(&server(), env(&[("HTTPS_PROXY", "ftp://x")]))
            .unwrap_err();
        assert!(e.contains("HTTPS_PROXY"), "{e}");
    }

    #[test]
    fn proxy_answers_become_clear_errors() {
        let check = |line: &str, creds: bool| check_status(line, "P", "s:1", creds);
        assert!(check("HTTP/1.1 200 Connection established", false).is_ok());
        assert!(check("HTTP/1.0 200 OK", true).is_ok());
        let e = check("HTTP/1.1 407 Proxy Authentication Required", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the proxy at P refused the credentials (407 Proxy Authentication Required): \
             check the user and password in its URL"
        );
        let e = check("HTTP/1.1 407 Proxy Authentication Required", false).unwrap_err();
        assert!(e.to_string().contains("asks for credentials"), "{e}");
        let e = check("HTTP/1.1 403 Forbidden", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the proxy at P refused to open a tunnel to s:1: HTTP/1.1 403 Forbidden"
        );
        let e = check("SSH-2.0-OpenSSH", false).unwrap_err();
        assert!(e.to_string().contains("not an HTTP answer"), "{e}");
    }

    #[tokio::test]
    async fn the_handshake_sends_credentials_and_leaves_tunnel_bytes_alone() {
        let (mut client, mut proxy) = tokio::io::duplex(4096);
        let auth = HeaderValue::from_static("Basic dTpw");
        let serve = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !seen.ends_with(b"\r\n\r\n") {
                seen.push(proxy.read_u8().await.unwrap());
            }
            proxy
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nserver-first")
                .await
                .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let status = open_tunnel(&mut client, "s.example:7443", Some(&auth))
            .await
            .unwrap();
        assert_eq!(status, "HTTP/1.1 200 Connection established");
        let request = serve.await.unwrap();
        assert!(
            request.starts_with("CONNECT s.example:7443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nProxy-Authorization: Basic dTpw\r\n"));
        let mut rest = [0u8; 12];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"server-first");
    }

    #[tokio::test]
    async fn a_proxy_that_hangs_up_is_reported() {
        let (mut client, proxy) = tokio::io::duplex(4096);
        drop(proxy);
        let e = open_tunnel(&mut client, "s:1", None).await.unwrap_err();
        assert!(e.contains("CONNECT") || e.contains("closed"), "{e}");
    }
}
