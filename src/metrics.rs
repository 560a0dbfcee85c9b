//! Prometheus metrics, all prefixed `mulligan_`.
//!
//! Handles are registered once and kept in [`Metrics`], so the request path
//! pays an atomic add per event, not a registry lookup.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder; installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (an embedding
        // program); then our handle renders nothing but mulligan still works.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// The ext_proc phases, in the order Envoy sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
        }
    }
}

/// Why an ext_proc stream ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Envoy (or a client) sent something that did not decode, or reset the stream.
    Transport,
    /// A message with no phase in it.
    EmptyMessage,
    /// A new stream arrived while mulligan was draining.
    Draining,
}

impl StreamError {
    const ALL: [StreamError; 3] = [
        StreamError::Transport,
        StreamError::EmptyMessage,
        StreamError::Draining,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StreamError::Transport => "transport",
            StreamError::EmptyMessage => "empty_message",
            StreamError::Draining => "draining",
        }
    }
}

/// Pre-registered handles for everything the request path counts.
#[derive(Clone)]
pub struct Metrics {
    streams: Counter,
    in_flight: Gauge,
    phases: [Counter; 6],
    errors: [Counter; 3],
}

impl Metrics {
    pub fn new() -> Self {
        prometheus();
        Self {
            streams: counter!("mulligan_ext_proc_streams_total"),
            in_flight: gauge!("mulligan_ext_proc_streams_in_flight"),
            phases: Phase::ALL
                .map(|p| counter!("mulligan_ext_proc_phases_total", "phase" => p.as_str())),
            errors: StreamError::ALL
                .map(|e| counter!("mulligan_ext_proc_errors_total", "kind" => e.as_str())),
        }
    }

    pub fn stream_started(&self) {
        self.streams.increment(1);
        self.in_flight.increment(1.0);
    }

    pub fn stream_ended(&self) {
        self.in_flight.decrement(1.0);
    }

    pub fn phase(&self, phase: Phase) {
        self.phases[phase as usize].increment(1);
    }

    pub fn error(&self, error: StreamError) {
        self.errors[error as usize].increment(1);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn describe() {
    describe_counter!(
        "mulligan_ext_proc_streams_total",
        "ext_proc streams opened by Envoy (one per HTTP request)"
    );
    describe_gauge!(
        "mulligan_ext_proc_streams_in_flight",
        "ext_proc streams open right now"
    );
    describe_counter!(
        "mulligan_ext_proc_phases_total",
        "ext_proc messages received, by phase"
    );
    describe_counter!(
        "mulligan_ext_proc_errors_total",
        "ext_proc streams that ended in error, by kind"
    );
}
