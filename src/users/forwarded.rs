//! The signed-in user as the Databricks Apps proxy forwards them, and whether to believe it.

use std::fmt;

use crate::{Secret, UserProblem};

/// The header with the signed-in user's email: their Postgres role in Lakebase.
pub const EMAIL_HEADER: &str = "x-forwarded-email";
/// The header with the signed-in user's OAuth token (when the app has user authorization).
pub const ACCESS_TOKEN_HEADER: &str = "x-forwarded-access-token";

/// Longest email accepted (RFC 5321's limit for a path).
const MAX_EMAIL: usize = 320;
/// Longest token accepted: OAuth access tokens are JWTs of a few kilobytes at most.
const MAX_TOKEN: usize = 16 * 1024;

/// A signed-in user of a Databricks App: their email (the Postgres role Lakebase gives them)
/// and the OAuth token the Apps proxy forwards for them. `Debug` shows neither.
///
/// Web services get it from the request headers (the `UserConnection` extractors of
/// [`integrations`](crate::integrations) do that); workers or tests can make one.
///
/// ```
/// use lakebase_pool::users::ForwardedUser;
///
/// let user = ForwardedUser::new("alice@example.com", "user-oauth-token");
/// assert_eq!(user.email(), "alice@example.com");
/// assert!(!format!("{user:?}").contains("alice"));
/// ```
#[derive(Clone)]
pub struct ForwardedUser {
    email: String,
    access_token: Secret,
}

impl ForwardedUser {
    /// A user with this email and OAuth token.
    ///
    /// ```
    /// let user = lakebase_pool::users::ForwardedUser::new("alice@example.com", "token");
    /// # let _ = user;
    /// ```
    pub fn new(email: impl Into<String>, access_token: impl Into<Secret>) -> Self {
        ForwardedUser {
            email: email.into(),
            access_token: access_token.into(),
        }
    }

    /// The user from the request's forwarded headers ([`EMAIL_HEADER`],
    /// [`ACCESS_TOKEN_HEADER`]), read through `header` (a header's value by its lower-case
    /// name). `Ok(None)` when the request carries neither.
    ///
    /// Only call it for requests that came through the Apps proxy: anyone else can send these
    /// headers ([`UserPools`](crate::users::UserPools) decides with
    /// [`ForwardedHeaders`]).
    ///
    /// # Errors
    ///
    /// [`UserProblem::NotForwarded`] when only one of the two is there (an app without user
    /// authorization gets the email but no token); [`UserProblem::InvalidHeaders`] when one is
    /// empty, not printable text, or too long.
    ///
    /// ```
    /// use lakebase_pool::users::ForwardedUser;
    ///
    /// let headers = [("x-forwarded-email", "alice@example.com"), ("x-forwarded-access-token", "t")];
    /// let user = ForwardedUser::from_headers(|name| {
    ///     headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes())
    /// })?;
    /// assert_eq!(user.unwrap().email(), "alice@example.com");
    /// # Ok::<(), lakebase_pool::UserProblem>(())
    /// ```
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Option<Self>, UserProblem> {
        match (header(EMAIL_HEADER), header(ACCESS_TOKEN_HEADER)) {
            (None, None) => Ok(None),
            (Some(email), Some(token)) => Ok(Some(ForwardedUser {
                email: header_text(email, MAX_EMAIL)?.to_owned(),
                access_token: Secret::new(header_text(token, MAX_TOKEN)?),
            })),
            _ => Err(UserProblem::NotForwarded),
        }
    }

    /// The user's email, which is also their Postgres role.
    ///
    /// ```
    /// # let user = lakebase_pool::users::ForwardedUser::new("alice@example.com", "t");
    /// assert_eq!(user.email(), "alice@example.com");
    /// ```
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The user's OAuth token.
    ///
    /// ```
    /// # let user = lakebase_pool::users::ForwardedUser::new("alice@example.com", "t");
    /// assert_eq!(user.access_token().expose(), "t");
    /// ```
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }
}

impl fmt::Debug for ForwardedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardedUser")
            .field("email", &"<hidden>")
            .field("access_token", &self.access_token)
            .finish()
    }
}

/// A header value as text: not empty, not longer than `limit`, visible ASCII or UTF-8 without
/// control characters.
fn header_text(value: &[u8], limit: usize) -> Result<&str, UserProblem> {
    let text = std::str::from_utf8(value).map_err(|_| UserProblem::InvalidHeaders)?;
    let text = text.trim();
    if text.is_empty() || text.len() > limit || text.chars().any(char::is_control) {
        return Err(UserProblem::InvalidHeaders);
    }
    Ok(text)
}

/// Whether [`UserPools`](crate::users::UserPools) reads the forwarded user headers.
///
/// The Databricks Apps proxy sets them on every request it forwards (and drops what the
/// client sent), so behind it they say who is signed in. Anywhere else they are whatever the
/// client sent: trusting them there lets anyone act as anyone whose token they hold, and
/// [`Ignored`](Self::Ignored) is the only safe choice.
///
/// ```
/// use lakebase_pool::users::ForwardedHeaders;
/// assert_eq!(ForwardedHeaders::default(), ForwardedHeaders::WhenInDatabricksApps);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeaders {
    /// Trusted when the process runs as a Databricks App (`DATABRICKS_APP_NAME` is set, as
    /// the Apps runtime does), ignored otherwise.
    #[default]
    WhenInDatabricksApps,
    /// Always trusted: only behind a proxy that sets them and drops the client's own.
    Trusted,
    /// Never read: every request is one without a signed-in user.
    Ignored,
}

impl ForwardedHeaders {
    /// Whether the headers are read, in a process that runs as a Databricks App or not.
    pub(crate) fn trusted(self, in_databricks_app: bool) -> bool {
        match self {
            ForwardedHeaders::WhenInDatabricksApps => in_databricks_app,
            ForwardedHeaders::Trusted => true,
            ForwardedHeaders::Ignored => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(headers: &[(&str, &[u8])]) -> Result<Option<ForwardedUser>, UserProblem> {
        ForwardedUser::from_headers(|name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, value)| *value)
        })
    }

    #[test]
    fn both_headers_make_a_user_and_neither_makes_none() {
        let user = parse(&[
            (EMAIL_HEADER, b" alice@example.com "),
            (ACCESS_TOKEN_HEADER, b"tok"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (user.email(), user.access_token().expose()),
            ("alice@example.com", "tok")
        );
        assert!(parse(&[]).unwrap().is_none());
    }

    #[test]
    fn half_or_bad_headers_are_refused() {
        assert_eq!(
            parse(&[(EMAIL_HEADER, b"alice@example.com")]).unwrap_err(),
            UserProblem::NotForwarded
        );
        assert_eq!(
            parse(&[(ACCESS_TOKEN_HEADER, b"tok")]).unwrap_err(),
            UserProblem::NotForwarded
        );
        let long = vec![b'a'; MAX_EMAIL + 1];
        for bad in [&b""[..], b"  ", b"\xff\xfe", b"a\x07b", &long] {
            assert_eq!(
                parse(&[(EMAIL_HEADER, bad), (ACCESS_TOKEN_HEADER, b"tok")]).unwrap_err(),
                UserProblem::InvalidHeaders,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn headers_are_trusted_in_databricks_apps_only_by_default() {
        let auto = ForwardedHeaders::default();
        assert!(auto.trusted(true) && !auto.trusted(false));
        assert!(ForwardedHeaders::Trusted.trusted(false));
        assert!(!ForwardedHeaders::Ignored.trusted(true));
    }
}
