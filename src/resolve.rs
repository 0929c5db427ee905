//! Resolving host names yourself: TCP goes to the address, TLS still uses the name.
//!
//! With a resolver set ([`PoolBuilder::resolver`](crate::PoolBuilder::resolver)), every
//! connection attempt resolves the host, connects TCP to each address in turn
//! (tokio-postgres's `hostaddr`), and keeps the host name for TLS: it is sent as SNI (which
//! Lakebase routes by) and checked against the certificate. Without one, tokio-postgres
//! resolves through the system as usual. A resolution failure counts as transient for the
//! cold-start retry.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use lakebase_pool::resolve::StaticResolver;
//!
//! let resolver = StaticResolver::new().with("ep-test.db.lakebase.test", Ipv4Addr::LOCALHOST);
//! # let _ = resolver;
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::BoxError;
use crate::error::BoxFuture;

/// Turns a host name into addresses. Object safe: a pool stores it as `Arc<dyn Resolve>`.
///
/// ```
/// use std::net::IpAddr;
/// use lakebase_pool::BoxFuture;
/// use lakebase_pool::resolve::{Resolve, ResolveError};
///
/// struct Fixed(IpAddr);
///
/// impl Resolve for Fixed {
///     fn resolve<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
///         Box::pin(async move { Ok(vec![self.0]) })
///     }
/// }
/// ```
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, in the order to try them. An empty list is treated as a
    /// failure.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>>;
}

/// A host name could not be resolved. Retryable: DNS failures are often passing.
///
/// ```
/// let err = lakebase_pool::resolve::ResolveError::not_found("db.example.com");
/// assert_eq!(err.to_string(), "could not resolve `db.example.com`: no addresses found");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("could not resolve `{host}`: {reason}")]
pub struct ResolveError {
    host: String,
    reason: String,
    #[source]
    source: Option<BoxError>,
}

impl ResolveError {
    /// The name has no addresses.
    ///
    /// ```
    /// let err = lakebase_pool::resolve::ResolveError::not_found("db.internal");
    /// assert_eq!(err.host(), "db.internal");
    /// ```
    pub fn not_found(host: &str) -> Self {
        ResolveError {
            host: host.to_owned(),
            reason: String::from("no addresses found"),
            source: None,
        }
    }

    /// Resolution failed; `source` says why.
    ///
    /// ```
    /// let err = lakebase_pool::resolve::ResolveError::failed("db.internal", "SERVFAIL");
    /// assert!(std::error::Error::source(&err).is_some());
    /// ```
    pub fn failed(host: &str, source: impl Into<BoxError>) -> Self {
        ResolveError {
            host: host.to_owned(),
            reason: String::from("the resolver failed"),
            source: Some(source.into()),
        }
    }

    /// The host name that failed.
    ///
    /// ```
    /// assert_eq!(lakebase_pool::resolve::ResolveError::not_found("x.test").host(), "x.test");
    /// ```
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// A fixed map of host names (and whole domains) to addresses, for tests and pinned
/// set-ups. Names are matched case-insensitively; a name not in the map is a
/// [`ResolveError`].
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    addresses: HashMap<String, Vec<IpAddr>>,
    /// `(.domain, addresses)`: every name under the domain.
    domains: Vec<(String, Vec<IpAddr>)>,
}

impl StaticResolver {
    /// An empty map.
    ///
    /// ```
    /// use lakebase_pool::resolve::{Resolve, StaticResolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let resolver = StaticResolver::new();
    /// assert!(resolver.resolve("db.internal").await.is_err());
    /// # }
    /// ```
    pub fn new() -> Self {
        StaticResolver::default()
    }

    /// Adds `address` for `host` (after any added before).
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv6Addr};
    /// use lakebase_pool::resolve::{Resolve, StaticResolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let resolver = StaticResolver::new().with("db.internal", Ipv6Addr::LOCALHOST);
    /// assert_eq!(
    ///     resolver.resolve("db.internal").await.unwrap(),
    ///     [IpAddr::V6(Ipv6Addr::LOCALHOST)]
    /// );
    /// # }
    /// ```
    #[must_use]
    pub fn with(mut self, host: &str, address: impl Into<IpAddr>) -> Self {
        self.addresses
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push(address.into());
        self
    }
}

