//! Reading configuration from environment variables.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::endpoint::EndpointName;
use crate::error::Error;
use crate::secret::Secret;
use crate::tls::{ChannelBinding, SslMode, SslNegotiation};

/// A snapshot of environment variables, which configuration is read from.
///
/// [`Environment::from_process`] takes the process environment; [`Environment::from_vars`]
/// builds one from pairs, for tests or for settings that come from elsewhere. Empty values
/// count as unset. `Debug` shows variable names only, since values can be secrets.
///
/// ```
/// use lakebase_pool::Environment;
///
/// let env = Environment::from_vars([("PGHOST", "127.0.0.1"), ("PGPORT", "")]);
/// assert_eq!(env.get("PGHOST"), Some("127.0.0.1"));
/// assert_eq!(env.get("PGPORT"), None);
/// ```
#[derive(Clone, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    /// The current process environment (variables that are not valid UTF-8 are skipped).
    ///
    /// ```
    /// let env = lakebase_pool::Environment::from_process();
    /// # let _ = env;
    /// ```
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// Every variable, for a child process that must see this environment, not the process's.
    pub(crate) fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// An environment made of the given pairs.
    ///
    /// ```
    /// let env = lakebase_pool::Environment::from_vars([("DATABRICKS_HOST", "example.cloud.databricks.com")]);
    /// assert!(env.get("DATABRICKS_HOST").is_some());
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Environment {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value, trimmed; `None` when unset or empty.
    ///
    /// ```
    /// let env = lakebase_pool::Environment::from_vars([("A", " x ")]);
    /// assert_eq!(env.get("A"), Some("x"));
    /// ```
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Environment")
            .field("names", &names)
            .finish()
    }
}

/// Pool settings read from the environment, for
/// [`PoolBuilder::from_environment`](crate::PoolBuilder::from_environment) to apply. Only
/// what is set is `Some`.
pub(crate) struct PoolSettings {
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) user: Option<String>,
    pub(crate) dbname: Option<String>,
    pub(crate) application_name: Option<String>,
    /// Whether the process runs as a Databricks App (`DATABRICKS_APP_NAME` is set, as the
    /// Apps runtime does): per-user pools trust forwarded user headers by default only then.
    pub(crate) in_databricks_app: bool,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) ssl_mode: Option<SslMode>,
    pub(crate) channel_binding: Option<ChannelBinding>,
    pub(crate) ssl_negotiation: Option<SslNegotiation>,
    pub(crate) hostaddr: Option<IpAddr>,
    pub(crate) root_certificates: Option<PathBuf>,
    /// `LAKEBASE_READ_ONLY_HOST`: read from the endpoint's read-only host.
    pub(crate) read_only_host_as_replica: bool,
    pub(crate) password_source: PasswordSource,
}

/// Where the pool's passwords come from.
pub(crate) enum PasswordSource {
    /// Tokens minted for this endpoint (the workspace is read from the same environment).
    Endpoint(EndpointName),
    /// A fixed password (`PGPASSWORD`).
    Fixed(Secret),
}

