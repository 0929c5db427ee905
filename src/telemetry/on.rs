//! With the `opentelemetry` feature: histograms and spans through the `opentelemetry` API.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::{InstrumentationScope, KeyValue};

use super::{RetryCause, Server};

/// The instrumentation scope of everything the crate exports.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Bucket bounds, in seconds, of every duration histogram: the semantic conventions' advice
/// for database client durations (1 ms to 10 s), with 100 µs and 500 µs below it (a checkout
/// from a warm pool takes microseconds) and 30 s above it (a cold start within the retry
/// deadline).
const BOUNDARIES: [f64; 12] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
];

impl RetryCause {
    /// The `cause` attribute's value (as in `lakebase.connect.retries`).
    fn as_str(self) -> &'static str {
        match self {
            RetryCause::Transient => "transient",
            RetryCause::RateLimited => "rate_limited",
            RetryCause::AuthRefresh => "auth_refresh",
        }
    }
}

/// What the builder was given: the meter (the global one by default) and, only if given, the
/// tracer for direct spans.
#[derive(Clone, Default)]
pub(crate) struct Telemetry {
    pub(crate) meter: Option<Meter>,
    pub(crate) tracer: Option<Arc<BoxedTracer>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("meter", &self.meter.is_some())
            .field("tracer", &self.tracer.is_some())
            .finish()
    }
}

impl Telemetry {
    /// The instruments of the pool named `name`.
    pub(crate) fn pool(&self, name: &str) -> PoolTelemetry {
        let meter = self
            .meter
            .clone()
            .unwrap_or_else(|| opentelemetry::global::meter_with_scope(scope()));
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(BOUNDARIES.to_vec())
                .build()
        };
        PoolTelemetry(Some(Arc::new(Instruments {
            create_time: histogram(
                "db.client.connection.create_time",
                "The time it took to create a new connection",
            ),
            wait_time: histogram(
                "db.client.connection.wait_time",
                "The time it took to obtain an open connection from the pool",
            ),
            use_time: histogram(
                "db.client.connection.use_time",
                "The time between borrowing a connection and returning it to the pool",
            ),
            mint_duration: histogram(
                "lakebase.token.mint.duration",
                "The time a call to the credential provider took",
            ),
            pool_name: KeyValue::new("db.client.connection.pool.name", name.to_owned()),
            tracer: self.tracer.clone(),
            meter,
        })))
    }
}

struct Instruments {
    create_time: Histogram<f64>,
    wait_time: Histogram<f64>,
    use_time: Histogram<f64>,
    mint_duration: Histogram<f64>,
    pool_name: KeyValue,
    tracer: Option<Arc<BoxedTracer>>,
    meter: Meter,
}

/// One pool's instruments (none by default: counters made for a test); a clone shares them.
#[derive(Clone, Default)]
pub(crate) struct PoolTelemetry(Option<Arc<Instruments>>);

impl fmt::Debug for PoolTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolTelemetry")
            .field(
                "pool_name",
                &self.0.as_ref().map(|i| i.pool_name.value.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl PoolTelemetry {
    /// The meter the pool's observable instruments are registered with, and the pool's name
    /// as an attribute.
    pub(crate) fn meter(&self) -> Option<(&Meter, &KeyValue)> {
        self.0.as_ref().map(|i| (&i.meter, &i.pool_name))
    }

    fn record(&self, histogram: fn(&Instruments) -> &Histogram<f64>, took: Duration) {
        if let Some(instruments) = &self.0 {
            histogram(instruments).record(
                took.as_secs_f64(),
                std::slice::from_ref(&instruments.pool_name),
            );
        }
    }

    pub(crate) fn create_time(&self, took: Duration) {
        self.record(|i| &i.create_time, took);
    }

    pub(crate) fn wait_time(&self, took: Duration) {
        self.record(|i| &i.wait_time, took);
    }

    pub(crate) fn use_time(&self, took: Duration) {
        self.record(|i| &i.use_time, took);
    }

    /// One call to the credential provider of kind `kind` that took `took` and failed with
    /// `error` (a type name), if it failed: the duration histogram, and a span when a tracer
    /// was given (built after the fact, with the call's start and end times).
    pub(crate) fn mint(&self, took: Duration, error: Option<&'static str>, kind: &'static str) {
        let Some(instruments) = &self.0 else { return };
        let outcome = KeyValue::new(
            "outcome",
            if error.is_some() {
                "failure"
            } else {
                "success"
            },
        );
        instruments.mint_duration.record(
            took.as_secs_f64(),
            &[instruments.pool_name.clone(), outcome.clone()],
        );
        let Some(tracer) = &instruments.tracer else {
            return;
        };
        let end = SystemTime::now();
        let mut attributes = vec![
            instruments.pool_name.clone(),
            KeyValue::new("lakebase.credential.kind", kind),
            outcome,
        ];
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error));
        }
        let mut span = tracer.build(
            tracer
                .span_builder("lakebase.token.mint")
                .with_kind(SpanKind::Client)
                .with_start_time(end.checked_sub(took).unwrap_or(end))
                .with_attributes(attributes),
        );
        if error.is_some() {
            span.set_status(Status::error("the credential provider failed"));
        }
        span.end_with_timestamp(end);
    }

    /// The span of opening one connection to `server` as `user` (`None` when the user must
    /// not be named): a no-op without a tracer.
    pub(crate) fn connect_span(&self, server: &Server<'_>, user: Option<&str>) -> ConnectSpan {
        let Some(instruments) = &self.0 else {
            return ConnectSpan(None);
        };
        let Some(tracer) = &instruments.tracer else {
            return ConnectSpan(None);
        };
        let span = tracer.build(
            tracer
                .span_builder("lakebase.connect")
                .with_kind(SpanKind::Client)
                .with_attributes(connect_attributes(&instruments.pool_name, server, user)),
        );
        ConnectSpan(Some(span))
    }
}

