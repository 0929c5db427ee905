//! A string that must never be printed: database tokens, passwords, client secrets.

use std::fmt;
use std::sync::Arc;

/// A secret string (a database token or password) that never shows up in `Debug` output.
///
/// `Secret` has no `Display` implementation, and its `Debug` prints `Secret(<redacted>)`, so a
/// secret cannot leak through `{:?}` on a struct that holds one, through an error message or
/// through a tracing field. The only way to read it is [`Secret::expose`], which makes every
/// place that handles the plain text easy to find.
///
/// Cloning is cheap (the text is shared, not copied).
///
/// ```
/// use lakebase_pool::Secret;
///
/// let token = Secret::new("dapi-example-token");
/// assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
/// assert_eq!(token.expose(), "dapi-example-token");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret string.
    ///
    /// ```
    /// let password = lakebase_pool::Secret::new(String::from("hunter2"));
    /// assert!(!password.is_empty());
    /// ```
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(Arc::from(secret.into()))
    }

    /// Returns the plain text. Call it only where the secret is sent to its destination.
    ///
    /// ```
    /// let password = lakebase_pool::Secret::new("hunter2");
    /// assert_eq!(password.expose().len(), 7);
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string (a provider bug worth reporting).
    ///
    /// ```
    /// assert!(lakebase_pool::Secret::new("").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compared in time that depends on the lengths only, never on where two secrets differ (a
/// forwarded token is compared with the ones already checked).
///
/// ```
/// use lakebase_pool::Secret;
///
/// assert_eq!(Secret::new("abc"), Secret::new("abc"));
/// assert_ne!(Secret::new("abc"), Secret::new("abd"));
/// ```
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret::new(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Secret::new(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_text() {
        let secret = Secret::new("s3cr3t-value");
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(secret.expose(), "s3cr3t-value");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
        assert_ne!(Secret::new(""), Secret::new("a"));
    }
}
