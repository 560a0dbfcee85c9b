//! Why did this response fail? Sorts every 5xx (and 429) into a [`Cause`],
//! from the status, Envoy's own account of the response (the response
//! attributes) and the headers.
//!
//! The cause decides everything downstream: whether the request could have
//! reached the application (and so whether a non-idempotent request may be
//! tried again), whether retrying can help at all, and which endpoint to avoid.

use crate::endpoints::State;
use crate::labels::labels;

/// Envoy's response flags (`response.flags`, a bitmask of
/// `StreamInfo::CoreResponseFlag`).
pub mod flags {
    /// LH: the local health check failed.
    pub const FAILED_LOCAL_HEALTH_CHECK: u64 = 1 << 0;
    /// UH: no healthy upstream host in the cluster.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// UT: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// LR: local reset.
    pub const LOCAL_RESET: u64 = 1 << 3;
    /// UR: upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
    /// UF: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// UC: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// UO: upstream overflow (circuit breaker).
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
    /// RL: rate limited locally.
    pub const RATE_LIMITED: u64 = 1 << 11;
    /// OM: overload manager.
    pub const OVERLOAD_MANAGER: u64 = 1 << 25;
    /// DO / UDO: dropped by overload (drop_overloads).
    pub const DROP_OVERLOAD: u64 = (1 << 27) | (1 << 29);
}

labels! {
    /// Why a response failed, as far as mulligan can tell.
    pub enum Cause {
        /// Not a failure (below 500 and not 429).
        Success => "success",
        /// UH: Envoy had no healthy endpoint to send to; nothing was sent.
        NoHealthyUpstream => "no_healthy_upstream",
        /// UF, refused stream, connect timeout: the request never reached the app.
        ConnectFailure => "connect_failure",
        /// A 503 from the app carrying the configured drain header: the app
        /// rejected the request without processing it.
        UpstreamRejected => "upstream_rejected",
        /// A 503 from the app with a drain signal (`connection: close`, or an
        /// endpoint the registry knows is draining or gone).
        UpstreamDraining => "upstream_draining",
        /// A 503 from an endpoint the registry knows is not ready (booting).
        UpstreamNotReady => "upstream_not_ready",
        /// UC, UR, LR: the connection broke after the request was sent; the app
        /// may have processed it.
        ResetAfterSend => "reset_after_send",
        /// UT: the upstream was too slow; retrying a slow request adds load.
        Timeout => "timeout",
        /// UO, RL, OM, 429, `x-envoy-overloaded`: shedding load; never retried.
        Overload => "overload",
        /// A 503 from the app with no drain signal.
        App503 => "app_503",
        /// Any other 5xx.
        OtherError => "other_error",
    }
}

impl Cause {
    /// Whether the failure is the endpoint's own (it is gone, leaving, not
    /// ready, or broke the connection): passive health avoids it for a
    /// while. An app's own 503, overload and timeouts are not.
    pub(crate) fn blames_endpoint(self) -> bool {
        matches!(
            self,
            Cause::ConnectFailure
                | Cause::UpstreamRejected
                | Cause::UpstreamDraining
                | Cause::UpstreamNotReady
                | Cause::ResetAfterSend
        )
    }

    /// Whether the application can have seen (and acted on) the request.
    pub(crate) fn reached_app(self) -> Reached {
        match self {
            Cause::NoHealthyUpstream | Cause::ConnectFailure | Cause::UpstreamRejected => {
                Reached::Never
            }
            _ => Reached::Maybe,
        }
    }
}

/// Could the application have processed the request?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Certainly not: safe to send again whatever the method.
    Never,
    /// Possibly: only idempotent requests may be sent again.
    Maybe,
}

/// What mulligan knows about a final response.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    pub status: u16,
    /// `response.flags`.
    pub flags: u64,
    /// `response.code_details`, e.g. `via_upstream`, `no_healthy_upstream`.
    pub details: &'a str,
    /// The response carried `connection: close`.
    pub connection_close: bool,
    /// The response carried the configured drain header.
    pub drain_header: bool,
    /// The response carried `x-envoy-overloaded`.
    pub overloaded: bool,
    /// What the registry says of the endpoint that answered, if it knows it.
    pub endpoint: Option<State>,
}

impl Observed<'_> {
    /// A response as its status and headers describe it (found through
    /// `header`, by lowercase name): the one place the header signals are
    /// read, whoever holds the headers. Envoy's flags and details, and the
    /// registry's view of the endpoint, are added by whoever knows them.
    pub(crate) fn response<'h>(
        status: u16,
        drain_header: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Self {
        Self {
            status,
            connection_close: header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"close")),
            drain_header: header(drain_header).is_some(),
            overloaded: header("x-envoy-overloaded").is_some(),
            ..Default::default()
        }
    }
}

