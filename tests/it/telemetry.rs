//! OpenTelemetry export (feature `opentelemetry`), read back with the SDK's in-memory
//! exporters: every metric after a scripted sequence, the semantic conventions' names and
//! units, the spans and their attributes, replicas and per-user pools.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lakebase_pool::{Error, Pool, RetryPolicy};
use lakebase_pool_testing::{LocalLakebase, StopMode};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};

use crate::support::LogCapture;

/// A meter and a tracer whose output the test reads back.
pub struct Otel {
    meters: SdkMeterProvider,
    metrics: InMemoryMetricExporter,
    tracers: SdkTracerProvider,
    spans: InMemorySpanExporter,
}

impl Otel {
    pub fn new() -> Self {
        let metrics = InMemoryMetricExporter::default();
        let spans = InMemorySpanExporter::default();
        Otel {
            meters: SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metrics.clone()).build())
                .build(),
            metrics,
            tracers: SdkTracerProvider::builder()
                .with_simple_exporter(spans.clone())
                .build(),
            spans,
        }
    }

    pub fn meter(&self) -> Meter {
        self.meters.meter("tests")
    }

    pub fn tracer(&self) -> SdkTracer {
        self.tracers.tracer("tests")
    }

    /// Everything the instruments report now.
    pub fn collect(&self) -> Snapshot {
        self.metrics.reset();
        self.meters.force_flush().expect("metrics flushed");
        let exported = self.metrics.get_finished_metrics().expect("metrics read");
        Snapshot::of(exported.last().expect("one collection"))
    }

    /// The spans ended so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("spans read")
    }
}

/// One data point, flattened: its metric's name, unit and kind, its attributes, its value
/// (a histogram's sum) and a histogram's count.
#[derive(Clone, Debug)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
    pub count: u64,
}

pub struct Snapshot {
    pub points: Vec<Point>,
}

impl Snapshot {
    fn of(exported: &ResourceMetrics) -> Self {
        let mut points = Vec::new();
        for scope in exported.scope_metrics() {
            for metric in scope.metrics() {
                let mut push = |kind, attributes: Vec<&opentelemetry::KeyValue>, value, count| {
                    points.push(Point {
                        metric: metric.name().to_owned(),
                        unit: metric.unit().to_owned(),
                        kind,
                        attributes: attributes
                            .into_iter()
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect(),
                        value,
                        count,
                    });
                };
                macro_rules! flatten {
                    ($data:expr) => {
                        match $data {
                            MetricData::Sum(sum) => {
                                let kind = if sum.is_monotonic() {
                                    "counter"
                                } else {
                                    "updowncounter"
                                };
                                for p in sum.data_points() {
                                    push(kind, p.attributes().collect(), p.value() as f64, 1);
                                }
                            }
                            MetricData::Gauge(gauge) => {
                                for p in gauge.data_points() {
                                    push("gauge", p.attributes().collect(), p.value() as f64, 1);
                                }
                            }
                            MetricData::Histogram(histogram) => {
                                for p in histogram.data_points() {
                                    push(
                                        "histogram",
                                        p.attributes().collect(),
                                        p.sum() as f64,
                                        p.count(),
                                    );
                                }
                            }
                            MetricData::ExponentialHistogram(_) => {
                                panic!("{}: an exponential histogram", metric.name())
                            }
                        }
                    };
                }
                match metric.data() {
                    AggregatedMetrics::F64(data) => flatten!(data),
                    AggregatedMetrics::U64(data) => flatten!(data),
                    AggregatedMetrics::I64(data) => flatten!(data),
                }
            }
        }
        Snapshot { points }
    }

    /// The point of `metric` whose attributes are exactly `attributes`.
    pub fn point(&self, metric: &str, attributes: &[(&str, &str)]) -> &Point {
        let wanted: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.points
            .iter()
            .find(|p| p.metric == metric && p.attributes == wanted)
            .unwrap_or_else(|| panic!("no {metric} {wanted:?} in {:#?}", self.points))
    }

    pub fn value(&self, metric: &str, attributes: &[(&str, &str)]) -> f64 {
        self.point(metric, attributes).value
    }

