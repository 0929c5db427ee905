//! [`PoolSettings`]: the pool's settings as data (feature `serde`), read from TOML, YAML, JSON
//! or the environment (the `config` crate, as deadpool-postgres users load theirs) and
//! applied to a [`PoolBuilder`] with [`PoolBuilder::settings`].

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::PoolBuilder;
use crate::pool::ReadFallback;
use crate::tls::SslMode;

/// The pool's settings as data: every field is optional, and only those given change the
/// builder they are applied to ([`PoolBuilder::settings`]). Durations are written as
/// humans write them (`"45m"`, `"1h 30m"`, `"500ms"`). Unknown keys are refused, so that a
/// misspelt setting is an error rather than silently ignored.
///
/// Credentials, the workspace, a resolver hook and the telemetry are code, not data: set
/// them on the builder.
///
/// ```
/// use lakebase_pool::{PoolBuilder, PoolSettings};
///
/// let settings: PoolSettings = serde_json::from_str(
///     r#"{ "endpoint": "projects/shop/branches/main/endpoints/primary",
///          "max_size": 32, "max_lifetime": "30m", "retry": { "deadline": "45s" } }"#,
/// )?;
/// // Usually on top of `PoolBuilder::from_env()?`, which brings the workspace and its token.
/// let builder = PoolBuilder::default().settings(settings);
/// # let _ = builder;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolSettings {
    /// The Lakebase endpoint, `projects/<p>/branches/<b>/endpoints/<e>`
    /// ([`PoolBuilder::lakebase_endpoint`]).
    pub endpoint: Option<String>,
    /// [`PoolBuilder::host`].
    pub host: Option<String>,
    /// [`PoolBuilder::port`].
    pub port: Option<u16>,
    /// [`PoolBuilder::user`].
    pub user: Option<String>,
    /// [`PoolBuilder::dbname`].
    pub dbname: Option<String>,
    /// [`PoolBuilder::application_name`].
    pub application_name: Option<String>,
    /// [`PoolBuilder::statement_timeout`].
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` ([`PoolBuilder::ssl_mode`]).
    #[serde(deserialize_with = "parsed")]
    pub ssl_mode: Option<SslMode>,
    /// A PEM file of CA certificates to trust ([`PoolBuilder::root_certificates_file`]).
    pub root_certificates_file: Option<PathBuf>,
    /// [`PoolBuilder::max_size`].
    pub max_size: Option<usize>,
    /// [`PoolBuilder::max_lifetime`].
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// [`PoolBuilder::lifetime_jitter`].
    pub lifetime_jitter: Option<f64>,
    /// [`PoolBuilder::idle_timeout`].
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// [`PoolBuilder::validate_after_idle`].
    #[serde(with = "humantime_serde")]
    pub validate_after_idle: Option<Duration>,
    /// [`PoolBuilder::wait_timeout`].
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Option<Duration>,
    /// Read-only endpoints (or hosts) to read from ([`PoolBuilder::read_replicas`]).
    pub read_replicas: Option<Vec<String>>,
    /// `true`: the branch's read-only endpoints ([`PoolBuilder::read_replicas_of_branch`]);
    /// `false`: not them.
    pub read_replicas_of_branch: Option<bool>,
    /// `true`: the endpoint's read-only host ([`PoolBuilder::read_only_host_as_replica`]);
    /// `false`: not it.
    pub read_only_host_as_replica: Option<bool>,
    /// `primary` or `fail` ([`PoolBuilder::read_fallback`]).
    #[serde(deserialize_with = "fallback")]
    pub read_fallback: Option<ReadFallback>,
    /// [`PoolBuilder::replica_max_size`].
    pub replica_max_size: Option<usize>,
    /// [`PoolBuilder::replica_catch_up_timeout`].
    #[serde(with = "humantime_serde")]
    pub replica_catch_up_timeout: Option<Duration>,
    /// How connects are timed and retried ([`PoolBuilder::retry`]).
    pub retry: RetrySettings,
    /// When tokens are minted ([`PoolBuilder::cache_policy`]).
    pub tokens: TokenSettings,
}

/// [`RetryPolicy`](crate::RetryPolicy) as data, in [`PoolSettings::retry`]; fields not given
/// keep the builder's.
///
/// ```
/// let retry: lakebase_pool::RetrySettings =
///     serde_json::from_str(r#"{ "connect_timeout": "5s", "backoff_max": "2s" }"#)?;
/// assert_eq!(retry.connect_timeout, Some(std::time::Duration::from_secs(5)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// [`RetryPolicy::connect_timeout`](crate::RetryPolicy::connect_timeout).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// [`RetryPolicy::command_timeout`](crate::RetryPolicy::command_timeout).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Option<Duration>,
    /// The first wait of [`RetryPolicy::backoff`](crate::RetryPolicy::backoff).
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    /// The longest wait of [`RetryPolicy::backoff`](crate::RetryPolicy::backoff).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// [`RetryPolicy::deadline`](crate::RetryPolicy::deadline).
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
}

