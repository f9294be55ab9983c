//! The application layer's error. Its kinds are what a caller can do about
//! it; `api::error` is the one place that maps them to gRPC statuses.

use crate::domain::Invalid;
use crate::selector::SelectorError;
use crate::store::StoreError;

/// An error of the application layer (and of the api above it), by kind:
/// the api maps each kind to its gRPC status (`api::error`).
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

pub type ApiResult<T> = Result<T, ApiError>;

/// Shorthand for an InvalidArgument error.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(message.into())
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