    /// A histogram's count of recordings.
    pub fn count(&self, metric: &str, attributes: &[(&str, &str)]) -> u64 {
        self.point(metric, attributes).count
    }

    /// Every attribute value of every point.
    pub fn attribute_values(&self) -> Vec<String> {
        self.points
            .iter()
            .flat_map(|p| p.attributes.values().cloned())
            .collect()
    }
}

/// Every attribute value of every span and span event.
pub fn span_attribute_values(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .flat_map(|span| {
            span.attributes
                .iter()
                .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
                .map(|kv| kv.value.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A metric, the attributes of one of its points, and the value (or a histogram's count)
/// expected there.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

const POOL: (&str, &str) = ("db.client.connection.pool.name", "orders");

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The issue's sequence: fill 4 connections, 2 checkouts waiting, one of them timing out, a
/// token rotation, every connection retired by lifetime, a cold start retried twice. Every
/// metric is then read back with its attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_reads_back_after_a_scripted_sequence() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let otel = Otel::new();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(4)
        .wait_timeout(Duration::from_secs(1))
        .max_lifetime(Duration::from_secs(4))
        .lifetime_jitter(0.0)
        .meter(otel.meter())
        .tracer(otel.tracer())
        .pool_name("orders")
        .build()
        .unwrap();

    // Before anything: an empty pool, the semantic conventions' limits.
    let snapshot = otel.collect();
    assert_eq!(snapshot.value("db.client.connection.max", &[POOL]), 4.0);
    assert_eq!(
        snapshot.value("db.client.connection.idle.max", &[POOL]),
        4.0
    );
    assert_eq!(
        snapshot.value("db.client.connection.idle.min", &[POOL]),
        0.0
    );
    let state = |s| [POOL, ("db.client.connection.state", s)];
    assert_eq!(
        snapshot.value("db.client.connection.count", &state("used")),
        0.0
    );

    // 1. Fill 4 connections.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.get().await.unwrap());
    }
    let snapshot = otel.collect();
    assert_eq!(
        snapshot.value("db.client.connection.count", &state("used")),
        4.0
    );
    assert_eq!(
        snapshot.value("db.client.connection.count", &state("idle")),
        0.0
    );
    assert_eq!(
        snapshot.count("db.client.connection.create_time", &[POOL]),
        4
    );

    // 2. Two checkouts wait.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            // Each holds what it gets, so that the other one keeps waiting.
            tokio::spawn(async move { pool.get().await })
        })
        .collect();
    until("two waiting checkouts", || pool.stats().waiting == 2).await;
    let snapshot = otel.collect();
    assert_eq!(
        snapshot.value("db.client.connection.pending_requests", &[POOL]),
        2.0
    );

    // 3. One connection comes back: one waiter gets it, the other times out.
    drop(held.pop());
    let mut outcomes = Vec::new();
    for waiter in waiters {
        outcomes.push(waiter.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(Error::PoolTimeout { .. })))
    );
    drop(outcomes);
    held.clear();
    let snapshot = otel.collect();
    assert_eq!(
        snapshot.value("db.client.connection.timeouts", &[POOL]),
        1.0
    );
    assert_eq!(
        snapshot.value("db.client.connection.pending_requests", &[POOL]),
        0.0
    );
    assert_eq!(
        snapshot.value("db.client.connection.count", &state("idle")),
        4.0
    );
    assert_eq!(
        snapshot.value("db.client.connection.count", &state("used")),
        0.0
    );

    // 4. A rotation: the token is replaced.
    let current = pool.token_cache().token().await.unwrap();
    let _ = pool.token_cache().force_refresh(&current).await.unwrap();

    // 5. The four connections reach their lifetime and are retired while idle.
    until("the lifetime retirements", || {
        pool.stats().retired_lifetime == 4
    })
    .await;

    // 6. A cold start: the compute is suspended and refuses twice while waking.
    lakebase.emulator().set_refusals_while_waking(2);
    lakebase.suspend();
    let connection = pool.get().await.unwrap();
    let _ = connection.simple_query("SELECT 1").await.unwrap();
    drop(connection);

    let s = otel.collect();
    let stats = pool.stats();
    // Five connections opened (four, then the cold start's); seven checkouts waited (four,
    // two waiters, the cold start's); six were used and returned.
    let expected: [Expected; 18] = [
        ("db.client.connection.count", &state("idle"), 1.0),
        ("db.client.connection.count", &state("used"), 0.0),
        ("db.client.connection.max", &[POOL], 4.0),
        ("db.client.connection.pending_requests", &[POOL], 0.0),
        ("db.client.connection.timeouts", &[POOL], 1.0),
        ("lakebase.connections.opened", &[POOL], 5.0),
        (
            "lakebase.connections.retired",
            &[POOL, ("reason", "lifetime")],
            4.0,
        ),
        (
            "lakebase.connections.retired",
            &[POOL, ("reason", "idle")],
            0.0,
        ),
        (
            "lakebase.connections.retired",
            &[POOL, ("reason", "broken")],
            0.0,
        ),
        (
            "lakebase.connect.retries",
            &[POOL, ("cause", "transient")],
            2.0,
        ),
        (
            "lakebase.connect.retries",
            &[POOL, ("cause", "rate_limited")],
            0.0,
        ),
        (
            "lakebase.connect.retries",
            &[POOL, ("cause", "auth_refresh")],
            0.0,
        ),
        ("lakebase.token.mints", &[POOL, ("outcome", "success")], 2.0),
        ("lakebase.token.mints", &[POOL, ("outcome", "failure")], 0.0),
        // Histograms: the number of recordings.
        ("db.client.connection.create_time", &[POOL], 5.0),
        ("db.client.connection.wait_time", &[POOL], 7.0),
        ("db.client.connection.use_time", &[POOL], 6.0),
        (
            "lakebase.token.mint.duration",
            &[POOL, ("outcome", "success")],
            2.0,
        ),
    ];
    for (metric, attributes, value) in expected {
        let point = s.point(metric, attributes);
        let got = if point.kind == "histogram" {
            point.count as f64
        } else {
            point.value
        };
        assert_eq!(got, value, "{metric} {attributes:?}");
    }
    // The timed-out checkout alone waited the whole wait timeout.
    assert!(s.value("db.client.connection.wait_time", &[POOL]) >= 1.0);
    assert!(s.value("db.client.connection.create_time", &[POOL]) > 0.0);
    assert!(s.value("db.client.connection.use_time", &[POOL]) > 0.0);
    let expires_in = s.value("lakebase.token.expires_in", &[POOL]);
    assert!(
        (3000.0..=3600.0).contains(&expires_in),
        "the mock workspace's tokens live an hour: {expires_in}"
    );
    // The exported values are the stats' values.
    assert_eq!(stats.connections_opened, 5);
    assert_eq!(stats.checkout_timeouts, 1);
    // Every point names the pool, and no instrument exists beyond those checked here.
    assert!(
        s.points
            .iter()
            .all(|p| p.attributes.get(POOL.0).map(String::as_str) == Some("orders"))
    );
    let names: BTreeSet<&str> = s.points.iter().map(|p| p.metric.as_str()).collect();
    assert_eq!(names.len(), 16, "{names:?}");

    // The spans: one per connect, one per mint, with the conventions' attributes.
    let spans = otel.spans();
    let connects: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "lakebase.connect")
        .collect();
    let mint_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "lakebase.token.mint")
        .collect();
    for span in &mint_spans {
        let attributes: BTreeMap<String, String> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(attributes["lakebase.credential.kind"], "database token");
        assert_eq!(attributes["outcome"], "success");
        assert_eq!(attributes[POOL.0], "orders");
    }
    let mints = mint_spans.len();
    assert_eq!((connects.len(), mints), (5, 2));
    let host = lakebase.emulator().host_of(LocalLakebase::ENDPOINT);
    let port = lakebase.emulator().port().to_string();
    for span in &connects {
        let attributes: BTreeMap<String, String> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(attributes["db.system.name"], "postgresql");
        assert_eq!(attributes["server.address"], host);
        assert_eq!(attributes["server.port"], port);
        assert_eq!(attributes["db.namespace"], "databricks_postgres");
        assert_eq!(attributes[POOL.0], "orders");
        assert!(!attributes.contains_key("error.type"), "{attributes:?}");
    }
    let cold_start = connects.last().unwrap();
    let retries: Vec<_> = cold_start.events.iter().collect();
    assert_eq!(retries.len(), 2, "{cold_start:?}");
    assert!(retries.iter().all(|event| {
        event.name == "retry"
            && event
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "cause" && kv.value.as_str() == "transient")
    }));
}