/// Reads the pool settings in `env`: `PG*` as libpq does, `LAKEBASE_ENDPOINT`,
/// `LAKEBASE_READ_ONLY_HOST`, `DATABRICKS_APP_NAME`.
pub(crate) fn pool_settings(env: &Environment) -> Result<PoolSettings, Error> {
    let invalid = |var: &'static str, problem: String| Error::InvalidEnv { var, problem };
    let mut port = None;
    let mut connect_timeout = None;
    let mut ssl_mode = None;
    let mut channel_binding = None;
    let mut ssl_negotiation = None;
    let mut hostaddr = None;
    let mut root_certificates = None;
    let read_only_host_as_replica = match env.get("LAKEBASE_READ_ONLY_HOST") {
        None => false,
        Some(text) => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" | "" => false,
            _ => {
                return Err(invalid(
                    "LAKEBASE_READ_ONLY_HOST",
                    format!("must be true or false, not `{text}`"),
                ));
            }
        },
    };
    if let Some(text) = env.get("PGPORT") {
        let number = text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    "PGPORT",
                    format!("must be a port number (1-65535), not `{text}`"),
                )
            })?;
        port = Some(number);
    }
    if let Some(seconds) = env.get("PGCONNECT_TIMEOUT") {
        let seconds = seconds
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                invalid(
                    "PGCONNECT_TIMEOUT",
                    format!("must be a whole number of seconds above 0, not `{seconds}`"),
                )
            })?;
        connect_timeout = Some(Duration::from_secs(seconds));
    }
    if let Some(mode) = env.get("PGSSLMODE") {
        let mode = mode.parse::<SslMode>().map_err(|_| {
            invalid(
                "PGSSLMODE",
                format!("must be one of disable, allow, prefer, require, verify-ca, verify-full, not `{mode}`"),
            )
        })?;
        ssl_mode = Some(mode);
    }
    if let Some(binding) = env.get("PGCHANNELBINDING") {
        let binding = binding.parse::<ChannelBinding>().map_err(|_| {
            invalid(
                "PGCHANNELBINDING",
                format!("must be one of disable, prefer, require, not `{binding}`"),
            )
        })?;
        channel_binding = Some(binding);
    }
    if let Some(negotiation) = env.get("PGSSLNEGOTIATION") {
        let negotiation = negotiation.parse::<SslNegotiation>().map_err(|_| {
            invalid(
                "PGSSLNEGOTIATION",
                format!("must be postgres or direct, not `{negotiation}`"),
            )
        })?;
        ssl_negotiation = Some(negotiation);
    }
    if let Some(address) = env.get("PGHOSTADDR") {
        let address = address.parse::<IpAddr>().map_err(|_| {
            invalid(
                "PGHOSTADDR",
                format!("must be an IP address such as 10.0.0.5, not `{address}`"),
            )
        })?;
        if env.get("PGHOST").is_none() && env.get("LAKEBASE_ENDPOINT").is_none() {
            return Err(invalid(
                "PGHOST",
                String::from(
                    "is not set; with PGHOSTADDR it names the server for TLS (SNI and the certificate)",
                ),
            ));
        }
        hostaddr = Some(address);
    }
    if let Some(path) = env.get("PGSSLROOTCERT") {
        if !std::path::Path::new(path).is_file() {
            return Err(invalid(
                "PGSSLROOTCERT",
                format!("names `{path}`, which is not a readable file"),
            ));
        }
        root_certificates = Some(PathBuf::from(path));
    }
    let password_source = match (env.get("LAKEBASE_ENDPOINT"), env.get("PGPASSWORD")) {
        (Some(endpoint), _) => {
            let endpoint = EndpointName::parse(endpoint).map_err(|e| match e {
                Error::InvalidEndpointName { problem, .. } => invalid(
                    "LAKEBASE_ENDPOINT",
                    format!("is not a Lakebase endpoint name: {problem}"),
                ),
                other => other,
            })?;
            PasswordSource::Endpoint(endpoint)
        }
        (None, Some(password)) => {
            if env.get("PGHOST").is_none() {
                return Err(invalid(
                    "PGHOST",
                    String::from("is not set (the server to connect to)"),
                ));
            }
            PasswordSource::Fixed(Secret::new(password))
        }
        (None, None) => {
            return Err(invalid(
                "LAKEBASE_ENDPOINT",
                String::from(
                    "is not set (set it to projects/<project>/branches/<branch>/endpoints/<endpoint>, \
                     or set PGPASSWORD to use a fixed password)",
                ),
            ));
        }
    };
    Ok(PoolSettings {
        host: env.get("PGHOST").map(str::to_owned),
        port,
        user: env.get("PGUSER").map(str::to_owned),
        dbname: env.get("PGDATABASE").map(str::to_owned),
        application_name: env
            .get("PGAPPNAME")
            .or_else(|| env.get("DATABRICKS_APP_NAME"))
            .map(str::to_owned),
        in_databricks_app: env
            .get("DATABRICKS_APP_NAME")
            .is_some_and(|name| !name.trim().is_empty()),
        connect_timeout,
        ssl_mode,
        channel_binding,
        ssl_negotiation,
        hostaddr,
        root_certificates,
        read_only_host_as_replica,
        password_source,
    })
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Variables the pool reads, given any value. (`PGSSLROOTCERT` names a file to read, so it
    /// is given a path that does not exist.)
    const VARS: [&str; 15] = [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGAPPNAME",
        "PGSSLMODE",
        "PGCHANNELBINDING",
        "PGSSLNEGOTIATION",
        "PGCONNECT_TIMEOUT",
        "PGPASSWORD",
        "LAKEBASE_ENDPOINT",
        "LAKEBASE_READ_ONLY_HOST",
        "DATABRICKS_HOST",
        "DATABRICKS_TOKEN",
    ];

    proptest! {
        /// Any combination of values builds a pool builder or fails with a typed error that
        /// names a variable or setting; none panics.
        #[test]
        fn any_environment_is_read_or_refused_typed(
            values in proptest::collection::vec(proptest::option::of(any::<String>()), VARS.len()),
            root_cert in proptest::option::of("[a-z]{1,8}"),
        ) {
            let mut vars: Vec<(String, String)> = VARS
                .iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|v| ((*name).to_owned(), v)))
                .collect();
            if let Some(name) = root_cert {
                vars.push(("PGSSLROOTCERT".into(), format!("/nonexistent/lakebase-pool/{name}.pem")));
            }
            let env = Environment::from_vars(vars);
            if let Err(error) = pool_settings(&env) {
                prop_assert!(
                    matches!(
                        error,
                        Error::InvalidEnv { .. }
                            | Error::InvalidConfig { .. }
                            | Error::InvalidEndpointName { .. }
                            | Error::Workspace(crate::error::WorkspaceError::Config { .. })
                    ),
                    "{error:?}"
                );
            }
        }

        /// Port-like values: accepted exactly when they are 1-65535.
        #[test]
        fn ports_are_accepted_exactly_when_valid(port in "[0-9+-]{0,7}") {
            let env = Environment::from_vars([
                ("PGHOST", "127.0.0.1"),
                ("PGUSER", "app"),
                ("PGPASSWORD", "local"),
                ("PGPORT", port.as_str()),
            ]);
            // An empty variable counts as unset, as in libpq.
            let valid = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p != 0);
            prop_assert_eq!(pool_settings(&env).is_ok(), valid, "{}", port);
        }
    }
}
