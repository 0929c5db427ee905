//! The workspace host: normalised as the SDKs do, and checked before any token is sent.

use std::fmt;
use std::net::IpAddr;

use reqwest::Url;

use crate::Error;

/// A normalised workspace URL: `https://` added when no scheme is given, trailing `/` and
/// `:443` dropped. Plain `http://` is accepted only for loopback hosts (local test servers),
/// because a workspace token must not cross a network unencrypted.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WorkspaceHost {
    url: Url,
}

impl WorkspaceHost {
    pub(crate) fn parse(host: &str) -> Result<Self, Error> {
        let given = host.trim();
        let invalid = |problem: String| {
            Error::workspace_config(format!("host `{}` {problem}", without_user_info(given)))
        };
        let has_scheme = given.contains("://");
        let trimmed = given.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(Error::workspace_config(String::from(
                "the host is empty (set DATABRICKS_HOST to the workspace URL)",
            )));
        }
        let with_scheme = if has_scheme {
            given.to_owned()
        } else {
            format!("https://{trimmed}")
        };
        let mut url = Url::parse(&with_scheme).map_err(|e| {
            Error::workspace_config_because(
                format!("host `{}` is not a valid URL", without_user_info(given)),
                e,
            )
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid(String::from("must use https://")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(String::from(
                "carries a user name or password; give only the workspace URL and set \
                 credentials with DATABRICKS_TOKEN or DATABRICKS_CLIENT_ID and \
                 DATABRICKS_CLIENT_SECRET",
            )));
        }
        let Some(name) = url.host_str().map(str::to_owned) else {
            return Err(invalid(String::from("has no host name")));
        };
        if url.scheme() == "http" && !is_loopback(&name) {
            return Err(invalid(String::from(
                "uses plain http://, which is allowed only for loopback hosts (a workspace \
                 token must not cross the network unencrypted); use https://",
            )));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(String::from(
                "has a path or query; give only the workspace URL, e.g. \
                 https://my-workspace.cloud.databricks.com",
            )));
        }
        if url.scheme() == "https" && url.port() == Some(443) {
            let _ = url.set_port(None);
        }
        Ok(WorkspaceHost { url })
    }

    /// The URL of an API path (which starts with `/`).
    pub(crate) fn join(&self, path: &str) -> Url {
        let mut url = self.url.clone();
        url.set_path(path);
        url
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// Whether a URL learned from this workspace (OAuth discovery) may receive a secret by
    /// its scheme: https always; plain http only on loopback, and only for a workspace that
    /// is itself plain http on loopback (a local test server).
    pub(crate) fn permits(&self, url: &Url) -> bool {
        match url.scheme() {
            "https" => true,
            "http" => self.url.scheme() == "http" && url.host_str().is_some_and(is_loopback),
            _ => false,
        }
    }
}