/// What a pool exports (with replicas): name, unit, instrument kind.
const POOL_METRICS: [(&str, &str, &str); 20] = [
    (
        "db.client.connection.count",
        "{connection}",
        "updowncounter",
    ),
    ("db.client.connection.create_time", "s", "histogram"),
    (
        "db.client.connection.idle.max",
        "{connection}",
        "updowncounter",
    ),
    (
        "db.client.connection.idle.min",
        "{connection}",
        "updowncounter",
    ),
    ("db.client.connection.max", "{connection}", "updowncounter"),
    (
        "db.client.connection.pending_requests",
        "{request}",
        "updowncounter",
    ),
    ("db.client.connection.timeouts", "{timeout}", "counter"),
    ("db.client.connection.use_time", "s", "histogram"),
    ("db.client.connection.wait_time", "s", "histogram"),
    ("lakebase.cancels", "{request}", "counter"),
    ("lakebase.connect.retries", "{retry}", "counter"),
    ("lakebase.connections.opened", "{connection}", "counter"),
    ("lakebase.connections.retired", "{connection}", "counter"),
    ("lakebase.read.fallbacks", "{read}", "counter"),
    ("lakebase.read.lag_timeouts", "{read}", "counter"),
    ("lakebase.read.lag_waits", "{read}", "counter"),
    ("lakebase.replica.healthy", "{replica}", "gauge"),
    ("lakebase.token.expires_in", "s", "gauge"),
    ("lakebase.token.mint.duration", "s", "histogram"),
    ("lakebase.token.mints", "{mint}", "counter"),
];

