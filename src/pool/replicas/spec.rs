//! A replica as configured, parsed from its text.

use crate::{EndpointName, Error};

/// A replica as configured: a Lakebase read-only endpoint, the read-only host of an HA
/// endpoint, or a plain Postgres host.
#[derive(Clone, Debug)]
pub(crate) enum ReplicaSpec {
    Endpoint(EndpointName),
    /// `status.hosts.read_only_host` of this (read-write) endpoint.
    ReadOnlyHost(EndpointName),
    Host {
        host: String,
        port: Option<u16>,
    },
}

impl ReplicaSpec {
    /// `projects/.../endpoints/...` is an endpoint; anything else a host, optionally with
    /// `:port`.
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with("projects/") {
            return EndpointName::parse(text).map(ReplicaSpec::Endpoint);
        }
        if text.is_empty() {
            return Err(Error::invalid(
                "read_replicas",
                "an empty replica: give an endpoint name or a host",
            ));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        Error::invalid(
                            "read_replicas",
                            format!("`{text}`: the port must be 1-65535"),
                        )
                    })?;
                Ok(ReplicaSpec::Host {
                    host: host.to_owned(),
                    port: Some(port),
                })
            }
            _ => Ok(ReplicaSpec::Host {
                host: text.to_owned(),
                port: None,
            }),
        }
    }

    pub(super) fn label(&self, primary_port: Option<u16>) -> String {
        match self {
            ReplicaSpec::Endpoint(name) => name.to_string(),
            ReplicaSpec::ReadOnlyHost(name) => format!("{name}/read-only-host"),
            ReplicaSpec::Host { host, port } => match port.or(primary_port) {
                Some(port) => format!("{host}:{port}"),
                None => host.clone(),
            },
        }
    }
}
