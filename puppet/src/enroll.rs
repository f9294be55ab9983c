//! The puppet's credential: read from the state directory, or obtained once
//! by enrolling with an operator's enrollment token, and replaced when an
//! operator rotates it.
//!
//! The credential is a secret: it is never logged, at any level, and the
//! types that hold it redact it from their `Debug` output.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use geppetto_proto::client::TokenSlot;
use geppetto_proto::v1::{EnrollRequest, Facts};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::records::write_atomically;
use crate::rpc::{self, CALL_TIMEOUT, Client, Retry};

pub fn credential_path(state_dir: &Path) -> PathBuf {
    state_dir.join("credential")
}

/// Reads the stored credential, if the puppet has enrolled before.
pub fn load_credential(state_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = credential_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => {
            bail!(
                "the credential file {} is empty: delete it and enroll again with --enroll-token",
                path.display()
            )
        }
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the credential file {}", path.display()))
        }
    }
}

/// The credential in use: stored in `state_dir/credential` and set in the
/// channel's token slot, which every call (and every retry) reads when it is
/// sent. `Debug` redacts it, by its type.
#[derive(Debug)]
pub struct Credential {
    path: PathBuf,
    slot: TokenSlot,
    current: SecretString,
}

impl Credential {
    /// Starts using `current`, a credential already stored in `state_dir`.
    pub fn new(
        state_dir: &Path,
        slot: TokenSlot,
        current: impl Into<SecretString>,
    ) -> anyhow::Result<Self> {
        let current = current.into();
        slot.set(Some(current.expose_secret()))
            .context("the stored credential is not usable as a header")?;
        Ok(Credential {
            path: credential_path(state_dir),
            slot,
            current,
        })
    }

    /// Takes the credential an operator's rotation gave (`new_credential` of
    /// a poll's answer). It is stored durably first, then set in the token
    /// slot, so that a crash in between leaves the new credential on disk,
    /// which the server accepts. Returns whether the credential changed: an
    /// empty value or the one in use changes nothing, since the server
    /// resends it until the puppet authenticates with it.
    ///
    /// On error the current credential stays in use, and the server's next
    /// answer offers the new one again.
    pub fn rotate(&mut self, new: &str) -> anyhow::Result<bool> {
        if new.is_empty() || new == self.current.expose_secret() {
            return Ok(false);
        }
        check_usable(new).context("the new credential from the puppeteer")?;
        write_atomically(&self.path, new.as_bytes(), 0o600).with_context(|| {
            format!("cannot store the new credential in {}", self.path.display())
        })?;
        self.slot
            .set(Some(new))
            .context("the new credential from the puppeteer is not usable as a header")?;
        self.current = new.into();
        Ok(true)
    }
}

/// Checks a credential from the server before it is stored, so that the file
/// never holds one the puppet cannot send (or read back unchanged: stored
/// credentials are read back trimmed).
fn check_usable(credential: &str) -> anyhow::Result<()> {
    if credential.is_empty() {
        bail!("is empty");
    }
    if credential.trim() != credential {
        bail!("has surrounding white space");
    }
    TokenSlot::default()
        .set(Some(credential))
        .context("is not usable as an authorization header")?;
    Ok(())
}

