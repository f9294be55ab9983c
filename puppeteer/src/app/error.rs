//! The application layer's error. Its kinds are what a caller can do about
//! it; `api::error` is the one place that maps them to gRPC statuses.

use crate::domain::Invalid;
use crate::selector::SelectorError;
use crate::store::StoreError;

/// An error of the application layer (and of the api above it), by kind:
/// what went wrong, never which gRPC code to answer. `api::error` is the one
/// place that maps each kind to its status; a service that needs another
/// meaning adds a kind here rather than building a status by hand.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A value from the caller is not acceptable; the message says which
    /// and what is.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No valid credential came with the call.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The call does not fit the current state (a run that is not running,
    /// a puppet pending approval); the message says why and what to do.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won: the record changed since the caller read
    /// it; read again and retry.
    #[error("{0}")]
    Stale(String),
    /// A position past the end of what exists (an offset in an artifact).
    #[error("{0}")]
    OutOfRange(String),
    /// The puppeteer is shutting down: the caller may resume later.
    #[error("{0}")]
    ShuttingDown(String),
    /// Stored content is not what was recorded of it (a file shorter than
    /// its size).
    #[error("{0}")]
    Corrupt(String),
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
