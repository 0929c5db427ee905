//! Actix Web: `Connection` as an extractor, `HttpError` as a response error.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};

use super::{HttpError, ReadConnection, UserConnection};
use crate::users::UserPools;
use crate::{Connection, Error, Pool};

/// Checks a connection out of the [`Pool`] registered as app data (`web::Data<Pool>`, or a
/// plain `Pool`; else the app's pool of registered [`UserPools`]). The connection returns to the pool when the handler ends. A failed
/// checkout fails the request with an [`HttpError`]: 503 with `Retry-After` when the pool is
/// exhausted or the database is waking up past the deadline; 500 when no pool is registered.
///
/// ```no_run
/// use actix_web::{App, web};
/// use lakebase_pool::integrations::HttpError;
/// use lakebase_pool::{Connection, Pool};
///
/// async fn now(conn: Connection) -> Result<String, HttpError> {
///     let row = conn.query_one("SELECT now()::text", &[]).await?;
///     Ok(row.get(0))
/// }
///
/// # fn demo(pool: Pool) {
/// let app = App::new()
///     .app_data(web::Data::new(pool))
///     .route("/now", web::get().to(now));
/// # let _ = app;
/// # }
/// ```
impl FromRequest for Connection {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, HttpError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let pool = registered_pool(req);
        Box::pin(async move { Ok(pool?.get().await?) })
    }
}

/// Checks a connection for reading out of the registered [`Pool`], with
/// [`Pool::get_read`]: a read replica's, or the read-write endpoint's as the pool's
/// [`ReadFallback`](crate::ReadFallback) says. Errors as for [`Connection`].
///
/// ```no_run
/// use actix_web::{App, web};
/// use lakebase_pool::Pool;
/// use lakebase_pool::integrations::{HttpError, ReadConnection};
///
/// async fn count(conn: ReadConnection) -> Result<String, HttpError> {
///     let row = conn.query_one("SELECT count(*) FROM todos", &[]).await?;
///     Ok(row.get::<_, i64>(0).to_string())
/// }
///
/// # fn demo(pool: Pool) {
/// let app = App::new()
///     .app_data(web::Data::new(pool))
///     .route("/count", web::get().to(count));
/// # let _ = app;
/// # }
/// ```
impl FromRequest for ReadConnection {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, HttpError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let pool = registered_pool(req);
        Box::pin(async move { Ok(ReadConnection(pool?.get_read().await?)) })
    }
}

/// Checks a connection out of the [`UserPools`] registered as app data
/// (`web::Data<UserPools>`, or a plain `UserPools`), as the request's signed-in user (see
/// [`UserConnection`]). Errors: 401 without a trusted user or when the user's token is
/// refused, 403 when it may not mint, otherwise as for [`Connection`].
///
/// ```no_run
/// use actix_web::{App, web};
/// use lakebase_pool::integrations::{HttpError, UserConnection};
/// use lakebase_pool::users::UserPools;
///
/// async fn whoami(conn: UserConnection) -> Result<String, HttpError> {
///     Ok(conn.query_one("SELECT current_user::text", &[]).await?.get(0))
/// }
///
/// # fn demo(users: UserPools) {
/// let app = App::new()
///     .app_data(web::Data::new(users))
///     .route("/me", web::get().to(whoami));
/// # let _ = app;
/// # }
/// ```
impl FromRequest for UserConnection {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, HttpError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let users = registered_users(req).ok_or_else(|| {
            Error::invalid(
                "app_data",
                "no lakebase_pool::users::UserPools is registered; add it with \
                     `App::app_data(web::Data::new(users))`",
            )
        });
        let headers = req.headers().clone();
        Box::pin(async move {
            let found = users?
                .for_request(|name| headers.get(name).map(|value| value.as_bytes()))
                .await?;
            Ok(UserConnection::new(found))
        })
    }
}

/// The user pools registered as app data (`web::Data<UserPools>`, or plain).
fn registered_users(req: &HttpRequest) -> Option<UserPools> {
    req.app_data::<web::Data<UserPools>>()
        .map(|data| UserPools::clone(data))
        .or_else(|| req.app_data::<UserPools>().cloned())
}

/// The pool registered as app data (`web::Data<Pool>`, or a plain `Pool`), else the app's
/// own pool of registered [`UserPools`].
fn registered_pool(req: &HttpRequest) -> Result<Pool, Error> {
    req.app_data::<web::Data<Pool>>()
        .map(|data| Pool::clone(data))
        .or_else(|| req.app_data::<Pool>().cloned())
        .or_else(|| registered_users(req).map(|users| users.app_pool().clone()))
        .ok_or_else(|| {
            Error::invalid(
                "app_data",
                "no lakebase_pool::Pool is registered; add it with \
                 `App::app_data(web::Data::new(pool))`",
            )
        })
}

/// The status, `Retry-After` for a 503, and the short reason as a plain-text body; the
/// error chain is logged.
impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let mut response = HttpResponse::build(self.status_code());
        // The setters return the builder again, for chaining.
        let builder = response.insert_header(ContentType::plaintext());
        let builder = match self.retry_after_secs() {
            Some(seconds) => builder.insert_header((header::RETRY_AFTER, seconds)),
            None => builder,
        };
        builder.body(self.reason)
    }
}
