//! Steer: on the request path, hand Envoy an ordered list of healthy
//! endpoints and a retry policy fit for this request, so Envoy's router
//! makes the attempts where mulligan says. Even streamed and large bodies
//! are protected (Envoy holds them, not mulligan), and a healthy request pays
//! one round trip to mulligan, not two.
//!
//! The list goes in the header Envoy's `override_host` load balancing policy
//! reads (`x-gateway-destination-endpoint`, the Gateway API inference
//! extension's convention; Envoy Gateway's BackendTrafficPolicy
//! `loadBalancer.endpointOverride`). The retry headers (`x-envoy-retry-on`,
//! `x-envoy-max-retries`, ...) need `mutation_rules.allow_envoy` in the
//! ext_proc filter.

use std::net::SocketAddr;

use crate::{
    config,
    endpoints::{Endpoint, Registry},
    policy::RequestFacts,
};

/// Retried for every method: the request never reached the app, or the app
/// said it rejected it unprocessed (the drain header, named in
/// `x-envoy-retriable-header-names`).
const RETRY_ON_NEVER_PROCESSED: &str =
    "connect-failure,refused-stream,reset-before-request,retriable-headers";
/// Retried when repeating the request is safe: also resets after sending.
const RETRY_ON_SAFE: &str =
    "connect-failure,refused-stream,reset-before-request,retriable-headers,reset";
/// ... and, with `retry_plain_503`, any 503.
const RETRY_ON_SAFE_503: &str =
    "connect-failure,refused-stream,reset-before-request,retriable-headers,reset,retriable-status-codes";

/// What to tell Envoy for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// In the order Envoy should try them; empty: let Envoy choose.
    pub endpoints: Vec<SocketAddr>,
    pub retry_on: &'static str,
    /// Whether any 503 is retried (`x-envoy-retriable-status-codes: 503`).
    /// Off by default: Envoy cannot tell a draining pod's 503 from a pod
    /// shedding load, and retrying the latter amplifies an overload.
    pub retry_503: bool,
    pub max_retries: u32,
    pub per_try_timeout_ms: u64,
    /// Whether mulligan wants the response phase for this request: to rescue
    /// what steering cannot (a list too short to fall over along), or to
    /// learn from it.
    pub observe: bool,
}

/// Plans one request. `sample` is a uniform draw in `[0, 1)` deciding
/// whether a request that needs nothing more is observed anyway.
pub(crate) fn plan(
    registry: &Registry,
    cluster: Option<&str>,
    facts: RequestFacts,
    steer: &config::Steer,
    rescue: &config::Rescue,
    sample: f64,
) -> Plan {
    let safe = facts.idempotent_method || facts.idempotency_key;
    let endpoints = registry
        .cluster(cluster)
        .map(|c| order(&c.endpoints, registry.now_ms(), steer.max_endpoints))
        .unwrap_or_default();
    let max_retries = (endpoints.len().saturating_sub(1) as u32).min(rescue.max_attempts);
    let sampled = steer.observe_one_in > 0 && sample * f64::from(steer.observe_one_in) < 1.0;
    let retry_503 = safe && rescue.retry_plain_503;
    Plan {
        observe: endpoints.len() < steer.observe_below.max(1) || sampled,
        retry_on: match (safe, retry_503) {
            (false, _) => RETRY_ON_NEVER_PROCESSED,
            (true, false) => RETRY_ON_SAFE,
            (true, true) => RETRY_ON_SAFE_503,
        },
        retry_503,
        max_retries,
        per_try_timeout_ms: rescue.per_try_timeout.as_millis() as u64,
        endpoints,
    }
}

impl Plan {
    /// The request headers that hand this plan to Envoy, as (name, value):
    /// the endpoint list in `list_header` and the retry policy that goes
    /// with it. A `None` value removes the header: with no list, a client's
    /// own never reaches Envoy.
    pub(crate) fn headers<'a>(
        &self,
        list_header: &'a str,
        drain_header: &'a str,
    ) -> Vec<(&'a str, Option<String>)> {
        if self.endpoints.is_empty() {
            return vec![(list_header, None)];
        }
        let mut out = vec![
            (list_header, Some(header_value(&self.endpoints))),
            ("x-envoy-retry-on", Some(self.retry_on.to_string())),
            (
                "x-envoy-retriable-header-names",
                Some(drain_header.to_string()),
            ),
            ("x-envoy-max-retries", Some(self.max_retries.to_string())),
            (
                "x-envoy-upstream-rq-per-try-timeout-ms",
                Some(self.per_try_timeout_ms.to_string()),
            ),
        ];
        if self.retry_503 {
            out.push(("x-envoy-retriable-status-codes", Some("503".to_string())));
        }
        out
    }
}

/// Passive health from a steered response: Envoy went down the list, so
/// the endpoints before the one that answered failed this request.
pub(crate) fn learn(
    registry: &Registry,
    steered: &[SocketAddr],
    attempts: u64,
    answered: Option<SocketAddr>,
) {
    if attempts > 1 {
        for e in failed_before(steered, attempts, answered) {
            registry.observe_failure(*e);
        }
    }
}

