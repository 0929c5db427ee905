//! A credential provider that rotates a local role's real password on every mint.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::LocalPostgres;
use lakebase_pool::BoxFuture;
use lakebase_pool::credentials::{Credential, CredentialProvider};
use lakebase_pool::{BoxError, Secret};

/// Mints a random token on every call and makes it `role`'s password on a [`LocalPostgres`],
/// valid for the configured time-to-live: the local stand-in for a Lakebase token service.
///
/// Only the newest token logs in (a role has one password), while sessions opened with older
/// tokens stay open, because Postgres checks the password only at login.
///
/// Cloning is cheap; clones share the mint counter. Create it with
/// [`LocalPostgres::rotating_password`].
#[derive(Clone)]
pub struct RotatingPassword {
    pg: LocalPostgres,
    role: String,
    ttl: Duration,
    mints: Arc<AtomicU64>,
}

impl RotatingPassword {
    pub(crate) fn new(pg: LocalPostgres, role: &str, ttl: Duration) -> Self {
        RotatingPassword {
            pg,
            role: role.to_owned(),
            ttl,
            mints: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many tokens have been minted (and applied to the role) so far.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let tokens = pg.rotating_password("app", std::time::Duration::from_secs(60));
    /// assert_eq!(tokens.mint_count(), 0);
    /// ```
    pub fn mint_count(&self) -> u64 {
        self.mints.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for RotatingPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingPassword")
            .field("role", &self.role)
            .field("ttl", &self.ttl)
            .field("mints", &self.mint_count())
            .finish()
    }
}

/// A random 40-character alphanumeric token.
pub(crate) fn random_token() -> Secret {
    let text: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(40)
        .collect();
    Secret::new(text)
}

impl CredentialProvider for RotatingPassword {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        Box::pin(async move {
            let token = random_token();
            let expires_at = SystemTime::now() + self.ttl;
            self.pg
                .set_password(&self.role, &token, Some(expires_at))
                .await?;
            let _ = self.mints.fetch_add(1, Ordering::SeqCst);
            Ok(Credential::new(token).expires_at(expires_at))
        })
    }
}
