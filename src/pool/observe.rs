//! The pool's OpenTelemetry settings and observable instruments (feature `opentelemetry`).
//!
//! The observable instruments read [`Pool::stats`] when the exporter collects (every 60 s
//! with the SDK's periodic reader), through a weak reference: checkouts do no work for them,
//! and a dropped pool simply stops reporting. The histograms are recorded where the counters
//! are bumped (`telemetry`).

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use opentelemetry::trace::{Span, Tracer};

use super::{Pool, PoolBuilder, PoolInner, Stats};
use crate::metrics::Counters;
use crate::telemetry::{Observer, by, count, one, replica_pool_name};

impl PoolBuilder {
    /// Export the pool's metrics through `meter`: the database-client connection-pool
    /// metrics of the OpenTelemetry semantic conventions (`db.client.connection.*`) and the
    /// `lakebase.*` ones, as listed in the README. Without it, the global meter provider's
    /// meter is used (scope `lakebase-pool`), as it is when the pool is built: set the global
    /// provider first.
    ///
    /// ```
    /// use opentelemetry::metrics::MeterProvider as _;
    /// use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let exporter = InMemoryMetricExporter::default();
    /// let provider = SdkMeterProvider::builder()
    ///     .with_reader(PeriodicReader::builder(exporter.clone()).build())
    ///     .build();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .meter(provider.meter("my-service"))
    ///     .pool_name("orders")
    ///     .build()?;
    /// provider.force_flush().expect("flushed");
    /// let exported = exporter.get_finished_metrics().expect("collected");
    /// assert!(!exported.is_empty());
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: Meter) -> Self {
        self.telemetry.meter = Some(meter);
        self
    }

    /// The pool's name in its metrics and spans: the `db.client.connection.pool.name`
    /// attribute. By default the Lakebase endpoint's name, else `host:port`. Read replicas
    /// are named `{name}/replica/{endpoint}` and the per-user pools of
    /// [`UserPools`](crate::users::UserPools), together, `{name}/users`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .pool_name("orders")
    ///     .build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn pool_name(mut self, name: impl Into<String>) -> Self {
        self.pool_name = Some(name.into());
        self
    }

    /// Also emit OpenTelemetry spans directly through `tracer`: `lakebase.connect` (a
    /// connection being opened, with an event per retry) and `lakebase.token.mint` (a call
    /// to the credential provider), with `db.system.name`, `server.address`, `server.port`
    /// and `db.namespace`.
    ///
    /// Only for services that use OpenTelemetry without `tracing`: the same spans are always
    /// emitted as `tracing` spans, which `tracing-opentelemetry` already exports. Set both
    /// and every span is exported twice.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider as _;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let spans = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder()
    ///     .with_simple_exporter(spans.clone())
    ///     .build();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .tracer(provider.tracer("my-service"))
    ///     .build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Span + Send + Sync + 'static,
    {
        self.telemetry.tracer = Some(Arc::new(BoxedTracer::new(Box::new(tracer))));
        self
    }
}

impl Pool {
    /// Registers the pool's observable instruments (once per pool: they are never
    /// unregistered, which is why the per-user pools, which come and go, have none of their
    /// own).
    pub(super) fn observe(&self) {
        let Some((meter, name)) = self.inner.primary.counters().telemetry.meter() else {
            return;
        };
        let pool = Arc::downgrade(&self.inner);
        let observer = Observer::new(meter, name, move || stats_of(&pool));
        observe_connections(&observer);
        observe_lakebase(&observer);
        if self.inner.replicas.is_some() {
            observe_reads(&observer);
            observe_replica_health(meter, name, Arc::downgrade(&self.inner));
        }
    }
}

/// Registers the instruments of a pool of one endpoint that is part of another (a read
/// replica's), reading `stats` while it exists.
pub(super) fn observe_endpoint(
    counters: &Counters,
    stats: impl Fn() -> Option<Stats> + Send + Sync + 'static,
) {
    let Some((meter, name)) = counters.telemetry.meter() else {
        return;
    };
    let observer = Observer::new(meter, name, stats);
    observe_connections(&observer);
    observe_lakebase(&observer);
}

/// The pool's stats, while it exists.
fn stats_of(pool: &Weak<PoolInner>) -> Option<Stats> {
    pool.upgrade().map(|inner| Pool { inner }.stats())
}