/// Enrolls and stores the credential, which it returns; `None` if shut down
/// first. The token slot is not set: see [`Credential::new`].
///
/// A refusal by the server (bad or used token, name taken...) is fatal and
/// carries the server's message; an unreachable server is retried.
pub async fn enroll(
    config: &AgentConfig,
    client: &Client,
    facts: Facts,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    let Some(enroll_token) = config.enroll_token.as_ref() else {
        bail!(
            "this puppet has no credential in {} and no enrollment token: give --enroll-token TOKEN",
            config.state_dir.display()
        );
    };
    let message = EnrollRequest {
        enroll_token: secrecy::ExposeSecret::expose_secret(enroll_token).to_owned(),
        name: config.name.clone(),
        labels: config.labels.clone().into_iter().collect(),
        facts: Some(facts),
    };
    let mut backoff = Backoff::standard();
    let answer = loop {
        let mut client = client.clone();
        let call = rpc::with_deadline(
            CALL_TIMEOUT,
            client.enroll(rpc::request(message.clone(), CALL_TIMEOUT)),
        );
        let result = tokio::select! {
            result = call => result,
            _ = shutdown.cancelled() => return Ok(None),
        };
        match result {
            Ok(answer) => break answer,
            Err(status) if matches!(rpc::classify(&status), Retry::Never | Retry::Slowly) => {
                bail!(
                    "enrollment refused by the puppeteer ({:?}): {}",
                    status.code(),
                    status.message()
                );
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(code = ?status.code(), error = status.message(), retry_in = ?delay, "cannot enroll yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    };
    check_usable(&answer.credential).context("the credential from the puppeteer's enrollment")?;
    write_atomically(
        &credential_path(&config.state_dir),
        answer.credential.as_bytes(),
        0o600,
    )
    .context("cannot store the credential")?;
    if answer.approved {
        tracing::info!(name = %answer.name, "enrolled as {}", answer.name);
    } else {
        tracing::info!(
            name = %answer.name,
            "enrolled as {name}; waiting for an operator's approval: geppetto puppets approve {name}",
            name = answer.name
        );
    }
    Ok(Some(answer.credential))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use geppetto_proto::client::{Channel, Endpoint, Transport};
    use geppetto_proto::v1::PollRequest;
    use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// The authorization header the channel sends now, as seen by a bare
    /// HTTP/1.1 listener (gRPC-web is plain HTTP/1.1 without TLS).
    async fn header_sent(slot: &TokenSlot) -> Option<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ca_file: None,
            transport: Transport::GrpcWeb,
        };
        let mut client = PuppetServiceClient::new(Channel::new(&endpoint, slot.clone()).unwrap());
        let call = tokio::spawn(async move { client.poll(PollRequest::default()).await });
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the request head");
            head.extend_from_slice(&buf[..n]);
        }
        drop(socket);
        call.abort();
        String::from_utf8_lossy(&head).lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
    }

    fn stored(dir: &Path) -> (String, u32) {
        let path = credential_path(dir);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        (std::fs::read_to_string(&path).unwrap(), mode)
    }

    #[tokio::test]
    async fn a_rotated_credential_is_stored_then_sent() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(&credential_path(dir.path()), b"cred-1", 0o600).unwrap();
        let slot = TokenSlot::default();
        let mut credential = Credential::new(dir.path(), slot.clone(), "cred-1").unwrap();
        assert_eq!(header_sent(&slot).await.as_deref(), Some("Bearer cred-1"));

        assert!(credential.rotate("cred-2").unwrap());
        assert_eq!(stored(dir.path()), ("cred-2".to_string(), 0o600));
        assert_eq!(header_sent(&slot).await.as_deref(), Some("Bearer cred-2"));
        assert_eq!(
            load_credential(dir.path()).unwrap().as_deref(),
            Some("cred-2")
        );
        assert!(!dir.path().join("credential.tmp").exists());

        // The server resends it until the puppet authenticates with it.
        assert!(!credential.rotate("cred-2").unwrap());
        assert!(!credential.rotate("").unwrap());
        assert_eq!(stored(dir.path()), ("cred-2".to_string(), 0o600));
        assert_eq!(header_sent(&slot).await.as_deref(), Some("Bearer cred-2"));
    }

    #[test]
    fn an_unusable_credential_is_neither_stored_nor_used() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(&credential_path(dir.path()), b"cred-1", 0o600).unwrap();
        let mut credential = Credential::new(dir.path(), TokenSlot::default(), "cred-1").unwrap();
        for bad in ["s3cret\n2", " s3cret-2", "s3cret-2\u{7f}"] {
            let e = credential.rotate(bad).unwrap_err();
            assert!(!format!("{e:#}").contains("s3cret"), "{e:#}");
            assert_eq!(stored(dir.path()).0, "cred-1");
        }
        assert!(credential.rotate("cred-2").unwrap());
    }

    #[test]
    fn a_stale_temporary_file_does_not_widen_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("credential.tmp");
        std::fs::write(&tmp, "old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut credential = Credential::new(dir.path(), TokenSlot::default(), "cred-1").unwrap();
        assert!(credential.rotate("cred-2").unwrap());
        assert_eq!(stored(dir.path()), ("cred-2".to_string(), 0o600));
    }

    #[test]
    fn debug_redacts_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let credential = Credential::new(dir.path(), TokenSlot::default(), "s3cret-cred").unwrap();
        let shown = format!("{credential:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("REDACTED"),
            "{shown}"
        );
    }
}