/// Sorts a response into its cause.
pub fn classify(r: &Observed<'_>) -> Cause {
    use flags::*;
    if r.status < 500 && r.status != 429 {
        return Cause::Success;
    }
    if r.status == 429
        || r.overloaded
        || r.flags & (UPSTREAM_OVERFLOW | RATE_LIMITED | OVERLOAD_MANAGER | DROP_OVERLOAD) != 0
    {
        return Cause::Overload;
    }
    if r.flags & NO_HEALTHY_UPSTREAM != 0 || r.details == "no_healthy_upstream" {
        return Cause::NoHealthyUpstream;
    }
    if r.flags & UPSTREAM_CONNECTION_FAILURE != 0 || never_sent(r.details) {
        return Cause::ConnectFailure;
    }
    if r.flags & UPSTREAM_REQUEST_TIMEOUT != 0 {
        return Cause::Timeout;
    }
    if r.flags & (UPSTREAM_CONNECTION_TERMINATION | UPSTREAM_REMOTE_RESET | LOCAL_RESET) != 0
        || r.details.starts_with("upstream_reset")
    {
        return Cause::ResetAfterSend;
    }
    if r.status != 503 {
        return Cause::OtherError;
    }
    if r.drain_header {
        return Cause::UpstreamRejected;
    }
    match r.endpoint {
        Some(State::NotReady) => Cause::UpstreamNotReady,
        Some(State::Draining | State::Gone) => Cause::UpstreamDraining,
        _ if r.connection_close => Cause::UpstreamDraining,
        _ => Cause::App503,
    }
}

/// Reset reasons (in `code_details`) that mean no byte of the request left
/// Envoy: the connection never came up, or the stream was refused.
fn never_sent(details: &str) -> bool {
    details.starts_with("upstream_reset_before_response_started")
        && (details.contains("connection_failure")
            || details.contains("refused_stream")
            || details.contains("connect_timeout")
            || details.contains("Connection_refused"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16) -> Observed<'static> {
        Observed {
            status,
            details: "via_upstream",
            ..Default::default()
        }
    }

    #[test]
    fn success_is_not_classified_further() {
        assert_eq!(classify(&obs(200)), Cause::Success);
        assert_eq!(classify(&obs(404)), Cause::Success);
    }

    #[test]
    fn envoy_local_replies_seen_on_envoy_1_40() {
        // A refused connection, as Envoy 1.40 reports it.
        let refused = Observed {
            status: 503,
            flags: 32,
            details: "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            ..Default::default()
        };
        assert_eq!(classify(&refused), Cause::ConnectFailure);
        assert_eq!(Cause::ConnectFailure.reached_app(), Reached::Never);
        // An empty cluster.
        let empty = Observed {
            status: 503,
            flags: 2,
            details: "no_healthy_upstream",
            ..Default::default()
        };
        assert_eq!(classify(&empty), Cause::NoHealthyUpstream);
        // A refused HTTP/2 stream, with no flag.
        let refused_stream = Observed {
            status: 503,
            details: "upstream_reset_before_response_started{remote_refused_stream_reset}",
            ..Default::default()
        };
        assert_eq!(classify(&refused_stream), Cause::ConnectFailure);
    }

    #[test]
    fn resets_after_send_may_have_reached_the_app() {
        let uc = Observed {
            status: 503,
            flags: flags::UPSTREAM_CONNECTION_TERMINATION,
            details: "upstream_reset_before_response_started{connection_termination}",
            ..Default::default()
        };
        assert_eq!(classify(&uc), Cause::ResetAfterSend);
        assert_eq!(Cause::ResetAfterSend.reached_app(), Reached::Maybe);
        let ut = Observed {
            status: 504,
            flags: flags::UPSTREAM_REQUEST_TIMEOUT,
            details: "response_timeout",
            ..Default::default()
        };
        assert_eq!(classify(&ut), Cause::Timeout);
    }

    #[test]
    fn overload_is_never_mistaken_for_draining() {
        assert_eq!(classify(&obs(429)), Cause::Overload);
        let uo = Observed {
            status: 503,
            flags: flags::UPSTREAM_OVERFLOW,
            details: "upstream_reset_before_response_started{overflow}",
            ..Default::default()
        };
        assert_eq!(classify(&uo), Cause::Overload);
        let mut shed = obs(503);
        shed.overloaded = true;
        shed.connection_close = true;
        assert_eq!(classify(&shed), Cause::Overload);
    }

    #[test]
    fn upstream_503s_by_drain_signal() {
        let mut r = obs(503);
        assert_eq!(classify(&r), Cause::App503);
        r.connection_close = true;
        assert_eq!(classify(&r), Cause::UpstreamDraining);
        r.drain_header = true;
        assert_eq!(classify(&r), Cause::UpstreamRejected);
        assert_eq!(Cause::UpstreamRejected.reached_app(), Reached::Never);

        let mut known = obs(503);
        known.endpoint = Some(State::Draining);
        assert_eq!(classify(&known), Cause::UpstreamDraining);
        known.endpoint = Some(State::NotReady);
        assert_eq!(classify(&known), Cause::UpstreamNotReady);
        known.endpoint = Some(State::Ready);
        assert_eq!(classify(&known), Cause::App503);
    }

    #[test]
    fn other_5xx_are_left_alone() {
        assert_eq!(classify(&obs(500)), Cause::OtherError);
        let mut r = obs(502);
        r.connection_close = true;
        assert_eq!(classify(&r), Cause::OtherError);
    }
}