/// Usable endpoints, least loaded first, ties in random order (so load
/// spreads), at most `max`.
fn order(endpoints: &[std::sync::Arc<Endpoint>], now_ms: u64, max: usize) -> Vec<SocketAddr> {
    let mut usable: Vec<&Endpoint> = endpoints
        .iter()
        .map(|e| &**e)
        .filter(|e| e.usable(now_ms))
        .collect();
    if usable.is_empty() {
        return Vec::new();
    }
    let start = fastrand::usize(..usable.len());
    usable.rotate_left(start);
    usable.sort_by_key(|e| e.in_flight());
    usable.iter().take(max).map(|e| e.addr).collect()
}

/// The endpoint list as `override_host` reads it: `ip:port,ip:port`.
pub(crate) fn header_value(endpoints: &[SocketAddr]) -> String {
    let mut out = String::with_capacity(endpoints.len() * 22);
    for (i, e) in endpoints.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.to_string());
    }
    out
}

/// What a steered response says about the endpoints tried before it: with
/// `override_host`, attempt `k` went to the k-th listed endpoint, so the
/// listed endpoints before the one that answered failed.
pub(crate) fn failed_before(
    steered: &[SocketAddr],
    attempts: u64,
    answered: Option<SocketAddr>,
) -> &[SocketAddr] {
    let tried = (attempts.saturating_sub(1) as usize).min(steered.len());
    let failed = &steered[..tried];
    match answered {
        Some(a) if failed.contains(&a) => {
            &failed[..failed.iter().position(|e| *e == a).unwrap_or(0)]
        }
        _ => failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{registry::loopback as registry, State};

    const GET: RequestFacts = RequestFacts {
        idempotent_method: true,
        idempotency_key: false,
        body_replayable: true,
    };
    const POST: RequestFacts = RequestFacts {
        idempotent_method: false,
        idempotency_key: false,
        body_replayable: true,
    };

    #[test]
    fn lists_only_usable_endpoints_and_retries_by_safety() {
        let r = registry(5);
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        r.set_state(a(1), None, State::Draining, "x").unwrap();
        r.observe_failure(a(2));
        let steer = config::Steer::default();
        let rescue = config::Rescue::default();
        let p = plan(&r, None, GET, &steer, &rescue, 0.9);
        let mut listed = p.endpoints.clone();
        listed.sort();
        assert_eq!(listed, vec![a(3), a(4), a(5)]);
        assert_eq!(p.max_retries, 2);
        assert!(p.retry_on.contains("retriable-headers") && p.retry_on.ends_with(",reset"));
        assert!(!p.retry_503 && !p.retry_on.contains("retriable-status-codes"));
        assert!(
            !p.observe,
            "a request with a fallback needs no response phase"
        );

        let post = plan(&r, None, POST, &steer, &rescue, 0.9);
        assert!(!post.retry_503 && !post.retry_on.contains("retriable-status-codes"));
        assert!(!post.retry_on.contains("reset,") && !post.retry_on.ends_with(",reset"));
        assert!(
            post.retry_on.contains("retriable-headers"),
            "drain-header 503s: any method"
        );

        let plain = config::Rescue {
            retry_plain_503: true,
            ..config::Rescue::default()
        };
        let p = plan(&r, None, GET, &steer, &plain, 0.9);
        assert!(p.retry_503 && p.retry_on.contains("retriable-status-codes"));
        assert!(!plan(&r, None, POST, &steer, &plain, 0.9).retry_503);
    }

    /// A GET's plan with the default steer and rescue settings.
    fn plan_default(r: &Registry) -> Plan {
        plan(
            r,
            None,
            GET,
            &config::Steer::default(),
            &config::Rescue::default(),
            0.9,
        )
    }

    #[test]
    fn a_short_list_keeps_the_response_phase() {
        let r = registry(2);
        let p = plan_default(&r);
        assert_eq!(p.endpoints.len(), 2);
        assert!(p.observe);
    }

    #[test]
    fn nothing_usable_means_envoy_chooses_and_mulligan_watches() {
        let r = registry(1);
        r.set_state(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            None,
            State::Gone,
            "x",
        )
        .unwrap();
        let p = plan_default(&r);
        assert!(p.endpoints.is_empty());
        assert!(p.observe);
    }

    #[test]
    fn sampling_observes_one_in_n() {
        let r = registry(4);
        let (s, x) = (config::Steer::default(), config::Rescue::default());
        assert!(plan(&r, None, GET, &s, &x, 0.01).observe);
        assert!(!plan(&r, None, GET, &s, &x, 0.5).observe);
    }

    #[test]
    fn learns_which_listed_endpoints_failed() {
        let l: Vec<SocketAddr> = (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        assert!(failed_before(&l, 1, Some(l[0])).is_empty());
        assert_eq!(failed_before(&l, 3, Some(l[2])), &l[..2]);
        assert_eq!(failed_before(&l, 2, None), &l[..1]);
        assert_eq!(header_value(&l), "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
    }
}
