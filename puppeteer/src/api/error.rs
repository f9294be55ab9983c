//! The one place where domain and store errors become gRPC statuses.

use tonic::{Code, Status};

pub use crate::app::error::{ApiError, ApiResult, MAX_MESSAGE, bounded, invalid};
use crate::store::StoreError;

impl ApiError {
    /// The gRPC code of each kind of error: nowhere else is a code chosen.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Conflict(_) => Code::FailedPrecondition,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Stale(_) => Code::Aborted,
            ApiError::OutOfRange(_) => Code::OutOfRange,
            ApiError::ShuttingDown(_) => Code::Unavailable,
            ApiError::Corrupt(_) => Code::DataLoss,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Store(e) => store_code(e),
        }
    }
}

/// The store's kinds, mapped as the api's own: a conflict with the state is
/// the same refusal whichever layer found it.
fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::AlreadyExists { .. } => Code::AlreadyExists,
        StoreError::Conflict(_) => Code::FailedPrecondition,
        StoreError::Stale(_) => Code::Aborted,
        StoreError::BadCredential(_) => Code::Unauthenticated,
        StoreError::SchemaMismatch { .. } => Code::FailedPrecondition,
        StoreError::Corrupt { .. } => Code::DataLoss,
        StoreError::Sled(_)
        | StoreError::Postgres(_)
        | StoreError::Files(_)
        | StoreError::Locked(_) => Code::Internal,
        StoreError::Unreachable(_) => Code::Unavailable,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if let ApiError::Store(
            err @ (StoreError::Sled(_)
            | StoreError::Postgres(_)
            | StoreError::Unreachable(_)
            | StoreError::Files(_)),
        ) = &e
        {
            tracing::error!(error = %err, "storage error");
        }
        Status::new(e.code(), bounded(e.to_string(), MAX_MESSAGE))
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
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

    /// Each kind found by the api and its twin found by the store answer
    /// the same code.
    #[test]
    fn the_same_kind_gets_the_same_code_from_either_layer() {
        let pairs = [
            (
                ApiError::Conflict("x".into()),
                StoreError::Conflict("x".into()),
            ),
            (ApiError::Stale("x".into()), StoreError::Stale("x".into())),
            (
                ApiError::NotFound("x".into()),
                StoreError::NotFound {
                    kind: "run",
                    id: "x".into(),
                },
            ),
            (
                ApiError::AlreadyExists("x".into()),
                StoreError::AlreadyExists {
                    kind: "task",
                    id: "x".into(),
                },
            ),
            (
                ApiError::Unauthenticated("x".into()),
                StoreError::BadCredential("x".into()),
            ),
        ];
        for (api, store) in pairs {
            assert_eq!(api.code(), ApiError::Store(store).code(), "{api:?}");
        }
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
