//! Prometheus metrics, all prefixed `mulligan_`.
//!
//! Handles are registered once and kept in [`Metrics`], so the request path
//! pays an atomic add per event, not a registry lookup.

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};

use crate::{classify::Cause, labels::labels, policy::Decision};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder; installed on first use.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
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

labels! {
    /// The ext_proc phases, in the order Envoy sends them.
    pub enum Phase {
        RequestHeaders => "request_headers",
        RequestBody => "request_body",
        RequestTrailers => "request_trailers",
        ResponseHeaders => "response_headers",
        ResponseBody => "response_body",
        ResponseTrailers => "response_trailers",
    }
}

labels! {
    /// Why an ext_proc stream ended badly.
    pub enum StreamError {
        /// Envoy (or a client) sent something that did not decode, or reset the stream.
        Transport => "transport",
        /// A message with no phase in it.
        EmptyMessage => "empty_message",
        /// A new stream arrived while mulligan was draining.
        Draining => "draining",
        /// A new stream arrived at `limits.max_streams`.
        StreamLimit => "stream_limit",
        /// No message arrived for `limits.stream_idle_timeout`.
        Idle => "idle",
        /// A stream whose `x-mulligan-phase` metadata is missing or names no
        /// role mulligan knows: refused before any message is read.
        UnknownRole => "unknown_role",
    }
}

labels! {
    /// How mulligan answered Envoy about a failed attempt or response.
    pub enum Answer {
        /// Another attempt, at once.
        Retry => "retry",
        /// Another attempt, after holding until an endpoint could serve.
        RetryAfterHold => "retry_after_hold",
        /// The failed attempt stands (not retriable, unsafe, over budget).
        Stand => "stand",
        /// Held until the deadline: the 503 stands, with `Retry-After`.
        HeldTooLong => "held_too_long",
        /// `hold.max_held` requests were held already: the 503 stands.
        HeldLimit => "held_limit",
        /// No endpoint could come back (all draining or gone, or none known):
        /// the 503 stands at once, with `Retry-After`.
        NothingComing => "nothing_coming",
        /// A failed response seen on its way to the client.
        Final => "final",
        /// A retry let through the gate.
        Pass => "pass",
        /// A retry stopped at the gate: an earlier attempt may have run it.
        Stopped => "stopped",
    }
}

/// Pre-registered handles for everything the request path counts.
#[derive(Clone)]
pub struct Metrics {
    streams: Counter,
    in_flight: Gauge,
    phases: [Counter; Phase::COUNT],
    errors: [Counter; StreamError::COUNT],
    /// Indexed by [`Cause`], then [`Decision`].
    decisions: Vec<[Counter; Decision::COUNT]>,
    answers: [Counter; Answer::COUNT],
    held: Gauge,
    hold_seconds: Histogram,
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
            decisions: Cause::ALL
                .iter()
                .map(|c| {
                    Decision::ALL.map(|d| {
                        counter!("mulligan_decisions_total", "cause" => c.as_str(), "decision" => d.as_str())
                    })
                })
                .collect(),
            answers: Answer::ALL
                .map(|a| counter!("mulligan_answers_total", "answer" => a.as_str())),
            held: gauge!("mulligan_held"),
            hold_seconds: histogram!("mulligan_hold_duration_seconds"),
        }
    }

    /// A failed response was classified and a decision taken on it.
    pub(crate) fn decision(&self, cause: Cause, decision: Decision) {
        self.decisions[cause as usize][decision as usize].increment(1);
    }

    /// How mulligan answered a stream.
    pub(crate) fn answer(&self, answer: Answer) {
        self.answers[answer as usize].increment(1);
    }

    /// A hold ended after `seconds`, however it ended.
    pub(crate) fn hold_ended(&self, seconds: f64) {
        self.hold_seconds.record(seconds);
    }

    /// Requests held right now, up or down by `delta`.
    pub(crate) fn held(&self, delta: f64) {
        self.held.increment(delta);
    }

    pub(crate) fn stream_started(&self) {
        self.streams.increment(1);
        self.in_flight.increment(1.0);
    }

    pub(crate) fn stream_ended(&self) {
        self.in_flight.decrement(1.0);
    }

    pub(crate) fn phase(&self, phase: Phase) {
        self.phases[phase as usize].increment(1);
    }

    pub(crate) fn error(&self, error: StreamError) {
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
        crate::endpoints::registry::UNKNOWN_CLUSTER_METRIC,
        "Lookups of an Envoy cluster mulligan knows no endpoints for: no target, the request passes through"
    );
    describe_gauge!(
        crate::endpoints::registry::COMING_UP_METRIC,
        "Pods of a cluster's Service coming up with no address yet (Kubernetes): a hold is worth it while above zero"
    );
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
    describe_counter!(
        "mulligan_decisions_total",
        "failed attempts by cause and what mulligan decided"
    );
    describe_counter!(
        "mulligan_answers_total",
        "answers on failed attempts, retries at the gate and failed responses, by kind"
    );
    describe_gauge!(
        "mulligan_held",
        "requests held right now, waiting for an endpoint that can serve"
    );
    describe_histogram!(
        "mulligan_hold_duration_seconds",
        "how long each hold lasted, from the failed attempt to the answer"
    );
}