/// What the per-user pools export together, under `{app}/users`.
const USER_POOL_METRICS: [(&str, &str, &str); 12] = [
    (
        "db.client.connection.count",
        "{connection}",
        "updowncounter",
    ),
    ("db.client.connection.create_time", "s", "histogram"),
    ("db.client.connection.max", "{connection}", "updowncounter"),
    ("db.client.connection.use_time", "s", "histogram"),
    ("db.client.connection.wait_time", "s", "histogram"),
    ("lakebase.token.mint.duration", "s", "histogram"),
    ("lakebase.token.mints", "{mint}", "counter"),
    ("lakebase.user_pools.created", "{pool}", "counter"),
    ("lakebase.user_pools.evictions", "{pool}", "counter"),
    ("lakebase.user_pools.live", "{pool}", "updowncounter"),
    ("lakebase.user_pools.refused", "{request}", "counter"),
    ("lakebase.user_pools.users", "{user}", "updowncounter"),
];

fn metric_set(metrics: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    metrics
        .iter()
        .map(|(name, unit, kind)| ((*name).to_owned(), (*unit).to_owned(), (*kind).to_owned()))
        .collect()
}

/// The (name, unit, kind) of every point whose pool is `pool_name`.
fn exported_by(snapshot: &Snapshot, pool_name: &str) -> BTreeSet<(String, String, String)> {
    snapshot
        .points
        .iter()
        .filter(|p| p.attributes.get(POOL.0).map(String::as_str) == Some(pool_name))
        .map(|p| (p.metric.clone(), p.unit.clone(), p.kind.to_owned()))
        .collect()
}

