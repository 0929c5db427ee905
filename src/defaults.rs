//! Every default of the pool in one place, with the reason for it.
//!
//! Each value can be changed through [`PoolBuilder`](crate::PoolBuilder),
//! [`RetryPolicy`](crate::RetryPolicy) or [`CachePolicy`](crate::CachePolicy).
//!
//! | setting | default | why |
//! |---|---|---|
//! | token reuse | while >= 2 min of life is left | Postgres checks the token only at login, so a token with minutes left is as good as a new one |
//! | token refresh ahead | in the background once < 15 min is left | callers never wait on a mint while a valid token exists |
//! | token mint timeout | 30 s | every network call has a bound |
//! | token failure back-off | 1 s doubling to 30 s | a failing workspace is not hammered; recovery is noticed within 30 s |
//! | longest token lifetime believed | 24 h | an absurd `expire_time` or `expires_in` from a server is clamped, never overflows a clock |
//! | max lifetime | 45 min, shortened per connection by a random 0-5 % | connections are replaced well before server-side limits, and connections opened together do not all reconnect together |
//! | idle timeout | 10 min | idle connections close, so a scale-to-zero compute can suspend |
//! | validation | a round trip only for connections idle >= 5 s | catches connections killed while idle without a query on every checkout |
//! | keep-alive queries | never | a pool must not keep a compute awake and billed |
//! | TCP keep-alive | probes after 30 s of silence, every 10 s, 3 unanswered end the connection | a server that vanished without closing (network partition, host loss) is noticed in about a minute, not the operating system's two hours; probes are not queries and keep nothing awake |
//! | TCP user timeout (Linux) | 60 s | data sent to a vanished server (a query in flight) ends the connection in the same minute as an idle one, not after ~15 min of retransmissions |
//! | max size | 16 | |
//! | wait timeout | 30 s | `get()` never waits forever for a free connection |
//! | the pool's own statements (`BEGIN`, `COMMIT`, `ROLLBACK`, `LISTEN`, validation) | 10 s each | a server that stalls after login costs seconds, not a hang; long enough for a large commit |
//! | stalled connect tries | within 60 s of the server ending one of the pool's sessions: a try without an answer after 1 s is replaced by a fresh one, with a 2 s window, then 4 s, ... within the connect timeout | after a failover the proxy holds a connect on the dead compute for ~3 s while the new primary answers at once; a login takes well under 1 s; one try at a time, and the doubling lets a slow login finish; not otherwise, since a cold start gains nothing from a fresh try (the wake is the endpoint's) and a slow login would lose the time spent |
//! | connect attempt timeout | 10 s | covers TCP, TLS and login together (tokio-postgres's own timeout covers only TCP) |
//! | cold-start backoff | 100 ms doubling to 4 s, full jitter; rate-limit errors 2-4 s | a waking compute usually answers within a second; full jitter spreads a crowd of reconnects |
//! | TLS | `disable` (plain) for loopback hosts, `verify-full` for any other; `require` verifies too | a bearer token must never cross an unverified channel |
//! | database (Lakebase) | `databricks_postgres` | the database every new Lakebase project has |
//! | cold-start deadline | 40 s | the Lakebase proxy's own wake-up budget is about 13 s, and it answers a failed wake from a 30 s cache: the deadline outlasts both |
//! | read replica catch-up (`get_read_at`) | 2 s, polled from 5 ms doubling to 100 ms | replicas usually replay within milliseconds; past seconds, the read-write endpoint answers sooner than the replica will |
//! | a read replica's connect deadline and attempt timeout | 5 s (or the pool's, when shorter) | a read can go to the primary instead: one that finds its replica unreachable (an HA endpoint's read-only host between a failover and the new secondary) falls back within seconds, not after the primary's 40 s; a waking replica usually answers within 1-2 s |
//! | unhealthy read replica | skipped for 1 s doubling to 30 s between probe connects, run in the background | once a replica is known to be down, no read waits for it (only the read that found it down paid its connect deadline), and one that comes back is used within about 30 s |
//! | users with a pool (`UserPools`) | 32 | with 2 connections each, 64 sessions: with the app's own pool, within the ~104 connections of the smallest Lakebase compute |
//! | connections per user | 2 | one person's requests rarely overlap more; the Node AppKit uses 3 |
//! | a user's idle connection | closed after 30 s | users come and go; their sessions should not hold the compute awake |
//! | a user without requests | dropped after 5 min, pool, tokens and all | what is not kept cannot leak or pile up |
//! | a checked user token | checked again after 5 min | the Apps proxy replaces tokens well before they expire |

use std::time::Duration;

pub(crate) const TOKEN_MIN_REMAINING: Duration = Duration::from_secs(2 * 60);
pub(crate) const TOKEN_REFRESH_AHEAD: Duration = Duration::from_secs(15 * 60);
pub(crate) const TOKEN_MINT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a token is trusted for, whatever its server claims (Lakebase and workspace
/// tokens live an hour).
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
pub(crate) const TOKEN_FAILURE_BACKOFF: Duration = Duration::from_secs(1);
pub(crate) const TOKEN_MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(45 * 60);
pub(crate) const LIFETIME_JITTER: f64 = 0.05;
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub(crate) const VALIDATE_AFTER_IDLE: Duration = Duration::from_secs(5);
pub(crate) const MAX_SIZE: usize = 16;
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each statement the pool sends itself (validation, `BEGIN`/`COMMIT`/`ROLLBACK`,
/// `LISTEN`).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on delivering one cancel request (connect, TLS, send): a cancel that the network
/// swallows must not hold anything up.
pub(crate) const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statement cancelled by `Connection::timeout` may take to end on the server
/// before its connection is closed instead of reused.
pub(crate) const CANCEL_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `get_read_at` waits for a replica to replay a write position.
pub(crate) const REPLICA_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const REPLICA_CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// The database a new Lakebase project starts with.
pub(crate) const LAKEBASE_DATABASE: &str = "databricks_postgres";

pub(crate) const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub(crate) const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Linux's `TCP_USER_TIMEOUT`: unacknowledged data ends the connection after this long, as
/// keep-alive does for an idle one (30 s + 3 x 10 s).
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const STALLED_TRY_WINDOW: Duration = Duration::from_secs(1);
/// How long after the server ended a session stalled connect tries are replaced.
pub(crate) const FAILOVER_SUSPECTED: Duration = Duration::from_secs(60);
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Outlasts the Lakebase proxy's 30 s cache of a failed wake of the compute.
pub(crate) const CONNECT_DEADLINE: Duration = Duration::from_secs(40);

pub(crate) const MAX_USERS: usize = 32;
pub(crate) const USER_MAX_SIZE: usize = 2;
pub(crate) const USER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const USER_EVICT_AFTER: Duration = Duration::from_secs(5 * 60);
pub(crate) const USER_TOKEN_RECHECK: Duration = Duration::from_secs(5 * 60);
