//! Reading configuration from environment variables.

use std::collections::HashMap;
use std::fmt;

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
