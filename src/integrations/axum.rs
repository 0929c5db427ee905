//! Axum: `Connection` as an extractor, `HttpError` as a response.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{HttpError, ReadConnection, UserConnection};
use crate::users::UserPools;
use crate::{Connection, Pool};

/// Checks a connection out of the [`Pool`] in the router's state (the state itself, or a
/// field of it through [`FromRef`]). The connection returns to the pool when the handler
/// ends. A failed checkout rejects the request with an [`HttpError`]: 503 with
/// `Retry-After` when the pool is exhausted or the database is waking up past the deadline.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use lakebase_pool::integrations::HttpError;
/// use lakebase_pool::{Connection, Pool};
///
/// async fn now(conn: Connection) -> Result<String, HttpError> {
///     let row = conn.query_one("SELECT now()::text", &[]).await?;
///     Ok(row.get(0))
/// }
///
/// # fn demo(pool: Pool) {
/// let app: Router = Router::new().route("/now", get(now)).with_state(pool);
/// # let _ = app;
/// # }
/// ```
impl<S> FromRequestParts<S> for Connection
where
    Pool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        Ok(Pool::from_ref(state).get().await?)
    }
}

/// Checks a connection for reading out of the [`Pool`] in the router's state, with
/// [`Pool::get_read`]: a read replica's, or the read-write endpoint's as the pool's
/// [`ReadFallback`](crate::ReadFallback) says. Rejections as for [`Connection`].
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use lakebase_pool::Pool;
/// use lakebase_pool::integrations::{HttpError, ReadConnection};
///
/// async fn count(conn: ReadConnection) -> Result<String, HttpError> {
///     let row = conn.query_one("SELECT count(*) FROM todos", &[]).await?;
///     Ok(row.get::<_, i64>(0).to_string())
/// }
///
/// # fn demo(pool: Pool) {
/// let app: Router = Router::new().route("/count", get(count)).with_state(pool);
/// # let _ = app;
/// # }
/// ```
impl<S> FromRequestParts<S> for ReadConnection
where
    Pool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        Ok(ReadConnection(Pool::from_ref(state).get_read().await?))
    }
}

/// Checks a connection out of the [`UserPools`] in the router's state, as the request's
/// signed-in user (see [`UserConnection`]). Rejections: 401 without a trusted user or when
/// the user's token is refused, 403 when it may not mint, otherwise as for [`Connection`].
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use lakebase_pool::integrations::{HttpError, UserConnection};
/// use lakebase_pool::users::UserPools;
///
/// async fn whoami(conn: UserConnection) -> Result<String, HttpError> {
///     Ok(conn.query_one("SELECT current_user::text", &[]).await?.get(0))
/// }
///
/// # fn demo(users: UserPools) {
/// let app: Router = Router::new().route("/me", get(whoami)).with_state(users);
/// # let _ = app;
/// # }
/// ```
impl<S> FromRequestParts<S> for UserConnection
where
    UserPools: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        let users = UserPools::from_ref(state);
        let headers = &parts.headers;
        let found = users
            .for_request(|name| headers.get(name).map(|value| value.as_bytes()))
            .await?;
        Ok(UserConnection::new(found))
    }
}

/// With [`UserPools`] as the router's state, [`Connection`] extractors get the app's own
/// pool ([`UserPools::app_pool`]): app routes and per-user routes on one state.
///
/// ```no_run
/// use axum::extract::FromRef;
/// use lakebase_pool::Pool;
/// use lakebase_pool::users::UserPools;
///
/// # fn demo(users: UserPools) {
/// let app_pool = Pool::from_ref(&users);
/// # let _ = app_pool;
/// # }
/// ```
impl FromRef<UserPools> for Pool {
    fn from_ref(users: &UserPools) -> Pool {
        users.app_pool().clone()
    }
}

/// The status, `Retry-After` for a 503, and the short reason as a plain-text body; the
/// error chain is logged.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        self.log();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.reason).into_response();
        if let Some(seconds) = self.retry_after_secs() {
            let _ = response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
