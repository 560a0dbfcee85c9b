//! Prometheus metrics, all prefixed `mulligan_`.
//!
//! Handles are registered once and kept in [`Metrics`], so the request path
//! pays an atomic add per event, not a registry lookup.

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};

use crate::{classify::Cause, labels::labels, policy::Decision, replay::Failure};
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
        /// `rescue.max_held` requests were held already: the 503 stands.
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

labels! {
    /// How a rescue ended.
    pub enum Outcome {
        /// A replay succeeded; the client got its response.
        Rescued => "rescued",
        /// The retry budget was spent: the original response passed through.
        BudgetExhausted => "budget_exhausted",
        /// No endpoint became ready before the deadline: 503 + Retry-After.
        HeldTooLong => "held_too_long",
        /// Too many requests already held: the original response passed through.
        HeldLimit => "held_limit",
        /// Every allowed replay failed.
        AttemptsExhausted => "attempts_exhausted",
        /// The replayed response was over the size cap: the original passed through.
        ResponseTooLarge => "response_too_large",
        /// A replay may have reached the app and the request is not idempotent:
        /// no further replay; the original response passed through.
        StoppedUnsafe => "stopped_unsafe",
        /// The request could not be rebuilt for replay (a header HTTP cannot carry).
        Unreplayable => "unreplayable",
        /// The deadline had passed before the rescue could start.
        NoTimeLeft => "no_time_left",
        /// mulligan knows no endpoints for the request's Envoy cluster: nothing
        /// to replay to (another cluster's endpoints never serve it), so the
        /// original response passed through.
        UnknownCluster => "unknown_cluster",
    }
}

labels! {
    /// What one replay attempt got.
    pub enum AttemptResult {
        /// A response that ends the rescue (any status the policy does not retry).
        Response => "response",
        /// A retriable response (a draining or not-ready endpoint's 503).
        Retriable => "retriable",
        /// The connection could not be made.
        ConnectFailure => "connect_failure",
        /// Timed out or broke after sending.
        Failed => "failed",
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
    outcomes: [Counter; Outcome::COUNT],
    attempts: [Counter; AttemptResult::COUNT],
    replay_failures: [Counter; Failure::COUNT],
    held: Gauge,
    rescue_seconds: Histogram,
    /// Steered requests: [listed endpoints, none usable] × [observed, not].
    steered: [[Counter; 2]; 2],
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
            outcomes: Outcome::ALL
                .map(|o| counter!("mulligan_rescues_total", "outcome" => o.as_str())),
            attempts: AttemptResult::ALL
                .map(|a| counter!("mulligan_replay_attempts_total", "result" => a.as_str())),
            replay_failures: Failure::ALL
                .map(|f| counter!("mulligan_replay_failures_total", "why" => f.as_str())),
            held: gauge!("mulligan_rescue_held"),
            steered: [false, true].map(|empty| {
                [true, false].map(|observe| {
                    counter!(
                        "mulligan_steered_total",
                        "endpoints" => if empty { "none" } else { "listed" },
                        "response_phase" => if observe { "observed" } else { "skipped" }
                    )
                })
            }),
            rescue_seconds: histogram!("mulligan_rescue_duration_seconds"),
        }
    }

    /// A failed response was classified and a decision taken on it.
    pub(crate) fn decision(&self, cause: Cause, decision: Decision) {
        self.decisions[cause as usize][decision as usize].increment(1);
    }

    /// How mulligan answered a stream of the decide wiring.
    pub(crate) fn answer(&self, answer: Answer) {
        self.answers[answer as usize].increment(1);
    }

    pub(crate) fn outcome(&self, outcome: Outcome, seconds: f64) {
        self.outcomes[outcome as usize].increment(1);
        self.rescue_seconds.record(seconds);
    }

    pub(crate) fn attempt(&self, result: AttemptResult) {
        self.attempts[result as usize].increment(1);
    }

    /// A replay that was sent and got no usable response, by why.
    pub(crate) fn replay_failed(&self, why: Failure) {
        self.attempts[AttemptResult::Failed as usize].increment(1);
        self.replay_failures[why as usize].increment(1);
    }

    /// A request was steered (or found no usable endpoint to steer to).
    pub(crate) fn steered(&self, no_endpoint: bool, observe: bool) {
        self.steered[no_endpoint as usize][!observe as usize].increment(1);
    }

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
        "failed responses (5xx, 429) by cause and what mulligan decided"
    );
    describe_counter!(
        "mulligan_answers_total",
        "answers on failed attempts and responses (the decide wiring), by kind"
    );
    describe_counter!("mulligan_rescues_total", "rescues started, by outcome");
    describe_counter!(
        "mulligan_replay_attempts_total",
        "replays sent to an endpoint, by result"
    );
    describe_counter!(
        "mulligan_replay_failures_total",
        "replays sent that got no usable response, by why (timeout, broken, body_cut)"
    );
    describe_counter!(
        "mulligan_steered_total",
        "requests steered, by whether usable endpoints were listed and whether the response phase was kept"
    );
    describe_gauge!(
        "mulligan_rescue_held",
        "requests held right now, waiting for a ready endpoint"
    );
    describe_histogram!(
        "mulligan_rescue_duration_seconds",
        "time from the failed response to the rescue's end"
    );
}
