//! Providers that need no workspace: a fixed password, and any async closure.

use std::fmt;
use std::future::Future;

use super::{Credential, CredentialProvider};
use crate::error::BoxFuture;
use crate::{BoxError, Secret};

/// A fixed password that never expires: a local Postgres, or a password from a secret store
/// that rotates out of band.
///
/// ```
/// use lakebase_pool::credentials::StaticPassword;
///
/// let provider = StaticPassword::new("postgres");
/// assert!(!format!("{provider:?}").contains("postgres\""));
/// ```
#[derive(Clone)]
pub struct StaticPassword {
    password: Secret,
    /// Where it was set, for a refused login's message.
    source: &'static str,
}

impl StaticPassword {
    /// A provider that always returns `password`.
    ///
    /// ```
    /// let provider = lakebase_pool::credentials::StaticPassword::new(String::from("pw"));
    /// # let _ = provider;
    /// ```
    pub fn new(password: impl Into<Secret>) -> Self {
        Self::set_in("a `StaticPassword`", password)
    }

    /// A provider of `password`, set in `source` (`PGPASSWORD`, `PoolBuilder::password`).
    pub(crate) fn set_in(source: &'static str, password: impl Into<Secret>) -> Self {
        StaticPassword {
            password: password.into(),
            source,
        }
    }
}

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticPassword")
            .field("password", &self.password)
            .finish()
    }
}

impl CredentialProvider for StaticPassword {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        let credential = Credential::new(self.password.clone());
        Box::pin(async move { Ok(credential) })
    }

    fn fixed_password_source(&self) -> Option<&str> {
        Some(self.source)
    }
}

/// A provider backed by an async closure; see [`from_fn`].
pub struct FnProvider<F> {
    mint: F,
}

impl<F> fmt::Debug for FnProvider<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnProvider").finish_non_exhaustive()
    }
}

/// Builds a provider from an async closure that returns a [`Credential`].
///
/// The closure is called once per mint; the cache in front of it handles reuse, so it can
/// simply fetch a new token every time.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use lakebase_pool::credentials::{from_fn, Credential};
///
/// let provider = from_fn(|| async {
///     let token = String::from("minted-somewhere"); // e.g. an HTTP call
///     Ok::<_, std::io::Error>(Credential::new(token).expires_at(SystemTime::now() + Duration::from_secs(900)))
/// });
/// # let _ = provider;
/// ```
pub fn from_fn<F, Fut, E>(mint: F) -> FnProvider<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, E>> + Send + 'static,
    E: Into<BoxError>,
{
    FnProvider { mint }
}

impl<F, Fut, E> CredentialProvider for FnProvider<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        let fut = (self.mint)();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
