//! The one place where domain and store errors become gRPC statuses.

use tonic::{Code, Status};

use crate::domain::Invalid;
use crate::selector::SelectorError;
use crate::store::StoreError;

/// An api error; converts into the right `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won; read again and retry.
    #[error("{0}")]
    Aborted(String),
    /// The server failed (a disk error); the message says what it was doing.
    #[error("{0}")]
    Internal(String),
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Invalid(e.0)
    }
}

impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Store(StoreError::NotFound { .. }) => Code::NotFound,
            ApiError::Store(StoreError::AlreadyExists { .. }) => Code::AlreadyExists,
            ApiError::Store(StoreError::Conflict(_)) => Code::FailedPrecondition,
            ApiError::Store(StoreError::Stale(_)) => Code::Aborted,
            ApiError::Store(StoreError::SchemaMismatch { .. }) => Code::FailedPrecondition,
            ApiError::Store(StoreError::Corrupt { .. }) => Code::DataLoss,
            ApiError::Store(StoreError::Sled(_) | StoreError::Locked(_)) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if let ApiError::Store(StoreError::Sled(err)) = &e {
            tracing::error!(error = %err, "database error");
        }
        Status::new(e.code(), bounded(e.to_string(), MAX_MESSAGE))
    }
}

/// The longest error message answered or recorded: messages quote the
/// offending value, and a caller must not be able to make the puppeteer
/// echo (or store) megabytes of it.
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// long it was.
pub fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(40);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..cut], text.len())
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Shorthand for an InvalidArgument error.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one mapping of store errors to codes: a state that refuses the
    /// call is FailedPrecondition; a record changed since it was read (a
    /// lost race: read again, retry) is Aborted.
    #[test]
    fn conflicts_and_lost_races_get_their_codes() {
        let code = |e: StoreError| ApiError::Store(e).code();
        assert_eq!(
            code(StoreError::Conflict("no".into())),
            Code::FailedPrecondition
        );
        assert_eq!(code(StoreError::Stale("again".into())), Code::Aborted);
    }

    #[test]
    fn a_huge_message_is_cut_and_says_so() {
        let name = "x".repeat(4 << 20);
        let status = Status::from(invalid(format!("invalid task name {name:?}")));
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().ends_with("bytes in all)"),
            "{}",
            &status.message()[..80]
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        // Short ones untouched; cuts land on character boundaries.
        assert_eq!(bounded("court".into(), 10), "court");
        let accents = "é".repeat(600);
        assert!(bounded(accents, 100).len() <= 100);
    }
}
