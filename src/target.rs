//! What a connection goes to: a complete target, its effective sslmode, the plain-text rule,
//! and the `user@host:port/dbname` that errors and traces name it by.

use std::fmt;
use std::net::IpAddr;

use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;
use crate::tls::{self, SslMode, Trust};

/// The TLS settings of a pool.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// The requested mode; `None` means `disable` for loopback and `verify-full` otherwise.
    pub(crate) mode: Option<SslMode>,
    pub(crate) trust: Trust,
    /// The dangerous opt-out allowing plain text to non-loopback hosts.
    pub(crate) allow_plaintext: bool,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("extra_roots", &self.trust.extra_roots.len())
            .field(
                "accept_invalid_certificates",
                &self.trust.accept_invalid_certificates,
            )
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// Checks that `config` names a server and a user, decides its sslmode, refuses plain text
/// to anything but loopback, and returns the TLS connector to use. Sets tokio-postgres's own
/// mode to `Require` whenever TLS is used, so that it never falls back to plain text.
pub(crate) fn settle(
    config: &mut tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<(SslMode, MakeRustlsConnect), Error> {
    if config.get_hosts().is_empty() {
        return Err(Error::invalid(
            "host",
            "no host set; call `.host(..)` (or `.lakebase_endpoint(..)` to discover it)",
        ));
    }
    if config.get_user().is_none() {
        return Err(Error::invalid("user", "no user set; call `.user(..)`"));
    }
    let tcp_names = config
        .get_hosts()
        .iter()
        .filter(|host| matches!(host, Host::Tcp(_)))
        .count();
    let non_loopback_host = config.get_hosts().iter().find_map(|host| match host {
        Host::Tcp(name) if !is_loopback_name(name) => Some(name.clone()),
        _ => None,
    });
    let non_loopback_addr = config
        .get_hostaddrs()
        .iter()
        .find(|a| !a.is_loopback())
        .copied();
    let loopback = non_loopback_host.is_none() && non_loopback_addr.is_none();
    let mode = tls.mode.unwrap_or(if loopback {
        SslMode::Disable
    } else {
        SslMode::VerifyFull
    });
    if mode == SslMode::Disable && !tls.allow_plaintext {
        if let Some(name) = non_loopback_host {
            return Err(Error::invalid(
                "ssl_mode",
                format!(
                    "sslmode disable sends the token in plain text, which is allowed only to \
                     loopback hosts, and `{name}` is not one (use TLS, or \
                     `.dangerous().allow_plaintext()` on a network you trust)"
                ),
            ));
        }
        if let Some(addr) = non_loopback_addr {
            return Err(Error::invalid(
                "ssl_mode",
                format!("sslmode disable to `{addr}`, which is not a loopback address (use TLS)"),
            ));
        }
        // Each address dialled is checked at connect; that needs one host to resolve.
        if tcp_names > 1 && config.get_hostaddrs().is_empty() {
            return Err(Error::invalid(
                "ssl_mode",
                "sslmode disable with several host names: give one host, or their addresses \
                 with `hostaddr`, so that every address dialled can be checked to be loopback",
            ));
        }
    }
    check_needs_tls(config, mode)?;
    let _ = config.ssl_mode(if mode.uses_tls() {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Disable
    });
    // Plain text never uses it, but the connector type wants one: a verifying one.
    let client = tls::postgres_client_config(&tls.trust, mode != SslMode::VerifyCa)?;
    Ok((mode, MakeRustlsConnect::new(client)))
}

/// Settings that only mean something with TLS: refused with a mode that does not use it,
/// since no connection could ever succeed (`channel_binding=require`) or the first byte
/// would be a TLS handshake to a server expecting none (`sslnegotiation=direct`).
pub(crate) fn check_needs_tls(config: &tokio_postgres::Config, mode: SslMode) -> Result<(), Error> {
    if mode.uses_tls() {
        return Ok(());
    }
    if config.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require {
        return Err(Error::invalid(
            "channel_binding",
            "`require` binds the login to a TLS session, and the sslmode is `disable` (the \
             default for loopback hosts): set an sslmode that uses TLS, or use `prefer`",
        ));
    }
    if config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct {
        return Err(Error::invalid(
            "ssl_negotiation",
            "`direct` starts TLS with the first byte, and the sslmode is `disable` (the default \
             for loopback hosts): set an sslmode that uses TLS, or use `postgres`",
        ));
    }
    Ok(())
}

pub(crate) fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// What errors and logs show instead of a hidden user name.
pub(crate) const HIDDEN_USER: &str = "<user>";

/// `user@host:port/dbname`, as used in errors and tracing; with `hide_user`, the user is
/// shown as `<user>` (a signed-in user's role is their email, which logs must not carry).
pub(crate) fn describe_target(config: &tokio_postgres::Config, hide_user: bool) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::from("?"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let user = if hide_user { HIDDEN_USER } else { user };
    // The database defaults to the user's name: hidden with it.
    let dbname = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{dbname}")
}

/// `text` with every occurrence of `name` (in any letter case) shown as `<user>`. Also a
/// name cut off where the text was shortened (a start of `name` right before a trailing
/// `...`), since its start alone may say who it is.
pub(crate) fn redact(text: &str, name: &str) -> String {
    if name.is_empty() {
        return text.to_owned();
    }
    // Lower-cased with, for each byte of the lower-cased text, where its character starts and
    // ends in `text`: lower-casing may change lengths (`İ` becomes two characters).
    let mut lower = String::with_capacity(text.len());
    let mut origin: Vec<(usize, usize)> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let end = start + c.len_utf8();
        for l in c.to_lowercase() {
            lower.push(l);
            origin.extend(std::iter::repeat_n((start, end), l.len_utf8()));
        }
    }
    let lower_name = name.to_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // bytes of `text` handled
    let mut from = 0; // bytes of `lower` searched
    while let Some(found) = lower[from..].find(&lower_name) {
        let (match_start, match_end) = (from + found, from + found + lower_name.len());
        let start = origin[match_start].0;
        let end = origin[match_end - 1].1;
        if start >= copied {
            out.push_str(&text[copied..start]);
            out.push_str(HIDDEN_USER);
            copied = end;
        }
        from = match_end;
    }
    let rest = &text[copied..];
    match rest.strip_suffix("...") {
        Some(before) => {
            out.push_str(&without_cut_off_name(before, &lower_name));
            out.push_str("...");
        }
        None => out.push_str(rest),
    }
    out
}