/// The semantic conventions' connection attributes; never the password.
fn connect_attributes(
    pool_name: &KeyValue,
    server: &Server<'_>,
    user: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        pool_name.clone(),
        KeyValue::new("db.system.name", "postgresql"),
    ];
    if let Some(address) = server.address {
        attributes.push(KeyValue::new("server.address", address.to_owned()));
    }
    attributes.push(KeyValue::new("server.port", i64::from(server.port)));
    if let Some(namespace) = server.namespace {
        attributes.push(KeyValue::new("db.namespace", namespace.to_owned()));
    }
    if let Some(user) = user {
        attributes.push(KeyValue::new("db.user", user.to_owned()));
    }
    attributes
}

/// The span of one connect, with an event per retry; ended by [`end`](Self::end), or, if
/// the connect's future is dropped, when it is dropped (as an error: `cancelled`).
pub(crate) struct ConnectSpan(Option<BoxedSpan>);

impl fmt::Debug for ConnectSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectSpan")
            .field(&self.0.is_some())
            .finish()
    }
}

impl ConnectSpan {
    /// Attempt `attempt` failed with `cause`; the next starts after `delay`.
    pub(crate) fn retry(&mut self, cause: RetryCause, attempt: u32, delay: Duration) {
        if let Some(span) = &mut self.0 {
            span.add_event(
                "retry",
                vec![
                    KeyValue::new("cause", cause.as_str()),
                    KeyValue::new("attempt", i64::from(attempt)),
                    KeyValue::new("delay_s", delay.as_secs_f64()),
                ],
            );
        }
    }

    /// The connect ended: opened, or failed with `error` (a type name).
    pub(crate) fn end(mut self, error: Option<&'static str>) {
        if let Some(mut span) = self.0.take() {
            finish(&mut span, error);
        }
    }
}

impl Drop for ConnectSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.0.take() {
            finish(&mut span, Some("cancelled"));
        }
    }
}

fn finish(span: &mut BoxedSpan, error: Option<&'static str>) {
    if let Some(error) = error {
        span.set_attribute(KeyValue::new("error.type", error));
        span.set_status(Status::Error {
            description: Cow::Borrowed("the connection could not be opened"),
        });
    }
    span.end();
}

/// Values for an observable instrument, each with at most one attribute beside the pool's
/// name.
pub(crate) type Readings<T> = Vec<(T, Option<KeyValue>)>;

/// One value, with the pool's name only.
pub(crate) fn one<T>(value: T) -> Readings<T> {
    vec![(value, None)]
}

/// A value per label of the attribute `key`.
pub(crate) fn by<T, const N: usize>(
    key: &'static str,
    values: [(&'static str, T); N],
) -> Readings<T> {
    values
        .into_iter()
        .map(|(label, value)| (value, Some(KeyValue::new(key, label))))
        .collect()
}

/// Registers observable instruments that read a snapshot `S` of something (a pool's stats)
/// when the exporter collects, for as long as the snapshot can be taken.
pub(crate) struct Observer<'a, S> {
    meter: &'a Meter,
    pool_name: KeyValue,
    snapshot: Arc<dyn Fn() -> Option<S> + Send + Sync>,
}

impl<'a, S: 'static> Observer<'a, S> {
    pub(crate) fn new(
        meter: &'a Meter,
        pool_name: &KeyValue,
        snapshot: impl Fn() -> Option<S> + Send + Sync + 'static,
    ) -> Self {
        Observer {
            meter,
            pool_name: pool_name.clone(),
            snapshot: Arc::new(snapshot),
        }
    }

    fn callback<T: 'static>(
        &self,
        read: impl Fn(&S) -> Readings<T> + Send + Sync + 'static,
    ) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
        let snapshot = Arc::clone(&self.snapshot);
        let pool_name = self.pool_name.clone();
        move |instrument| {
            let Some(snapshot) = snapshot() else { return };
            for (value, attribute) in read(&snapshot) {
                match attribute {
                    Some(attribute) => instrument.observe(value, &[pool_name.clone(), attribute]),
                    None => instrument.observe(value, std::slice::from_ref(&pool_name)),
                }
            }
        }
    }

    /// An up-down counter: a count that goes both ways (connections, requests).
    pub(crate) fn up_down(
        &self,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
        read: impl Fn(&S) -> Readings<i64> + Send + Sync + 'static,
    ) {
        let _ = self
            .meter
            .i64_observable_up_down_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(self.callback(read))
            .build();
    }

    /// A counter: a total that only grows.
    pub(crate) fn counter(
        &self,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
        read: impl Fn(&S) -> Readings<u64> + Send + Sync + 'static,
    ) {
        let _ = self
            .meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(self.callback(read))
            .build();
    }

    /// `lakebase.token.mints`, from what `read` finds: (successes, failures).
    pub(crate) fn token_mints(&self, read: fn(&S) -> (u64, u64)) {
        self.counter(
            "lakebase.token.mints",
            "{mint}",
            "Calls to the credential provider, by outcome",
            move |s| {
                let (succeeded, failed) = read(s);
                by("outcome", [("success", succeeded), ("failure", failed)])
            },
        );
    }

    /// A gauge: a value at the moment of collection.
    pub(crate) fn gauge(
        &self,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
        read: impl Fn(&S) -> Readings<f64> + Send + Sync + 'static,
    ) {
        let _ = self
            .meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(self.callback(read))
            .build();
    }
}

/// A count as an up-down counter's value.
pub(crate) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