/// The semantic conventions' connection-pool instruments.
fn observe_connections(observer: &Observer<'_, Stats>) {
    observer.up_down(
        "db.client.connection.count",
        "{connection}",
        "The number of connections that are currently in state described by the state attribute",
        |s| {
            by(
                "db.client.connection.state",
                [
                    ("idle", count(s.available)),
                    ("used", count(s.size.saturating_sub(s.available))),
                ],
            )
        },
    );
    observer.up_down(
        "db.client.connection.max",
        "{connection}",
        "The maximum number of open connections allowed",
        |s| one(count(s.max_size)),
    );
    // Every open connection may be idle: deadpool keeps no separate idle limit.
    observer.up_down(
        "db.client.connection.idle.max",
        "{connection}",
        "The maximum number of idle open connections allowed",
        |s| one(count(s.max_size)),
    );
    // No minimum is kept: idle connections close after the idle timeout, so that a compute
    // with no traffic can scale to zero (`warm_up` is one-shot).
    observer.up_down(
        "db.client.connection.idle.min",
        "{connection}",
        "The minimum number of idle open connections allowed",
        |_| one(0),
    );
    observer.up_down(
        "db.client.connection.pending_requests",
        "{request}",
        "The number of current pending requests for an open connection",
        |s| one(count(s.waiting)),
    );
    observer.counter(
        "db.client.connection.timeouts",
        "{timeout}",
        "The number of connection timeouts that have occurred trying to obtain a connection \
         from the pool",
        |s| one(s.checkout_timeouts),
    );
}

/// The `lakebase.*` instruments: connects, retirements, tokens.
fn observe_lakebase(observer: &Observer<'_, Stats>) {
    observer.counter(
        "lakebase.connections.opened",
        "{connection}",
        "Physical connections opened",
        |s| one(s.connections_opened),
    );
    observer.counter(
        "lakebase.connections.retired",
        "{connection}",
        "Connections closed by the pool, by reason",
        |s| {
            by(
                "reason",
                [
                    ("lifetime", s.retired_lifetime),
                    ("idle", s.retired_idle),
                    ("broken", s.retired_broken),
                    ("abandoned", s.closed_abandoned),
                    ("read_only", s.retired_read_only),
                    ("retire_all", s.retired_all),
                ],
            )
        },
    );
    observer.counter(
        "lakebase.cancels",
        "{request}",
        "Cancel requests for statements whose caller gave up, ran past a limit, or were cancelled, by outcome",
        |s| by("outcome", [("sent", s.cancels_sent), ("failed", s.cancels_failed)]),
    );
    observer.counter(
        "lakebase.connect.retries",
        "{retry}",
        "Connection attempts retried, by cause",
        |s| {
            by(
                "cause",
                [
                    ("transient", s.connect_retries_transient),
                    ("rate_limited", s.connect_retries_rate_limited),
                    ("auth_refresh", s.auth_refreshes),
                    ("stalled", s.connect_stalled_tries),
                ],
            )
        },
    );
    observer.token_mints(|s| (s.tokens.minted, s.tokens.mint_failures));
    observer.gauge(
        "lakebase.token.expires_in",
        "s",
        "Time until the cached token expires (absent for a fixed password)",
        |s| {
            s.tokens
                .expires_in
                .map(|left| (left.as_secs_f64(), None))
                .into_iter()
                .collect()
        },
    );
}

/// The read replicas' counters, on the pool with replicas.
fn observe_reads(observer: &Observer<'_, Stats>) {
    observer.counter(
        "lakebase.read.fallbacks",
        "{read}",
        "Reads served by the read-write endpoint because no replica could serve",
        |s| one(s.read_fallbacks),
    );
    observer.counter(
        "lakebase.read.lag_waits",
        "{read}",
        "Reads of a position that waited for a replica to replay it",
        |s| one(s.lag_waits),
    );
    observer.counter(
        "lakebase.read.lag_timeouts",
        "{read}",
        "Of those, the ones whose replica did not catch up within the catch-up timeout",
        |s| one(s.lag_fallbacks),
    );
}

/// Each replica's health, under the replica's own pool name (made from the primary's).
fn observe_replica_health(meter: &Meter, primary: &KeyValue, pool: Weak<PoolInner>) {
    let primary = primary.value.as_str().into_owned();
    let _ = meter
        .i64_observable_gauge("lakebase.replica.healthy")
        .with_unit("{replica}")
        .with_description("1 while reads go to the replica, 0 while it is skipped as unhealthy")
        .with_callback(move |instrument| {
            let Some(stats) = stats_of(&pool) else { return };
            for replica in &stats.replicas {
                let name = replica_pool_name(&primary, &replica.endpoint);
                instrument.observe(
                    i64::from(replica.healthy),
                    &[KeyValue::new("db.client.connection.pool.name", name)],
                );
            }
        })
        .build();
}
