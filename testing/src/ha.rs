//! An endpoint with high availability: a primary, a synchronous secondary behind the
//! endpoint's read-only host, and a failover as Lakebase runs one.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::emulator::EmulatorHandle;
use super::{HarnessError, LocalPostgres, StopMode};

/// An emulated Lakebase endpoint with high availability (made by
/// [`LakebaseEmulator::add_ha_endpoint`](crate::LakebaseEmulator::add_ha_endpoint) or
/// [`LocalLakebase::start_ha`](crate::LocalLakebase::start_ha)): its host is served by a
/// primary, and its read-only host (`<id>-ro.<domain>`, reported by the mock workspace as
/// `status.hosts.read_only_host`) by a synchronous standby, the secondary. Every commit the
/// primary acknowledges is on the secondary, so a failover loses none.
///
/// [`fail_over`](Self::fail_over) does what Lakebase does: the primary stops (its sessions
/// end), the secondary is promoted, and the endpoint's host routes to it; connections that
/// looked up the old primary meanwhile are held about 3 s and refused, as the proxy's are.
/// The read-only host has nothing behind it until a new secondary, a copy of the new
/// primary, replaces the old one.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
/// let pool = lakebase.pool_builder()?.read_only_host_as_replica().build()?;
/// pool.get().await?.batch_execute("CREATE TABLE t (id int)").await?;
///
/// let ha = lakebase.ha().expect("started with high availability");
/// let failover = ha.fail_over().await?;
/// println!("the new primary answered {:?} after the old one stopped", failover.routed_at - failover.stopped_at);
/// pool.get().await?.execute("INSERT INTO t VALUES (1)", &[]).await?;
/// # Ok(())
/// # }
/// ```
pub struct HaEndpoint {
    name: String,
    emulator: EmulatorHandle,
    servers: Mutex<Servers>,
    /// One failover at a time.
    failing_over: tokio::sync::Mutex<()>,
}

struct Servers {
    primary: LocalPostgres,
    secondary: Option<LocalPostgres>,
    /// Old primaries, stopped, kept until the endpoint is dropped.
    retired: Vec<LocalPostgres>,
}

/// When a [`HaEndpoint::fail_over`] stopped the old primary and when the endpoint's host
/// reached the new one.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Failover {
    /// The old primary stopped (immediately, as a crash): its sessions ended.
    pub stopped_at: Instant,
    /// The new primary took writes and the endpoint's host was routed to it.
    pub routed_at: Instant,
}

impl HaEndpoint {
    /// Serves `name` from `primary`, with a new synchronous secondary behind its read-only
    /// host.
    pub(crate) async fn start(
        emulator: EmulatorHandle,
        name: &str,
        primary: &LocalPostgres,
    ) -> Result<Self, HarnessError> {
        let secondary = primary.start_synchronous_standby().await?;
        emulator.route(name, primary.socket_path());
        emulator.route_read_only(name, Some(secondary.socket_path()));
        Ok(HaEndpoint {
            name: name.to_owned(),
            emulator,
            servers: Mutex::new(Servers {
                primary: primary.clone(),
                secondary: Some(secondary),
                retired: Vec::new(),
            }),
            failing_over: tokio::sync::Mutex::new(()),
        })
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Servers> {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server behind the endpoint's host now.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
    /// let primary = lakebase.ha().unwrap().primary();
    /// let rows = primary.admin().await?.query("SELECT 1", &[]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn primary(&self) -> LocalPostgres {
        self.servers().primary.clone()
    }

    /// The server behind the read-only host now: `None` during a failover, until the new
    /// secondary is running.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
    /// if let Some(secondary) = lakebase.ha().unwrap().secondary() {
    ///     secondary.pause_replay().await?; // reads through the read-only host fall behind
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn secondary(&self) -> Option<LocalPostgres> {
        self.servers().secondary.clone()
    }

    /// Fails the endpoint over: the primary stops as in a crash, the secondary is promoted
    /// and the endpoint's host routed to it; then a new secondary (a copy of the new
    /// primary) is started behind the read-only host. Returns once all of it is done, with
    /// the moments the failover itself took.
    ///
    /// # Errors
    ///
    /// When a server cannot be stopped, promoted or copied.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
    /// let failover = lakebase.ha().unwrap().fail_over().await?;
    /// assert!(failover.routed_at >= failover.stopped_at);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fail_over(&self) -> Result<Failover, HarnessError> {
        let _one_at_a_time = self.failing_over.lock().await;
        let (old, secondary) = {
            let servers = self.servers();
            (servers.primary.clone(), servers.secondary.clone())
        };
        let secondary = secondary.ok_or_else(|| {
            HarnessError::InvalidName(format!("{} has no secondary to fail over to", self.name))
        })?;
        // The secondary is about to take writes: reads through the read-only host stop.
        self.emulator.route_read_only(&self.name, None);
        self.servers().secondary = None;
        let stopped_at = Instant::now();
        blocking(move || old.stop(StopMode::Immediate)).await?;
        let promoted = secondary.clone();
        blocking(move || promoted.promote()).await?;
        self.emulator.route(&self.name, secondary.socket_path());
        let routed_at = Instant::now();
        {
            let mut servers = self.servers();
            let old = std::mem::replace(&mut servers.primary, secondary.clone());
            servers.retired.push(old);
        }
        tracing::info!(endpoint = %self.name, took_ms = (routed_at - stopped_at).as_millis() as u64, "emulator: failed over");
        let replacement = secondary.start_synchronous_standby().await?;
        self.emulator
            .route_read_only(&self.name, Some(replacement.socket_path()));
        self.servers().secondary = Some(replacement);
        Ok(Failover {
            stopped_at,
            routed_at,
        })
    }
}

impl std::fmt::Debug for HaEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaEndpoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Runs a blocking harness step (`pg_ctl`) off the runtime's threads.
async fn blocking(
    step: impl FnOnce() -> Result<(), HarnessError> + Send + 'static,
) -> Result<(), HarnessError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| HarnessError::Io {
            action: "run a server command",
            source: std::io::Error::other(e.to_string()),
        })?
}
