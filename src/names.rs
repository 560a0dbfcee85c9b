//! Every name shared across the Envoy boundary: the headers, gRPC metadata,
//! attributes, filters, clusters and listeners that the wiring gives Envoy
//! and that mulligan reads back from Envoy's messages.
//!
//! Both sides use these constants: the wiring (`crate::extension::wiring`,
//! which the Extension Server installs and `make wiring` writes into the
//! reference bootstrap) and the reader (`crate::ext_proc`). A name changed
//! here changes both, and the suite fails until the generated files are
//! regenerated.

/// The response header by which mulligan asks Envoy for another attempt.
/// The route's retry policy retries on it (`retriable-headers`), and
/// `mulligan.strip` removes it from every pod's response first, so only
/// mulligan can set it.
pub const RETRY_HEADER: &str = "x-mulligan-retry";
/// The [`RETRY_HEADER`] value the retry policy matches.
pub const RETRY_VALUE: &str = "1";

/// Which filter opened an ext_proc stream: gRPC initial metadata each
/// ext_proc filter of the wiring sets, and mulligan reads first.
pub mod phase {
    /// The metadata key.
    pub const HEADER: &str = "x-mulligan-phase";
    /// `mulligan.attempt` on a retry (attempt 2 and later): the gate on its
    /// request headers, then its answer.
    pub const RETRY: &str = "retry";
    /// `mulligan.attempt` on a failed first attempt: its response only.
    pub const ATTEMPT: &str = "attempt";
    /// `mulligan.final`: the failed response the client is about to get.
    pub const FINAL: &str = "final";
    /// Every value mulligan accepts.
    pub const ALL: [&str; 3] = [RETRY, ATTEMPT, FINAL];
}

/// The hold budget: gRPC initial metadata each `mulligan.attempt` call
/// carries, the same value as the filter's `max_message_timeout`. mulligan
/// holds a failed attempt at most this long (less the time it keeps to
/// answer in), so it never asks Envoy for more time than Envoy grants, and
/// the budget is set in one place: the wiring.
pub mod max_hold {
    /// The metadata key; its value is a duration as the proto JSON mapping
    /// writes one (`10s`, `2.500s`).
    pub const HEADER: &str = "x-mulligan-max-hold";
}

/// What earlier attempts of a request did, carried with the request in
/// Envoy's dynamic metadata (under [`NAMESPACE`](state::NAMESPACE)), not in
/// the memory of whichever mulligan process judged them. Upstream filters
/// read and write the downstream request's stream info, so what mulligan
/// writes on one attempt's stream is forwarded to it (`metadata_context`)
/// on the next attempt's, whichever mulligan process that stream reaches.
pub mod state {
    /// The dynamic metadata namespace: `mulligan.attempt` forwards it to
    /// mulligan and accepts it back (`metadata_options`), nothing else.
    pub const NAMESPACE: &str = "mulligan.attempts";
    /// `true` once an attempt may have run a request that is not safe to
    /// run twice: no later attempt may leave.
    pub const MAY_HAVE_RUN: &str = "may_have_run";
    /// Failed attempts mulligan has judged.
    pub const FAILURES: &str = "failures";
    /// Times a hold released the request.
    pub const RELEASES: &str = "releases";
}

/// The Envoy attributes the wiring asks for and mulligan reads. Envoy
/// sends only what the wiring asks for, so an attribute read but not asked
/// for is always missing, and one asked for but not read costs every
/// failed request for nothing.
pub mod attribute {
    /// The response status.
    pub const RESPONSE_CODE: &str = "response.code";
    /// The endpoint that answered (`ip:port`).
    pub const UPSTREAM_ADDRESS: &str = "upstream.address";
    /// The cluster the route sent the request to.
    pub const CLUSTER_NAME: &str = "xds.cluster_name";
    /// The request's method (is another attempt safe?).
    pub const REQUEST_METHOD: &str = "request.method";
    /// The client's Idempotency-Key (a POST with one is safe to retry).
    pub const IDEMPOTENCY_KEY: &str = "request.headers['idempotency-key']";

    /// What mulligan needs to judge a failed attempt. (What earlier
    /// attempts did comes with the request's dynamic metadata, see
    /// [`super::state`]; the gate needs nothing else.)
    pub const ATTEMPT: [&str; 5] = [
        RESPONSE_CODE,
        UPSTREAM_ADDRESS,
        CLUSTER_NAME,
        REQUEST_METHOD,
        IDEMPOTENCY_KEY,
    ];
    /// What mulligan reads of the failed response the client gets.
    pub const FINAL: [&str; 4] = [
        RESPONSE_CODE,
        UPSTREAM_ADDRESS,
        CLUSTER_NAME,
        REQUEST_METHOD,
    ];
}

/// Request headers mulligan's wiring relies on or protects.
pub mod header {
    /// The attempt number Envoy adds to each attempt's request when the
    /// virtual host has `include_request_attempt_count` (the gate's input;
    /// `mulligan.strip` removes it before the pod).
    pub const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";
    /// Envoy's `override_host` header: a client sending it would choose
    /// the endpoint.
    pub const OVERRIDE_HOST: &str = "x-gateway-destination-endpoint";
    /// The request header of an HTTP/1.1 upgrade (WebSocket), which
    /// `mulligan.attempt` never matches.
    pub const UPGRADE: &str = "upgrade";
    /// Headers no client may send: one would choose an endpoint, the other
    /// would speak for mulligan.
    pub const FROM_CLIENTS_REMOVED: [&str; 2] = [OVERRIDE_HOST, super::RETRY_HEADER];
    /// Headers no client may receive: mulligan's retry header stays on an
    /// attempt's answer when Envoy has no retry left to make.
    pub const TO_CLIENTS_REMOVED: [&str; 1] = [super::RETRY_HEADER];
}

/// mulligan's HTTP filters.
pub mod filter {
    /// Downstream filter on the final response: ext_proc, only for a 5xx.
    pub const FINAL: &str = "mulligan.final";
    /// Upstream filter on each attempt: ext_proc, only for a retry (the
    /// gate) or a 5xx answer.
    pub const ATTEMPT: &str = "mulligan.attempt";
    /// Upstream filter removing the retry header from pods' answers and
    /// the attempt count from requests.
    pub const STRIP: &str = "mulligan.strip";
    /// The name of the composite filters' ext_proc action.
    pub const ACTION: &str = "mulligan";
}

/// mulligan's own gRPC cluster, which every ext_proc filter calls.
pub const CLUSTER: &str = "mulligan";

/// The hold: where Envoy sends a request when a cluster has no healthy
/// endpoint.
pub mod hold {
    /// The internal listener behind the priority-1 hold endpoint of every
    /// wired cluster; it forwards to [`ANSWER`].
    pub const LISTENER: &str = "mulligan_hold";
    /// The internal listener (and the cluster to it) answering 503 for the
    /// hold endpoint.
    pub const ANSWER: &str = "mulligan_hold_answer";
    /// Tells the hold's answer that the request was gRPC (set by the hold
    /// listener, never taken from anyone else).
    pub const GRPC_HEADER: &str = "x-mulligan-hold-grpc";
}
