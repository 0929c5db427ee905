//! What the errors say.

use super::*;
use super::{AuthMethod, WorkspaceError};

#[test]
fn error_is_send_sync_and_static() {
    fn assert_bounds<T: Send + Sync + 'static>() {}
    assert_bounds::<Error>();
}

#[test]
fn credentials_display_names_the_retry_and_keeps_the_cause_in_source() {
    let cause: SharedError = Arc::new(std::io::Error::other("workspace unreachable"));
    let err = Error::Credentials {
        kind: TokenKind::Database,
        retry_in: Some(Duration::from_secs(2)),
        source: cause,
    };
    assert_eq!(
        err.to_string(),
        "no valid database token is available (the credential provider failed; \
         the pool asks it again in 2.0s, on a later checkout)"
    );
    assert_eq!(
        StdError::source(&err).map(|e| e.to_string()).as_deref(),
        Some("workspace unreachable")
    );
}

/// A cause is kept in `source()` and never repeated in `Display`, so a printed chain
/// shows each cause once.
#[test]
fn causes_live_in_source_and_are_not_printed_twice() {
    let cause = std::io::Error::other("permission denied (os error 13)");
    for err in [
        Error::invalid_because("root_certificates", "could not read /etc/ca.pem", cause),
        Error::workspace_config_because(
            "could not read the config file ~/.databrickscfg",
            std::io::Error::other("permission denied (os error 13)"),
        ),
        Error::Workspace(WorkspaceError::auth_because(
            AuthMethod::DatabricksCli,
            "could not run databricks",
            std::io::Error::other("permission denied (os error 13)"),
        )),
    ] {
        let display = err.to_string();
        let source = StdError::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("permission denied (os error 13)"));
        assert!(!display.contains("os error 13"), "{display}");
    }
}

#[test]
fn pool_timeout_display_says_how_to_fix_it() {
    let err = Error::PoolTimeout {
        waited: Duration::from_millis(1500),
        max_size: 8,
    };
    assert_eq!(
        err.to_string(),
        "timed out after 1.5s waiting for a free connection (all 8 are in use; raise \
         `max_size` or `wait_timeout`, or return connections sooner)"
    );
    assert!(err.is_transient() && err.is_timeout() && !err.is_auth());
}
