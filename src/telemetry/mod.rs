//! OpenTelemetry export (feature `opentelemetry`): the histograms recorded as things happen
//! and the spans of connects and mints. Without the feature every type here is empty and
//! every call does nothing, so the rest of the crate calls it unconditionally.
//!
//! The observable instruments (connection counts, counters) are not here: they read
//! [`Stats`](crate::Stats) when the exporter collects, and are registered by the pool
//! (`pool::observe`) and the per-user pools (`users::observe`).

use crate::retry::ErrorClass;

#[cfg(not(feature = "opentelemetry"))]
mod off;
#[cfg(feature = "opentelemetry")]
mod on;

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use self::off::{ConnectSpan, PoolTelemetry, Telemetry};
#[cfg(feature = "opentelemetry")]
pub(crate) use self::on::{ConnectSpan, Observer, PoolTelemetry, Telemetry, by, count, one};

/// Why a connect attempt was retried: the `cause` attribute of `lakebase.connect.retries`
/// and of the connect span's retry events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryCause {
    /// The server was down, starting or waking up.
    Transient,
    /// The server asked us to slow down.
    RateLimited,
    /// The login was rejected with a cached token; a fresh one was minted.
    AuthRefresh,
}

impl RetryCause {
    /// The cause of retrying after an error of `class` (rate limited, or transient).
    pub(crate) fn of(class: ErrorClass) -> Self {
        match class {
            ErrorClass::RateLimited => RetryCause::RateLimited,
            _ => RetryCause::Transient,
        }
    }
}

/// The semantic conventions' server attributes of a connection target: one reading for the
/// `tracing` span and the OpenTelemetry span of a connect.
pub(crate) struct Server<'a> {
    /// `server.address`: the host name (kept for TLS even when an address is dialled).
    pub(crate) address: Option<&'a str>,
    /// `server.port`.
    pub(crate) port: u16,
    /// `db.namespace`: the database name.
    pub(crate) namespace: Option<&'a str>,
}

impl<'a> Server<'a> {
    pub(crate) fn of(config: &'a tokio_postgres::Config) -> Self {
        let address = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => Some(host.as_str()),
            _ => None,
        };
        Server {
            address,
            port: config.get_ports().first().copied().unwrap_or(5432),
            namespace: config.get_dbname(),
        }
    }
}

/// The name of a replica's pool, from its primary's and its own label: one rule for the
/// replica's instruments and for the replica-health gauge the primary reports.
pub(crate) fn replica_pool_name(primary: &str, replica: &str) -> String {
    format!("{primary}/replica/{replica}")
}

/// The name of the per-user pools' aggregate, from the app's pool's.
pub(crate) fn users_pool_name(app: &str) -> String {
    format!("{app}/users")
}
