//! The puppet's credential: read from the state directory, or obtained once
//! by enrolling with an operator's enrollment token.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use geppetto_proto::client::TokenSlot;
use geppetto_proto::v1::{EnrollRequest, Facts};
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

/// Enrolls and stores the credential. Returns `false` if shut down first.
///
/// A refusal by the server (bad or used token, name taken...) is fatal and
/// carries the server's message; an unreachable server is retried.
pub async fn enroll(
    config: &AgentConfig,
    client: &Client,
    token_slot: &TokenSlot,
    facts: Facts,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let Some(enroll_token) = config.enroll_token.clone() else {
        bail!(
            "this puppet has no credential in {} and no enrollment token: give --enroll-token TOKEN",
            config.state_dir.display()
        );
    };
    let message = EnrollRequest {
        enroll_token,
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
            _ = shutdown.cancelled() => return Ok(false),
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
                    _ = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    };
    if answer.credential.is_empty() {
        bail!("the puppeteer answered the enrollment without a credential");
    }
    write_atomically(
        &credential_path(&config.state_dir),
        answer.credential.as_bytes(),
        0o600,
    )
    .context("cannot store the credential")?;
    token_slot
        .set(Some(&answer.credential))
        .context("the credential from the puppeteer is not usable as a header")?;
    tracing::info!(name = %answer.name, "enrolled");
    Ok(true)
}