/// `given` with anything between `://` and its last `@` replaced, for error messages: a URL
/// with user info carries a secret, and the error must not repeat it. The last `@` of the
/// whole text, not of the authority: a password may hold an unescaped `/`, `?` or `#` (the
/// text is not a valid URL then, which is why it is in an error), and hiding part of a path
/// that holds an `@` costs nothing.
pub(crate) fn without_user_info(given: &str) -> String {
    let (scheme, rest) = given.split_once("://").unwrap_or(("", given));
    match rest.rfind('@') {
        Some(at) => {
            let prefix = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            format!("{prefix}***@{}", &rest[at + 1..])
        }
        None => given.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

impl fmt::Display for WorkspaceHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for WorkspaceHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkspaceHost({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_user_info_are_refused_without_repeating_it() {
        for host in [
            "https://user:s3cret-pw@x.cloud.databricks.com",
            "user:s3cret-pw@x.cloud.databricks.com",
            "https://s3cret-pw@x.cloud.databricks.com/",
            "http://user:s3cret-pw@127.0.0.1:8080",
        ] {
            let err = WorkspaceHost::parse(host).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("user name or password"), "{host}: {text}");
            assert!(!text.contains("s3cret-pw"), "{host}: {text}");
            assert!(!format!("{err:?}").contains("s3cret-pw"), "{host}: {err:?}");
        }
    }

    #[test]
    fn discovered_urls_must_be_https_unless_both_are_loopback() {
        let remote = WorkspaceHost::parse("https://x.cloud.databricks.com").unwrap();
        let local = WorkspaceHost::parse("http://127.0.0.1:8080").unwrap();
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(remote.permits(&url("https://login.example.com/oidc")));
        assert!(!remote.permits(&url("http://x.cloud.databricks.com/oidc")));
        assert!(!remote.permits(&url("http://127.0.0.1/oidc")));
        assert!(!remote.permits(&url("ftp://x.cloud.databricks.com/oidc")));
        assert!(local.permits(&url("http://127.0.0.1:9000/oidc")));
        assert!(local.permits(&url("http://localhost:9000/oidc")));
        assert!(!local.permits(&url("http://evil.example.com/oidc")));
    }

    fn normal(host: &str) -> String {
        WorkspaceHost::parse(host).unwrap().to_string()
    }

    #[test]
    fn hosts_are_normalised_like_the_sdks_do() {
        assert_eq!(
            normal("adb-1.2.azuredatabricks.net"),
            "https://adb-1.2.azuredatabricks.net"
        );
        assert_eq!(
            normal("https://x.cloud.databricks.com/"),
            "https://x.cloud.databricks.com"
        );
        assert_eq!(
            normal("https://x.cloud.databricks.com:443"),
            "https://x.cloud.databricks.com"
        );
        assert_eq!(
            normal(" x.cloud.databricks.com:8443 "),
            "https://x.cloud.databricks.com:8443"
        );
        assert_eq!(normal("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(normal("http://localhost:8080/"), "http://localhost:8080");
        let host = WorkspaceHost::parse("x.cloud.databricks.com").unwrap();
        assert_eq!(
            host.join("/api/2.0/postgres/credentials").as_str(),
            "https://x.cloud.databricks.com/api/2.0/postgres/credentials"
        );
        // A `?` is part of the path, not a query: queries are added as pairs, escaped.
        assert_eq!(
            host.join("/api/2.0/x?y").as_str(),
            "https://x.cloud.databricks.com/api/2.0/x%3Fy"
        );
    }

    #[test]
    fn plain_http_is_refused_unless_loopback() {
        let err = WorkspaceHost::parse("http://x.cloud.databricks.com").unwrap_err();
        assert!(
            err.to_string().contains("allowed only for loopback hosts"),
            "{err}"
        );
        assert!(WorkspaceHost::parse("http://10.1.2.3").is_err());
        assert!(WorkspaceHost::parse("http://[::1]:9000").is_ok());
    }

    #[test]
    fn garbage_hosts_are_config_errors() {
        for bad in [
            "",
            "   ",
            "ftp://x.com",
            "https://",
            "https://x.com/path",
            "https://x.com/?o=1",
            "ht tp://x",
        ] {
            let err = WorkspaceHost::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Workspace(crate::error::WorkspaceError::Config { .. })
                ),
                "{bad}: {err:?}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text parses or fails with `WorkspaceError::Config`; none panics.
        #[test]
        fn any_text_parses_or_fails_typed(text in any::<String>()) {
            if let Err(error) = WorkspaceHost::parse(&text) {
                prop_assert!(matches!(error, Error::Workspace(crate::error::WorkspaceError::Config { .. })), "{error:?}");
            }
        }

        /// A workspace token never goes over plain `http://` to a host that is not loopback.
        #[test]
        fn plain_http_is_refused_unless_loopback(host in "[a-z0-9.-]{1,30}", port in proptest::option::of(1_u16..)) {
            let url = match port {
                Some(port) => format!("http://{host}:{port}"),
                None => format!("http://{host}"),
            };
            if let Ok(parsed) = WorkspaceHost::parse(&url) {
                let name = parsed.url().host_str().unwrap_or_default().to_owned();
                prop_assert!(is_loopback(&name), "{url} was accepted");
            }
        }
    }
}
