//! Refusals of a user's request, and what keeps the user's email out of every error: one
//! place for both.

use crate::error::WorkspaceError;
use crate::target::redact;
use crate::{Error, UserProblem};

/// A user's request was refused by the workspace: found in the source chain of a failed mint.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(pub(super) UserProblem);

/// The refusal a workspace error for a call made with a user's token means: 401 and 403
/// are the user's (never retried).
pub(super) fn refusal(error: &Error) -> Option<UserProblem> {
    match error {
        Error::Workspace(WorkspaceError::Api { status: 401, .. }) => {
            Some(UserProblem::TokenRejected)
        }
        Error::Workspace(WorkspaceError::Api { status: 403, .. }) => Some(UserProblem::Forbidden),
        _ => None,
    }
}

/// `error` without the user's email in an API message (messages may name the user).
pub(super) fn without_email(error: Error, email: &str) -> Error {
    match error {
        Error::Workspace(WorkspaceError::Api {
            method,
            path,
            status,
            error_code,
            message,
        }) => Error::Workspace(WorkspaceError::Api {
            method,
            path,
            status,
            error_code,
            message: redact(&message, email),
        }),
        other => other,
    }
}

/// A user pool's error as the caller sees it: refusals as [`Error::UserUnauthorized`], and
/// no error text that names the user.
pub(super) fn user_error(error: Error, email: &str) -> Error {
    match error {
        Error::AuthRejected { .. } => Error::UserUnauthorized {
            problem: UserProblem::LoginRefused,
        },
        Error::Credentials {
            ref source,
            kind: _,
            retry_in: _,
        } => match refusal_in(source.as_ref()) {
            Some(problem) => Error::UserUnauthorized { problem },
            None => error,
        },
        other => without_email(other, email),
    }
}

/// The user refusal somewhere in `error`'s chain, if any.
fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<UserProblem> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(Refused(problem)) = error.downcast_ref::<Refused>() {
            return Some(*problem);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn refusals_are_found_anywhere_in_the_chain() {
        let error = Error::Credentials {
            kind: crate::error::TokenKind::UserDatabase,
            retry_in: None,
            source: Arc::new(Refused(UserProblem::Forbidden)),
        };
        assert!(matches!(
            user_error(error, "alice@example.com"),
            Error::UserUnauthorized {
                problem: UserProblem::Forbidden
            }
        ));
        let other = Error::Credentials {
            kind: crate::error::TokenKind::UserDatabase,
            retry_in: None,
            source: Arc::new(std::io::Error::other("down")),
        };
        assert!(matches!(
            user_error(other, "alice@example.com"),
            Error::Credentials { .. }
        ));
    }
}
