//! Checking a forwarded token with the workspace: that it is valid and is the forwarded
//! email's. One check in flight per user and token, run on a task of its own so that it
//! survives the cancellation of the request that started it (as a token mint does).

use crate::error::WorkspaceError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::lock;
use super::refusal::{refusal, without_email};
use crate::databricks::{Caller, Workspace};
use crate::{Error, RequestProblem, Secret, UserProblem};

/// What a check found: the workspace's own spelling of the user name (the Postgres role),
/// or why the token was refused.
type Outcome = Arc<Result<String, Error>>;

/// The checks under way, by user (the email in lower case) and token.
#[derive(Clone, Default)]
pub(super) struct TokenChecks {
    in_flight: Arc<Mutex<HashMap<String, Vec<InFlight>>>>,
}

struct InFlight {
    token: Secret,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// The key of a user: email addresses compare without regard to letter case here, as the
/// workspace's SCIM user names do (RFC 7643: `userName` is not case-exact).
pub(super) fn user_key(email: &str) -> String {
    email.to_lowercase()
}

impl TokenChecks {
    /// Checks `token` for `email`, joining a check of the same token for the same user that
    /// is already under way. Returns the workspace's user name; `started` is told whether
    /// this call started a check (for the counters).
    pub(super) async fn check(
        &self,
        workspace: &Workspace,
        email: &str,
        token: &Secret,
        started: impl FnOnce(),
    ) -> Result<String, Error> {
        let key = user_key(email);
        let mut outcome = {
            let mut in_flight = lock(&self.in_flight);
            let checks = in_flight.entry(key.clone()).or_default();
            // A check whose task is gone (its runtime shut down) is no check: start another.
            checks.retain(|check| check.outcome.has_changed().is_ok());
            match checks.iter().find(|check| check.token == *token) {
                Some(check) => check.outcome.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    checks.push(InFlight {
                        token: token.clone(),
                        outcome: receiver.clone(),
                    });
                    started();
                    drop(tokio::spawn(self.clone().run(
                        workspace.clone(),
                        key,
                        email.to_owned(),
                        token.clone(),
                        sender,
                    )));
                    receiver
                }
            }
        };
        let done = outcome.wait_for(Option::is_some).await;
        match done.as_deref().ok().and_then(Option::as_ref) {
            Some(outcome) => match outcome.as_ref() {
                Ok(user_name) => Ok(user_name.clone()),
                Err(error) => Err(reissue(error)),
            },
            // The task ended without an answer: the runtime is shutting down.
            None => Err(Error::Workspace(WorkspaceError::Request {
                method: reqwest::Method::GET,
                path: String::from(ME_PATH),
                problem: RequestProblem::CutOff,
                source: None,
            })),
        }
    }

    async fn run(
        self,
        workspace: Workspace,
        key: String,
        email: String,
        token: Secret,
        sender: watch::Sender<Option<Outcome>>,
    ) {
        // Forgotten however the task ends: answered, or dropped with its runtime.
        let _forget = Forget {
            checks: self,
            key,
            token: token.clone(),
        };
        let outcome = check_with_workspace(&workspace, &email, &token).await;
        let _ = sender.send(Some(Arc::new(outcome)));
    }
}

/// Removes a check from those in flight when its task ends.
struct Forget {
    checks: TokenChecks,
    key: String,
    token: Secret,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.checks.in_flight);
        if let Some(checks) = in_flight.get_mut(&self.key) {
            checks.retain(|check| check.token != self.token);
            if checks.is_empty() {
                let _ = in_flight.remove(&self.key);
            }
        }
    }
}

const ME_PATH: &str = "/api/2.0/preview/scim/v2/Me";

/// Asks the workspace whose `token` is, and compares with `email` without regard to case.
async fn check_with_workspace(
    workspace: &Workspace,
    email: &str,
    token: &Secret,
) -> Result<String, Error> {
    let me = workspace
        .current_user_as(Caller::User(token))
        .await
        .map_err(|error| match refusal(&error) {
            Some(problem) => Error::UserUnauthorized { problem },
            None => without_email(error, email),
        })?;
    if user_key(&me.user_name) != user_key(email) {
        return Err(Error::UserUnauthorized {
            problem: UserProblem::IdentityMismatch,
        });
    }
    Ok(me.user_name)
}

/// The same error again, for each caller that waited on one check.
fn reissue(error: &Error) -> Error {
    match error {
        Error::UserUnauthorized { problem } => Error::UserUnauthorized { problem: *problem },
        Error::Workspace(WorkspaceError::Api {
            method,
            path,
            status,
            error_code,
            message,
        }) => Error::Workspace(WorkspaceError::Api {
            method: method.clone(),
            path: path.clone(),
            status: *status,
            error_code: error_code.clone(),
            message: message.clone(),
        }),
        Error::Workspace(WorkspaceError::Request {
            method,
            path,
            problem,
            source,
        }) => Error::Workspace(WorkspaceError::Request {
            method: method.clone(),
            path: path.clone(),
            problem: problem.clone(),
            source: source
                .as_deref()
                .map(|source| crate::error::error_chain(source).into()),
        }),
        other => Error::Workspace(WorkspaceError::Request {
            method: reqwest::Method::GET,
            path: String::from(ME_PATH),
            problem: RequestProblem::InvalidResponse(crate::error::error_chain(other)),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_keyed_without_regard_to_case_and_stay_distinct() {
        assert_eq!(user_key("Alice@Example.COM"), user_key("alice@example.com"));
        assert_ne!(user_key("alice@example.com"), user_key("bob@example.com"));
        // A look-alike letter is another user, not a case variant.
        assert_ne!(
            user_key("al\u{130}ce@example.com"),
            user_key("alice@example.com")
        );
    }

    #[test]
    fn each_waiter_gets_the_same_error() {
        let api = Error::Workspace(WorkspaceError::Api {
            method: reqwest::Method::GET,
            path: String::from(ME_PATH),
            status: 503,
            error_code: None,
            message: String::from("down"),
        });
        assert_eq!(reissue(&api).to_string(), api.to_string());
        let refused = Error::UserUnauthorized {
            problem: UserProblem::TokenRejected,
        };
        assert!(matches!(
            reissue(&refused),
            Error::UserUnauthorized {
                problem: UserProblem::TokenRejected
            }
        ));
    }
}