/// The names, units and instrument kinds of the semantic conventions for database client
/// connection pools (semconv `database-metrics.md`), and the crate's own, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_units_and_kinds_are_exactly_the_semantic_conventions() {
    let lakebase = LocalLakebase::start_with_replicas(1).await.unwrap();
    let otel = Otel::new();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas([lakebase.replica_endpoint(0)])
        .meter(otel.meter())
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    drop(pool.get_read().await.unwrap());

    let snapshot = otel.collect();
    let mut exported = exported_by(&snapshot, LocalLakebase::ENDPOINT);
    // The replica's health is reported under the replica's name.
    exported.extend(exported_by(
        &snapshot,
        &format!(
            "{}/replica/{}",
            LocalLakebase::ENDPOINT,
            lakebase.replica_endpoint(0)
        ),
    ));
    let all: BTreeSet<_> = snapshot
        .points
        .iter()
        .map(|p| (p.metric.clone(), p.unit.clone(), p.kind.to_owned()))
        .collect();
    assert_eq!(exported, metric_set(&POOL_METRICS));
    assert_eq!(all, exported, "nothing without a pool name");
}

/// The README's table of metrics is exactly what is exported: names, instruments and units.
#[test]
fn the_readmes_metric_table_is_what_is_exported() {
    let readme = include_str!("../../README.md");
    let table: BTreeSet<(String, String, String)> = readme
        .lines()
        .filter(|line| line.starts_with("| `db.client") || line.starts_with("| `lakebase."))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let kind = match cells[2] {
                "up-down counter" => "updowncounter",
                other => other,
            };
            (
                cells[1].trim_matches('`').to_owned(),
                cells[3].trim_matches('`').to_owned(),
                kind.to_owned(),
            )
        })
        .collect();
    let mut exported = metric_set(&POOL_METRICS);
    exported.extend(metric_set(&USER_POOL_METRICS));
    assert_eq!(table, exported);
}

/// Without `pool_name`, the pool is named after its Lakebase endpoint, its replica after
/// both; the replica's health and the fallbacks are reported under those names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_report_under_their_own_names_with_health_and_fallbacks() {
    let lakebase = LocalLakebase::start_with_replicas(1).await.unwrap();
    let otel = Otel::new();
    let replica = lakebase.replica_endpoint(0);
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas([replica.clone()])
        .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
        .meter(otel.meter())
        .build()
        .unwrap();
    drop(pool.get_read().await.unwrap());
    let key = "db.client.connection.pool.name";
    let primary = [(key, LocalLakebase::ENDPOINT)];
    let replica_name = format!("{}/replica/{replica}", LocalLakebase::ENDPOINT);
    let of_replica = [(key, replica_name.as_str())];
    let s = otel.collect();
    assert_eq!(s.value("lakebase.replica.healthy", &of_replica), 1.0);
    assert_eq!(s.value("lakebase.connections.opened", &of_replica), 1.0);
    assert_eq!(s.value("lakebase.connections.opened", &primary), 0.0);
    assert_eq!(s.value("lakebase.read.fallbacks", &primary), 0.0);

    // The standby stops: the next read falls back to the primary; the replica is unhealthy.
    lakebase.replica(0).unwrap().stop(StopMode::Fast).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(pool.get_read().await.unwrap());
    let s = otel.collect();
    assert_eq!(s.value("lakebase.replica.healthy", &of_replica), 0.0);
    assert_eq!(s.value("lakebase.read.fallbacks", &primary), 1.0);
    assert_eq!(s.value("lakebase.connections.opened", &primary), 1.0);
    let broken = [(key, replica_name.as_str()), ("reason", "broken")];
    assert_eq!(s.value("lakebase.connections.retired", &broken), 1.0);
}

/// The tracing span of a connect carries the same attributes, for `tracing-opentelemetry`.
#[tokio::test]
async fn the_tracing_connect_span_carries_the_conventions_attributes() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let (logs, _guard) = LogCapture::install();
    let pool: Pool = lakebase.pool_builder().unwrap().build().unwrap();
    drop(pool.get().await.unwrap());
    let text = logs.text();
    let line = text
        .lines()
        .find(|line| line.contains("connection opened"))
        .unwrap_or_else(|| panic!("{text}"));
    let host = lakebase.emulator().host_of(LocalLakebase::ENDPOINT);
    for field in [
        "db.system.name=\"postgresql\"".to_owned(),
        format!("server.address=\"{host}\""),
        format!("server.port={}", lakebase.emulator().port()),
        "db.namespace=\"databricks_postgres\"".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} in {line}");
    }
    // tracing-opentelemetry's metrics layer turns fields with these prefixes into metrics;
    // none of ours has one, so nothing is counted twice.
    for prefix in ["monotonic_counter.", " counter.", "histogram."] {
        assert!(!text.contains(prefix), "{prefix} in {text}");
    }
}

