//! The audit trail: every admin mutation, and every refused attempt at one,
//! is recorded with who, what, when, from where and the outcome, then flushed
//! with the change itself before the caller gets an answer. Secrets never go
//! into it: targets are names and ids.
//!
//! Except the refusals of callers with no valid credential (no identity to
//! hold to account, and each one would cost the puppeteer disk): they are
//! counted and logged sparingly (see [`crate::app::auth::Refusals`]), never
//! stored. Entries older than `audit_retention` are pruned by the sweeper.

use std::future::Future;

use tonic::{Request, Status};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::domain::{AuditEntry, Millis};

/// A mutation under way: what will be recorded when it ends.
#[derive(Debug)]
pub struct Audited {
    action: &'static str,
    target: String,
    remote_addr: String,
    actor: String,
    /// Whether authentication refused the call, and counted it.
    counted: bool,
}

/// The longest target recorded: targets are names and ids, but a refused
/// call's target is whatever its caller sent (a 4 MB name grew the audit
/// trail by 4 MB per call, twice with its event).
const MAX_TARGET: usize = 256;

impl Audited {
    /// Changes the recorded target (e.g. to the id a creation produced).
    pub fn target(&mut self, target: impl Into<String>) {
        self.target = super::error::bounded(target.into(), MAX_TARGET);
    }

    /// Records the actor for calls not made by a user (enrollments).
    pub fn actor(&mut self, actor: impl Into<String>) {
        self.actor = super::error::bounded(actor.into(), MAX_TARGET);
    }
}

pub fn remote_addr<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into())
}

/// A mutation authorized (or refused) and about to run: [`Mutation::run`]
/// runs its body, records how it ended, flushes, and answers. Every audited
/// call goes through it, so none can forget the record or write it twice.
#[must_use = "a mutation does nothing until it is run"]
pub struct Mutation<'a, M, C = Caller> {
    state: &'a AppState,
    audited: Audited,
    /// Who is calling: the body runs only when authorization let it.
    caller: ApiResult<C>,
    /// The request's message, handed to the body.
    message: M,
}

impl<M, C> Mutation<'_, M, C> {
    /// Runs `body` with the caller and the request's message (unless the
    /// call was refused), then records the outcome and answers.
    pub async fn run<T, F, Fut>(self, body: F) -> Result<T, Status>
    where
        F: FnOnce(C, M) -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        self.run_noting(body, |_, _| {}).await
    }

    /// Like [`Mutation::run`], and `note` completes the record from the
    /// answer before it is written (the id a creation made, its actor).
    pub async fn run_noting<T, F, Fut>(
        mut self,
        body: F,
        note: impl FnOnce(&T, &mut Audited),
    ) -> Result<T, Status>
    where
        F: FnOnce(C, M) -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let result = match self.caller {
            Ok(caller) => body(caller, self.message).await,
            Err(refused) => Err(refused),
        }
        .map_err(Status::from);
        if let Ok(answer) = &result {
            note(answer, &mut self.audited);
        }
        self.state.conclude(self.audited, result).await
    }
}

impl AppState {
    /// Authorizes a read-only call (not audited).
    pub fn authorize<T>(&self, request: &Request<T>, action: &'static str) -> ApiResult<Caller> {
        self.auth.authorize(&self.store, request, action).1
    }

    /// Authorizes a mutation and starts its audit record, naming its target
    /// from the request's message; [`Mutation::run`] does the rest.
    pub fn mutation<M>(
        &self,
        request: Request<M>,
        action: &'static str,
        target: impl FnOnce(&M) -> String,
    ) -> Mutation<'_, M> {
        let (actor, caller) = self.auth.authorize(&self.store, &request, action);
        let audited = Audited {
            action,
            target: super::error::bounded(target(request.get_ref()), MAX_TARGET),
            remote_addr: remote_addr(&request),
            actor,
            counted: matches!(caller, Err(ApiError::Unauthenticated(_))),
        };
        Mutation {
            state: self,
            audited,
            caller,
            message: request.into_inner(),
        }
    }

    /// Starts the audit record of a mutation that authenticates otherwise
    /// (an enrollment, by its token): its body always runs, with no caller.
    pub fn unauthenticated_mutation<M>(
        &self,
        request: Request<M>,
        action: &'static str,
        target: impl FnOnce(&M) -> String,
    ) -> Mutation<'_, M, ()> {
        let audited = Audited {
            action,
            target: super::error::bounded(target(request.get_ref()), MAX_TARGET),
            remote_addr: remote_addr(&request),
            actor: "-".into(),
            counted: false,
        };
        Mutation {
            state: self,
            audited,
            caller: Ok(()),
            message: request.into_inner(),
        }
    }

    /// Records how the mutation ended, flushes, and answers.
    async fn conclude<T>(&self, audited: Audited, result: Result<T, Status>) -> Result<T, Status> {
        let (outcome, message) = match &result {
            Ok(_) => ("ok".to_string(), String::new()),
            Err(status) => (format!("{:?}", status.code()), status.message().to_string()),
        };
        self.record(audited, outcome, message).await?;
        result
    }

    async fn record(
        &self,
        audited: Audited,
        outcome: String,
        message: String,
    ) -> Result<(), Status> {
        if audited.actor == "-" && outcome != "ok" {
            // Refused before anyone was identified: counted, not stored.
            if !audited.counted {
                let why = format!("{outcome}: {message}");
                self.auth
                    .refusals()
                    .refused(audited.action, &audited.remote_addr, &why);
            }
            return Ok(());
        }
        let entry = AuditEntry {
            seq: 0,
            at: Millis::now(),
            actor: audited.actor,
            action: audited.action.to_string(),
            target: audited.target,
            remote_addr: audited.remote_addr,
            outcome,
            message: super::error::bounded(message, super::error::MAX_MESSAGE),
        };
        let event = crate::domain::Event {
            at: entry.at,
            kind: format!("admin.{}", entry.action),
            actor: entry.actor.clone(),
            summary: format!(
                "{} {} {}: {}",
                entry.actor,
                entry.action,
                entry.target,
                if entry.message.is_empty() {
                    entry.outcome.clone()
                } else {
                    format!("{} ({})", entry.outcome, entry.message)
                }
            ),
            ..Default::default()
        };
        if let Err(e) = self.store.append_audit(entry) {
            tracing::error!(error = %e, "cannot write the audit trail");
            return Err(ApiError::from(e).into());
        }
        self.announce(vec![event]);
        self.store.flush().await.map_err(ApiError::from)?;
        Ok(())
    }
}
