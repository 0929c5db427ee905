//! Synchronous standbys and their promotion: what an HA endpoint's secondary is.

use std::time::{Duration, Instant};

use postgres_protocol::escape::escape_literal;

use super::{HarnessError, LocalPostgres, run};

/// How long a new synchronous standby may take to catch up and be acknowledged as such.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

impl LocalPostgres {
    /// Starts a standby of this server (as [`start_standby`](Self::start_standby)) and makes
    /// it synchronous: from then on this server acknowledges a commit only once the standby
    /// has it, so a failover to it loses no acknowledged write (an HA endpoint's secondary).
    ///
    /// # Errors
    ///
    /// As for [`start_standby`](Self::start_standby); [`HarnessError::NotReady`] when the
    /// standby is not synchronous within 30 s.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// let pg = lakebase_pool_testing::LocalPostgres::start()?;
    /// let secondary = pg.start_synchronous_standby().await?;
    /// pg.stop(lakebase_pool_testing::StopMode::Immediate)?;
    /// secondary.promote()?; // every write `pg` acknowledged is on it
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_synchronous_standby(&self) -> Result<LocalPostgres, HarnessError> {
        let this = self.clone();
        let name = format!("secondary_{}", fastrand::u64(..));
        let copied = name.clone();
        let standby = tokio::task::spawn_blocking(move || this.copy_as_standby(Some(&copied)))
            .await
            .map_err(|e| HarnessError::Io {
                action: "copy the server",
                source: std::io::Error::other(e.to_string()),
            })??;
        let admin = self.admin().await?;
        let names = escape_literal(&format!("\"{name}\""));
        // Two statements: ALTER SYSTEM cannot run in the implicit transaction of a batch.
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = {names}"
            ))
            .await?;
        admin.batch_execute("SELECT pg_reload_conf()").await?;
        let started = Instant::now();
        loop {
            let row = admin
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication \
                     WHERE application_name = $1 AND sync_state = 'sync'",
                    &[&name],
                )
                .await?;
            if row.is_some() {
                return Ok(standby);
            }
            if started.elapsed() > SYNC_TIMEOUT {
                return Err(HarnessError::NotReady {
                    waited: started.elapsed(),
                    log: String::from("the standby did not become synchronous"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote`), waiting until it takes writes.
    ///
    /// # Errors
    ///
    /// [`HarnessError::CommandFailed`] when the server is not a standby or does not finish
    /// its promotion within 30 s.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let standby = pg.start_standby()?;
    /// standby.promote()?;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn promote(&self) -> Result<(), HarnessError> {
        let mut command = self.inner.command("pg_ctl");
        let _ = command
            .arg("promote")
            .arg("-D")
            .arg(self.inner.data_dir())
            .args(["-w", "-t", "30"]);
        run(command)
    }
}