/// The per-user pools report as one pool, `{app}/users`, with counts that name no user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_pools_report_together_under_one_name() {
    use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};

    let (lakebase, builder) = crate::users::apps_stack().await;
    let tokens = lakebase
        .add_users(&[crate::users::ALICE, crate::users::BOB])
        .await
        .unwrap();
    let otel = Otel::new();
    let users = UserPools::builder(builder.meter(otel.meter()))
        .forwarded_headers(ForwardedHeaders::Trusted)
        .build()
        .unwrap();
    let alice = ForwardedUser::new(crate::users::ALICE, tokens[0].clone());
    let bob = ForwardedUser::new(crate::users::BOB, tokens[1].clone());
    let held = users.for_user(&alice).await.unwrap();
    drop(users.for_user(&bob).await.unwrap());
    let expired = lakebase
        .workspace()
        .issue_expired_user_token(crate::users::ALICE);
    let refused = users
        .for_user(&ForwardedUser::new(crate::users::ALICE, expired))
        .await;
    assert!(refused.is_err());

    let name = format!("{}/users", LocalLakebase::ENDPOINT);
    let pool = ("db.client.connection.pool.name", name.as_str());
    let s = otel.collect();
    assert_eq!(exported_by(&s, &name), metric_set(&USER_POOL_METRICS));
    let state = |st| [pool, ("db.client.connection.state", st)];
    assert_eq!(s.value("db.client.connection.count", &state("used")), 1.0);
    assert_eq!(s.value("db.client.connection.count", &state("idle")), 1.0);
    // 32 users of 2 connections each, by default.
    assert_eq!(s.value("db.client.connection.max", &[pool]), 64.0);
    assert_eq!(s.value("lakebase.user_pools.users", &[pool]), 2.0);
    assert_eq!(s.value("lakebase.user_pools.live", &[pool]), 2.0);
    assert_eq!(s.value("lakebase.user_pools.created", &[pool]), 2.0);
    assert_eq!(s.value("lakebase.user_pools.refused", &[pool]), 1.0);
    assert_eq!(
        s.value("lakebase.user_pools.evictions", &[pool, ("reason", "lru")]),
        0.0
    );
    assert_eq!(
        s.value("lakebase.token.mints", &[pool, ("outcome", "success")]),
        2.0
    );
    // The users' checkouts and connects are recorded under the same name, as one pool.
    assert_eq!(s.count("db.client.connection.wait_time", &[pool]), 2);
    assert_eq!(s.count("db.client.connection.create_time", &[pool]), 2);
    assert_eq!(s.count("db.client.connection.use_time", &[pool]), 1);
    assert_eq!(
        s.count(
            "lakebase.token.mint.duration",
            &[pool, ("outcome", "success")]
        ),
        2
    );
    // The app's own pool reports under its own name.
    let app = ("db.client.connection.pool.name", LocalLakebase::ENDPOINT);
    assert_eq!(s.value("db.client.connection.max", &[app]), 16.0);
    drop(held);
}

/// Observable instruments hold the pool weakly: once it is dropped, nothing is reported for
/// it (and it is not kept alive by the meter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pool_stops_reporting() {
    let pg = crate::support::cluster().await;
    let otel = Otel::new();
    let pool = crate::support::app_pool(&pg)
        .meter(otel.meter())
        .pool_name("short-lived")
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let named = |s: &Snapshot| {
        s.points
            .iter()
            .filter(|p| p.kind != "histogram")
            .filter(|p| p.attributes.values().any(|v| v == "short-lived"))
            .count()
    };
    assert!(named(&otel.collect()) > 0);
    drop(pool);
    assert_eq!(named(&otel.collect()), 0);
}