impl StaticResolver {
    /// Adds `address` for every host under `domain` (`ep-1.lakebase.test` for
    /// `lakebase.test`), those added later to a server included; exact hosts from
    /// [`with`](Self::with) are looked up first.
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv4Addr};
    /// use lakebase_pool::resolve::{Resolve, StaticResolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let resolver = StaticResolver::new().with_domain("lakebase.test", Ipv4Addr::LOCALHOST);
    /// assert!(resolver.resolve("ep-any.lakebase.test").await.is_ok());
    /// assert!(resolver.resolve("lakebase.test.example.com").await.is_err());
    /// # }
    /// ```
    #[must_use]
    pub fn with_domain(mut self, domain: &str, address: impl Into<IpAddr>) -> Self {
        let suffix = format!(".{}", domain.trim_start_matches('.').to_ascii_lowercase());
        match self.domains.iter_mut().find(|(known, _)| *known == suffix) {
            Some((_, addresses)) => addresses.push(address.into()),
            None => self.domains.push((suffix, vec![address.into()])),
        }
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
        let name = host.to_ascii_lowercase();
        let found = self.addresses.get(&name).cloned().or_else(|| {
            self.domains
                .iter()
                .find(|(suffix, _)| name.ends_with(suffix.as_str()))
                .map(|(_, addresses)| addresses.clone())
        });
        Box::pin(async move {
            match found {
                Some(addresses) if !addresses.is_empty() => Ok(addresses),
                _ => Err(ResolveError::not_found(host)),
            }
        })
    }
}

/// Resolves with hickory-resolver, configured from the system (`/etc/resolv.conf`, the hosts
/// file). The resolver is created at the first lookup, so this can be built outside a Tokio
/// runtime.
#[cfg(feature = "hickory")]
#[cfg_attr(docsrs, doc(cfg(feature = "hickory")))]
#[derive(Default)]
pub struct HickoryResolver {
    resolver: tokio::sync::OnceCell<hickory_resolver::TokioResolver>,
}

#[cfg(feature = "hickory")]
impl HickoryResolver {
    /// A resolver using the system configuration.
    ///
    /// ```
    /// let resolver = lakebase_pool::resolve::HickoryResolver::new();
    /// # let _ = resolver;
    /// ```
    pub fn new() -> Self {
        HickoryResolver::default()
    }
}

#[cfg(feature = "hickory")]
impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

#[cfg(feature = "hickory")]
impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
        Box::pin(async move {
            let resolver = self
                .resolver
                .get_or_try_init(|| async {
                    hickory_resolver::TokioResolver::builder_tokio()
                        .and_then(|builder| builder.build())
                        .map_err(|e| ResolveError::failed(host, e))
                })
                .await?;
            let lookup = resolver
                .lookup_ip(host)
                .await
                .map_err(|e| ResolveError::failed(host, e))?;
            let addresses: Vec<IpAddr> = lookup.iter().collect();
            if addresses.is_empty() {
                return Err(ResolveError::not_found(host));
            }
            Ok(addresses)
        })
    }
}

/// Used where a pool's settings are printed.
pub(crate) struct ResolverName;

impl fmt::Debug for ResolverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<resolver>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_map_answers_known_names_case_insensitively() {
        let resolver = StaticResolver::new()
            .with("Ep-Test.db.lakebase.test", IpAddr::from([127, 0, 0, 1]))
            .with("ep-test.db.lakebase.test", IpAddr::from([127, 0, 0, 2]));
        let found = resolver.resolve("EP-TEST.db.lakebase.test").await.unwrap();
        assert_eq!(
            found,
            vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])]
        );
        let err = resolver.resolve("elsewhere.test").await.unwrap_err();
        assert_eq!(err.host(), "elsewhere.test");
    }
}