/// `text` without a trailing start of `lower_name` (in any letter case).
fn without_cut_off_name(text: &str, lower_name: &str) -> String {
    let cut = text.char_indices().map(|(i, _)| i).find(|&i| {
        let tail = text[i..].to_lowercase();
        !tail.is_empty() && lower_name.starts_with(&tail)
    });
    match cut {
        Some(i) => format!("{}{HIDDEN_USER}", &text[..i]),
        None => text.to_owned(),
    }
}

/// A server's error whose text named a hidden user, with the name redacted: what errors of a
/// per-user pool carry instead of the server's own error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RedactedServerError(pub(crate) String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_spelling_of_the_name() {
        assert_eq!(
            redact(
                "User Alice@Example.com may not; alice@example.com again",
                "alice@example.com"
            ),
            "User <user> may not; <user> again"
        );
        assert_eq!(redact("nothing here", "alice@example.com"), "nothing here");
        assert_eq!(redact("keep", ""), "keep");
        assert_eq!(
            redact("role \"zoë@x.io\" is full", "zoë@x.io"),
            "role \"<user>\" is full"
        );
        // A character whose lower case is longer elsewhere in the text.
        assert_eq!(
            redact("Alice@Example.com in İstanbul-prod", "alice@example.com"),
            "<user> in İstanbul-prod"
        );
        assert_eq!(redact("İİ ALICE@X.IO", "alice@x.io"), "İİ <user>");
        // Cut off where the text was shortened.
        assert_eq!(
            redact("user alice.lo...", "alice.long@example.com"),
            "user <user>..."
        );
        assert_eq!(
            redact("plain text...", "alice@example.com"),
            "plain text..."
        );
    }

    #[test]
    fn a_hidden_user_is_hidden_in_the_default_database_name_too() {
        let target = describe_target(&config("host=db user=alice@example.com"), true);
        assert_eq!(target, "<user>@db:5432/<user>");
    }

    fn config(text: &str) -> tokio_postgres::Config {
        text.parse().unwrap()
    }

    fn mode_for(text: &str, mode: Option<SslMode>) -> Result<SslMode, Error> {
        let settings = TlsSettings {
            mode,
            ..TlsSettings::default()
        };
        settle(&mut config(text), &settings).map(|(mode, _)| mode)
    }

    #[test]
    fn loopback_defaults_to_plain_text_and_anything_else_to_verify_full() {
        assert_eq!(
            mode_for("host=127.0.0.1 user=a", None).unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode_for("host=/var/run/postgresql user=a", None).unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode_for("host=db.example.com user=a", None).unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!(
            mode_for("host=localhost hostaddr=10.0.0.1 user=a", None).unwrap(),
            SslMode::VerifyFull
        );
    }

    #[test]
    fn plain_text_to_a_remote_host_is_refused_before_connecting() {
        let err = mode_for("host=db.example.com user=a", Some(SslMode::Disable)).unwrap_err();
        assert!(
            err.to_string().contains("`db.example.com` is not one"),
            "{err}"
        );
        let err = mode_for(
            "host=localhost hostaddr=10.0.0.1 user=a",
            Some(SslMode::Disable),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`10.0.0.1`"), "{err}");
        let settings = TlsSettings {
            mode: Some(SslMode::Disable),
            allow_plaintext: true,
            ..TlsSettings::default()
        };
        assert!(settle(&mut config("host=db.example.com user=a"), &settings).is_ok());
    }

    #[test]
    fn tls_modes_never_let_tokio_postgres_fall_back() {
        let mut cfg = config("host=db.example.com user=a sslmode=prefer");
        let settings = TlsSettings {
            mode: Some(SslMode::Prefer),
            ..TlsSettings::default()
        };
        let _ = settle(&mut cfg, &settings).unwrap();
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn target_names_user_host_port_and_database() {
        assert_eq!(
            describe_target(&config("host=127.0.0.1 port=5433 user=app"), false),
            "app@127.0.0.1:5433/app"
        );
    }
}