/// [`CachePolicy`](crate::CachePolicy) as data, in [`PoolSettings::tokens`]; fields not given
/// keep the builder's.
///
/// ```
/// let tokens: lakebase_pool::TokenSettings =
///     serde_json::from_str(r#"{ "refresh_ahead": "10m" }"#)?;
/// assert_eq!(tokens.refresh_ahead, Some(std::time::Duration::from_secs(600)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenSettings {
    /// [`CachePolicy::min_remaining`](crate::CachePolicy::min_remaining).
    #[serde(with = "humantime_serde")]
    pub min_remaining: Option<Duration>,
    /// [`CachePolicy::refresh_ahead`](crate::CachePolicy::refresh_ahead).
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Option<Duration>,
    /// [`CachePolicy::mint_timeout`](crate::CachePolicy::mint_timeout).
    #[serde(with = "humantime_serde")]
    pub mint_timeout: Option<Duration>,
    /// The first wait of [`CachePolicy::failure_backoff`](crate::CachePolicy::failure_backoff).
    #[serde(with = "humantime_serde")]
    pub failure_backoff_initial: Option<Duration>,
    /// The longest wait of [`CachePolicy::failure_backoff`](crate::CachePolicy::failure_backoff).
    #[serde(with = "humantime_serde")]
    pub failure_backoff_max: Option<Duration>,
}

/// A setting written as its `FromStr` text (`"verify-full"`), with the crate's own message
/// when it is not one.
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = crate::Error>,
{
    Option::<String>::deserialize(deserializer)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}

fn fallback<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ReadFallback>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| match text.trim() {
            "primary" => Ok(ReadFallback::Primary),
            "fail" => Ok(ReadFallback::Fail),
            other => Err(serde::de::Error::custom(format!(
                "read_fallback `{other}` is not one of `primary`, `fail`"
            ))),
        })
        .transpose()
}

impl PoolBuilder {
    /// Applies `settings`: each setting given replaces the builder's, as its setter would;
    /// those not given keep theirs (from [`from_env`](Self::from_env), or the defaults).
    /// Settings are checked where the setters' are, at [`build`](Self::build).
    ///
    /// ```
    /// use lakebase_pool::{PoolBuilder, PoolSettings};
    /// use std::time::Duration;
    ///
    /// let settings: PoolSettings = serde_json::from_str(r#"{ "max_size": 8, "idle_timeout": "2m" }"#)?;
    /// let from_data = PoolBuilder::default().settings(settings);
    /// let by_hand = PoolBuilder::default().max_size(8).idle_timeout(Duration::from_secs(120));
    /// assert_eq!(format!("{from_data:?}"), format!("{by_hand:?}"));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn settings(mut self, settings: PoolSettings) -> Self {
        let PoolSettings {
            endpoint,
            host,
            port,
            user,
            dbname,
            application_name,
            statement_timeout,
            ssl_mode,
            root_certificates_file,
            max_size,
            max_lifetime,
            lifetime_jitter,
            idle_timeout,
            validate_after_idle,
            wait_timeout,
            read_replicas,
            read_replicas_of_branch,
            read_only_host_as_replica,
            read_fallback,
            replica_max_size,
            replica_catch_up_timeout,
            retry,
            tokens,
        } = settings;
        /// `builder.setter(value)` for each setting given.
        macro_rules! apply {
            ($($value:ident => $setter:ident),* $(,)?) => {
                $(if let Some(value) = $value {
                    self = self.$setter(value);
                })*
            };
        }
        apply!(
            endpoint => lakebase_endpoint,
            host => host,
            port => port,
            user => user,
            dbname => dbname,
            application_name => application_name,
            statement_timeout => statement_timeout,
            ssl_mode => ssl_mode,
            root_certificates_file => root_certificates_file,
            max_size => max_size,
            max_lifetime => max_lifetime,
            lifetime_jitter => lifetime_jitter,
            idle_timeout => idle_timeout,
            validate_after_idle => validate_after_idle,
            wait_timeout => wait_timeout,
            read_replicas => read_replicas,
            read_fallback => read_fallback,
            replica_max_size => replica_max_size,
            replica_catch_up_timeout => replica_catch_up_timeout,
        );
        if let Some(of_branch) = read_replicas_of_branch {
            self.replicas.of_branch = of_branch;
        }
        if let Some(read_only_host) = read_only_host_as_replica {
            self.replicas.read_only_host = read_only_host;
        }
        self.retry = retry.apply(self.retry.clone());
        self.cache_policy = tokens.apply(self.cache_policy.clone());
        self
    }
}

impl RetrySettings {
    fn apply(self, mut policy: crate::RetryPolicy) -> crate::RetryPolicy {
        if let Some(timeout) = self.connect_timeout {
            policy = policy.connect_timeout(timeout);
        }
        if let Some(timeout) = self.command_timeout {
            policy = policy.command_timeout(timeout);
        }
        if self.backoff_initial.is_some() || self.backoff_max.is_some() {
            let (initial, max) = policy.backoff_bounds();
            policy = policy.backoff(
                self.backoff_initial.unwrap_or(initial),
                self.backoff_max.unwrap_or(max),
            );
        }
        if let Some(deadline) = self.deadline {
            policy = policy.deadline(deadline);
        }
        policy
    }
}

impl TokenSettings {
    fn apply(self, mut policy: crate::CachePolicy) -> crate::CachePolicy {
        if let Some(min) = self.min_remaining {
            policy = policy.min_remaining(min);
        }
        if let Some(ahead) = self.refresh_ahead {
            policy = policy.refresh_ahead(ahead);
        }
        if let Some(timeout) = self.mint_timeout {
            policy = policy.mint_timeout(timeout);
        }
        if self.failure_backoff_initial.is_some() || self.failure_backoff_max.is_some() {
            let current = policy.failure_backoff;
            policy = policy.failure_backoff(
                self.failure_backoff_initial.unwrap_or(current.initial),
                self.failure_backoff_max.unwrap_or(current.max),
            );
        }
        policy
    }
}
