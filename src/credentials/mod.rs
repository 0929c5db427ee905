//! Where database passwords come from, and how they are cached.
//!
//! A [`CredentialProvider`] produces one [`Credential`] (a secret plus, usually, an expiry) each
//! time it is asked and keeps no state of its own. The [`TokenCache`] in front of it decides
//! when to ask: it reuses a token while enough of its life is left, refreshes ahead of expiry
//! in the background, lets only one request run at a time, and keeps serving a still-valid
//! token while the provider fails. [`CachePolicy`] documents each default.
//!
//! Providers in this crate: [`StaticPassword`] (a fixed password) and [`from_fn`] (any async
//! closure). Write your own by implementing the trait:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use lakebase_pool::credentials::{Credential, CredentialProvider};
//! use lakebase_pool::{BoxError, BoxFuture};
//!
//! struct Vault;
//!
//! impl CredentialProvider for Vault {
//!     fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
//!         Box::pin(async {
//!             let token = String::from("fetched-from-vault");
//!             Ok(Credential::new(token).expires_at(SystemTime::now() + Duration::from_secs(3600)))
//!         })
//!     }
//! }
//! ```

pub(crate) mod cache;
pub(crate) mod policy;
mod static_password;

use std::fmt;
use std::time::SystemTime;

pub use self::cache::TokenUpdates;
pub(crate) use self::cache::{TokenCache, TokenStats};
pub(crate) use self::policy::CachePolicy;
pub use self::static_password::{FnProvider, StaticPassword, from_fn};
pub use crate::error::TokenKind;
use crate::error::{BoxError, BoxFuture};
use crate::secret::Secret;

/// Produces database credentials: one fresh [`Credential`] per call.
///
/// Implementations should do one round of work (for example one HTTP request) and return; the
/// [`TokenCache`] in front of them handles reuse, refresh timing, back-off and timeouts, and
/// guarantees that at most one call runs at a time. The trait is object safe, so a pool stores
/// its provider as `Arc<dyn CredentialProvider>`.
///
/// ```
/// use lakebase_pool::credentials::{Credential, CredentialProvider};
/// use lakebase_pool::{BoxError, BoxFuture};
///
/// struct FromEnv;
///
/// impl CredentialProvider for FromEnv {
///     fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
///         Box::pin(async {
///             let password = std::env::var("APP_DB_PASSWORD")?;
///             Ok(Credential::new(password))
///         })
///     }
/// }
/// ```
pub trait CredentialProvider: Send + Sync + 'static {
    /// Produces a new credential. Errors are reported to callers of the cache (and through
    /// [`Error::Credentials`](crate::Error::Credentials)) as the error's `source`, so they
    /// should say what failed; they must not contain the secret.
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>>;

    /// Where the password comes from, for a provider whose password never changes (a fixed
    /// password): a refused login then names it (`PGPASSWORD`, `PoolBuilder::password`)
    /// instead of talking about tokens. `None` (the default) for providers that mint tokens.
    fn fixed_password_source(&self) -> Option<&str> {
        None
    }
}

/// A database password together with the moment it stops being accepted.
///
/// A credential without an expiry (a static password) is reused forever. With an expiry, the
/// [`TokenCache`] counts the remaining life from `expires_at` itself, never from when the
/// credential was fetched.
///
/// `Debug` shows the expiry but never the secret.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use lakebase_pool::credentials::Credential;
///
/// let expiry = SystemTime::now() + Duration::from_secs(3600);
/// let credential = Credential::new("token-text").expires_at(expiry);
/// assert_eq!(credential.expiry(), Some(expiry));
/// assert!(!format!("{credential:?}").contains("token-text"));
/// ```
#[derive(Clone)]
pub struct Credential {
    secret: Secret,
    expires_at: Option<SystemTime>,
}

impl Credential {
    /// A credential with no expiry.
    ///
    /// ```
    /// let credential = lakebase_pool::credentials::Credential::new("password");
    /// assert_eq!(credential.expiry(), None);
    /// ```
    pub fn new(secret: impl Into<Secret>) -> Self {
        Credential {
            secret: secret.into(),
            expires_at: None,
        }
    }

    /// Sets the moment the server stops accepting this credential for new logins.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// let credential = lakebase_pool::credentials::Credential::new("t").expires_at(at);
    /// assert_eq!(credential.expiry(), Some(at));
    /// ```
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The secret itself.
    ///
    /// ```
    /// let credential = lakebase_pool::credentials::Credential::new("pw");
    /// assert_eq!(credential.secret().expose(), "pw");
    /// ```
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// When the credential expires, if it does.
    ///
    /// ```
    /// assert!(lakebase_pool::credentials::Credential::new("pw").expiry().is_none());
    /// ```
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &self.secret)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
