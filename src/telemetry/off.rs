//! Without the `opentelemetry` feature: nothing is recorded and nothing is kept.

use std::time::Duration;

use super::{RetryCause, Server};

/// What the builder was given: nothing, without the feature.
#[derive(Clone, Debug, Default)]
pub(crate) struct Telemetry {}

impl Telemetry {
    pub(crate) fn pool(&self, _name: &str) -> PoolTelemetry {
        PoolTelemetry
    }
}

/// One pool's instruments: none.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolTelemetry;

impl PoolTelemetry {
    #[inline]
    pub(crate) fn create_time(&self, _: Duration) {}
    #[inline]
    pub(crate) fn wait_time(&self, _: Duration) {}
    #[inline]
    pub(crate) fn use_time(&self, _: Duration) {}
    #[inline]
    pub(crate) fn mint(&self, _: Duration, _: Option<&'static str>, _: &'static str) {}
    #[inline]
    pub(crate) fn connect_span(&self, _: &Server<'_>, _: Option<&str>) -> ConnectSpan {
        ConnectSpan
    }
}

/// A connect's span: none.
#[derive(Debug)]
pub(crate) struct ConnectSpan;

impl ConnectSpan {
    #[inline]
    pub(crate) fn retry(&mut self, _: RetryCause, _: u32, _: Duration) {}
    #[inline]
    pub(crate) fn end(self, _: Option<&'static str>) {}
}
