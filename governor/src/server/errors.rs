//! The one place where the ledger's errors become gRPC statuses.

use tonic::Status;

use crate::ledger::{LedgerError, SessionAcquireError, UpdateError};

impl From<LedgerError> for Status {
    fn from(error: LedgerError) -> Status {
        match error {
            LedgerError::UnknownDependency(_) => Status::not_found(format!(
                "dependency: {error}; this governor only serves configured dependencies"
            )),
            LedgerError::TooManyDependencies(_) | LedgerError::TooManyForPeer(_) => {
                Status::resource_exhausted(format!("dependency: {error}"))
            }
        }
    }
}

impl From<UpdateError> for Status {
    fn from(error: UpdateError) -> Status {
        match error {
            UpdateError::InvalidName(problem) => {
                Status::invalid_argument(format!("name: {problem}"))
            }
            UpdateError::Limit(invalid) => {
                Status::invalid_argument(format!("limits.{}: {}", invalid.field, invalid.problem))
            }
            UpdateError::Ledger(error) => error.into(),
            UpdateError::NoFleetStore => Status::failed_precondition(format!("limits.{error}")),
        }
    }
}

impl From<SessionAcquireError> for Status {
    fn from(error: SessionAcquireError) -> Status {
        match error {
            SessionAcquireError::Ledger(error) => error.into(),
            SessionAcquireError::TooManyPending(_) => {
                Status::resource_exhausted(format!("limits.max_session_pending: {error}"))
            }
            SessionAcquireError::Closed => Status::aborted(format!("session: {error}")),
        }
    }
}