/// Failures are exported too: a failed mint as `outcome = failure` with a span whose
/// `error.type` names the cause, and a connect that runs out of retries as a connect span with
/// its retry events and `error.type` = the error's kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mints_and_connects_are_exported_with_their_error_type() {
    use lakebase_pool::credentials::{Credential, from_fn};
    use opentelemetry::trace::Status;

    let pg = crate::support::cluster().await;
    let otel = Otel::new();
    let failing = pg
        .pool_builder(crate::support::ROLE)
        .credentials(from_fn(|| async {
            Err::<Credential, _>(std::io::Error::other("token service down"))
        }))
        .meter(otel.meter())
        .tracer(otel.tracer())
        .pool_name("failing-mints")
        .build()
        .unwrap();
    assert!(matches!(
        failing.get().await,
        Err(Error::Credentials { .. })
    ));

    let unreachable = crate::support::app_pool(&pg)
        .retry(RetryPolicy::default().deadline(Duration::from_millis(500)))
        .meter(otel.meter())
        .tracer(otel.tracer())
        .pool_name("server-down")
        .build()
        .unwrap();
    pg.stop(StopMode::Fast).unwrap();
    assert!(matches!(
        unreachable.get().await,
        Err(Error::ConnectRetriesExhausted { .. })
    ));

    let s = otel.collect();
    let mints = ("db.client.connection.pool.name", "failing-mints");
    assert_eq!(
        s.value("lakebase.token.mints", &[mints, ("outcome", "failure")]),
        1.0
    );
    assert_eq!(
        s.value("lakebase.token.mints", &[mints, ("outcome", "success")]),
        0.0
    );
    assert_eq!(
        s.count(
            "lakebase.token.mint.duration",
            &[mints, ("outcome", "failure")]
        ),
        1
    );
    let down = ("db.client.connection.pool.name", "server-down");
    let retries = s.value("lakebase.connect.retries", &[down, ("cause", "transient")]);
    assert!(retries >= 1.0, "{retries}");
    assert_eq!(s.count("db.client.connection.wait_time", &[down]), 1);
    // A connection that never opened records no create time.
    assert!(!s.points.iter().any(|p| {
        p.metric == "db.client.connection.create_time"
            && p.attributes.get(down.0).map(String::as_str) == Some(down.1)
    }));

    let spans = otel.spans();
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let mint = spans
        .iter()
        .find(|s| s.name == "lakebase.token.mint")
        .expect("a mint span");
    assert_eq!(
        attribute(mint, "error.type").as_deref(),
        Some("provider_error")
    );
    assert_eq!(attribute(mint, "outcome").as_deref(), Some("failure"));
    assert!(matches!(mint.status, Status::Error { .. }));
    let connect = spans
        .iter()
        .find(|s| s.name == "lakebase.connect")
        .expect("a connect span");
    assert_eq!(
        attribute(connect, "error.type").as_deref(),
        Some("ConnectRetriesExhausted")
    );
    assert_eq!(
        connect.events.iter().count() as f64,
        retries,
        "one event per retry"
    );
    assert!(matches!(connect.status, Status::Error { .. }));
}

/// A checkout dropped while its connect retries (a caller's timeout, a client gone) still ends
/// its connect span, as `error.type = cancelled`, with the retries it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_dropped_midway_ends_its_span_as_cancelled() {
    let pg = crate::support::cluster().await;
    let otel = Otel::new();
    let pool = crate::support::app_pool(&pg)
        .tracer(otel.tracer())
        .meter(otel.meter())
        .build()
        .unwrap();
    pg.stop(StopMode::Fast).unwrap();
    let checkout = tokio::time::timeout(Duration::from_millis(700), pool.get()).await;
    assert!(checkout.is_err(), "still retrying when dropped");
    let spans = otel.spans();
    let connect = spans
        .iter()
        .find(|s| s.name == "lakebase.connect")
        .expect("the connect span ended");
    let error_type = connect
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "error.type")
        .map(|kv| kv.value.to_string());
    assert_eq!(error_type.as_deref(), Some("cancelled"));
    assert!(connect.events.iter().count() >= 1, "{connect:?}");
}
