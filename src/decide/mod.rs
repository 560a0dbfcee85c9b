//! Decide: Envoy makes every attempt; mulligan is asked only about an
//! attempt that failed, and answers whether another one may follow.
//!
//! The reference wiring (`envoy-config/standalone/envoy.yaml`) asks from two
//! places, and only for 5xx responses, so healthy requests never open a
//! stream:
//! - **attempt**: an upstream filter of the app cluster, once per failed
//!   attempt. When another attempt is safe, affordable and can help,
//!   mulligan adds `x-mulligan-retry: 1` and Envoy's route retry policy
//!   makes it: through the route (rewrites, header policies, upstream TLS),
//!   with the body Envoy buffered, logged and counted as Envoy's own. When
//!   no endpoint can serve yet, the answer waits ([`hold`]) until one can.
//! - **final**: a downstream filter, once per failed response on its way to
//!   the client. mulligan learns from it and adds `Retry-After` to a 503.
//!
//! Nothing here sends a request anywhere: an ext_proc peer can at most ask
//! for a retry Envoy would make through its own route.

pub mod hold;
pub mod state;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    classify::{self, Cause, Observed, Reached},
    config,
    endpoints::Registry,
    metrics::{Answer, Metrics},
    names,
    policy::{self, Budget, Decision, RequestFacts},
};
use hold::{Holds, Unheld};
pub use state::AttemptState;

/// Which filter opened the stream: the gRPC initial metadata
/// [`names::phase::HEADER`] the wiring sets on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A retry (attempt 2 and later), from the app cluster's upstream
    /// filter: its request headers before it leaves (the gate), then its
    /// answer.
    Retry,
    /// A failed first attempt, from the app cluster's upstream filter.
    Attempt,
    /// The failed response the client is about to get.
    Final,
}

impl Role {
    pub(crate) fn parse(value: &[u8]) -> Option<Role> {
        match std::str::from_utf8(value).ok()? {
            names::phase::RETRY => Some(Role::Retry),
            names::phase::ATTEMPT => Some(Role::Attempt),
            names::phase::FINAL => Some(Role::Final),
            _ => None,
        }
    }
}

/// Who answered the failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// An app endpoint.
    Endpoint(SocketAddr),
    /// The hold endpoint: Envoy had no healthy app endpoint.
    Hold,
    /// Not said, or not an address mulligan understands.
    Unknown,
}

impl Upstream {
    /// From Envoy's `upstream.address` attribute. Envoy internal listeners
    /// (the hold) show as `envoy://NAME/...`; an app cannot fake that.
    pub(crate) fn parse(address: Option<&str>) -> Self {
        match address {
            Some(a) if a.starts_with("envoy://") => Upstream::Hold,
            Some(a) => a.parse().map_or(Upstream::Unknown, Upstream::Endpoint),
            None => Upstream::Unknown,
        }
    }

    fn endpoint(self) -> Option<SocketAddr> {
        match self {
            Upstream::Endpoint(a) => Some(a),
            _ => None,
        }
    }
}

/// One failed attempt, as Envoy describes it.
#[derive(Clone, Copy, Debug)]
pub struct Failed<'a> {
    /// The status and the header signals of the failed response.
    pub response: Observed<'a>,
    pub upstream: Upstream,
    pub cluster: Option<&'a str>,
    pub facts: RequestFacts,
}

/// mulligan's answer on one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Another attempt, now.
    Retry,
    /// Another attempt once an endpoint can serve: hold until then.
    Hold,
    /// This response stands; the reason is the metric label.
    Stand(Decision),
}

/// From this many failed attempts of one request on, each retry waits in
/// the hold first (released after `hold.settle`, or as a scout).
const REPEATED_FAILURES: u8 = 3;

/// Shared by every stream.
#[derive(Debug)]
pub struct Decider {
    pub cfg: config::Retry,
    pub hold_cfg: config::Hold,
    registry: Arc<Registry>,
    metrics: Metrics,
    budget: Budget,
    pub holds: Holds,
}

impl Decider {
    pub(crate) fn new(cfg: &config::Config, registry: Arc<Registry>, metrics: Metrics) -> Self {
        Self {
            budget: Budget::new(
                cfg.budget.ratio,
                cfg.budget.min_per_second,
                cfg.budget.window,
            ),
            holds: Holds::new(Arc::clone(&registry), metrics.clone(), &cfg.hold),
            cfg: cfg.retry.clone(),
            hold_cfg: cfg.hold.clone(),
            registry,
            metrics,
        }
    }

    /// The verdict on one failed attempt of a request whose earlier
    /// attempts left `state`; learns from it on the way, and updates
    /// `state` for the attempts that follow.
    pub(crate) fn judge(&self, f: &Failed<'_>, state: &mut AttemptState) -> (Cause, Verdict) {
        let cause = match f.upstream {
            Upstream::Hold => Cause::NoHealthyUpstream,
            _ => classify::classify(&Observed {
                details: "via_upstream",
                endpoint: f
                    .upstream
                    .endpoint()
                    .and_then(|a| self.registry.state_of(a)),
                ..f.response
            }),
        };
        self.learn(f.upstream, cause);
        let verdict = self.verdict(f, cause, state);
        if verdict == Verdict::Hold {
            // Envoy sent it where it could not be served (the hold
            // endpoint, or the leavers its list still shows): its view is
            // behind until a retry is served.
            self.holds.envoy_behind(f.cluster);
        }
        let decision = match verdict {
            Verdict::Stand(d) => d,
            _ => Decision::Retry,
        };
        self.metrics.decision(cause, decision);
        (cause, verdict)
    }

    fn verdict(&self, f: &Failed<'_>, cause: Cause, state: &mut AttemptState) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Stand(Decision::Disabled);
        }
        self.budget.deposit();
        let reached = cause.reached_app();
        state.failures = state.failures.saturating_add(1);
        if state.may_have_run {
            return Verdict::Stand(Decision::Unsafe);
        }
        if !policy::safety::is_safe(reached, f.facts) {
            // Whatever happens next (the route's own retry policy may still
            // try again), no later attempt of it may leave: the gate reads
            // this on the retry's stream, in whichever process it reaches.
            state.may_have_run = true;
            return Verdict::Stand(Decision::Unsafe);
        }
        let decision = policy::decide(cause, f.facts, self.cfg.retry_plain_503);
        if decision != Decision::Retry {
            return Verdict::Stand(decision);
        }
        if adds_load(cause, reached) && !self.budget.try_withdraw() {
            return Verdict::Stand(Decision::BudgetSpent);
        }
        let cluster = self.registry.cluster(f.cluster);
        let others = cluster
            .as_deref()
            .is_some_and(|c| self.holds.has_other(c, f.upstream.endpoint()));
        // Two failures in a row while mulligan knows an endpoint that can
        // serve, or Envoy behind on the cluster (a request held since a
        // retry was last served): Envoy's view lags (its endpoint list
        // still shows pods that are leaving). Holding gives it time to
        // catch up before the next attempt, instead of spending every retry
        // on the same leavers.
        let lagging = state.failures >= REPEATED_FAILURES || self.holds.is_behind(f.cluster);
        if f.upstream == Upstream::Hold || (cluster.is_some() && (!others || lagging)) {
            Verdict::Hold
        } else {
            Verdict::Retry
        }
    }

    /// Passive health: an endpoint that failed in a way that is its own
    /// fault is avoided for a while.
    fn learn(&self, upstream: Upstream, cause: Cause) {
        if let Upstream::Endpoint(addr) = upstream {
            if cause.blames_endpoint() {
                self.registry.observe_failure(addr);
            }
        }
    }

    /// Holds a request judged [`Verdict::Hold`] until an endpoint of its
    /// cluster can serve, for at most `max_hold`; the answer that ends the
    /// hold (a release is counted in `state`).
    pub(crate) async fn hold(
        &self,
        cluster: Option<&str>,
        max_hold: Duration,
        state: &mut AttemptState,
    ) -> Answer {
        // A request back at the hold again waits longer before it may
        // scout once more: its retries last while Envoy is behind.
        let settle = self.hold_cfg.settle;
        let patience = settle
            .saturating_mul(state.releases.into())
            .min(Duration::from_secs(1));
        let started = Instant::now();
        let deadline = hold::later(started, max_hold);
        let waited = self.holds.wait(cluster, settle, patience, deadline).await;
        if waited != Err(Unheld::Limit) && waited != Err(Unheld::NothingComing) {
            self.metrics.hold_ended(started.elapsed().as_secs_f64());
        }
        match waited {
            Ok(()) => {
                state.releases = state.releases.saturating_add(1);
                Answer::RetryAfterHold
            }
            Err(Unheld::Limit) => Answer::HeldLimit,
            Err(Unheld::TooLong) => Answer::HeldTooLong,
            Err(Unheld::NothingComing) => Answer::NothingComing,
        }
    }

    /// Whether a retry of a request whose earlier attempts left `state`
    /// may leave for a pod: not when one of them may have run it and it is
    /// not safe to run twice, whoever asked for the retry (mulligan, a
    /// connection failure, or a retry policy of the route's own).
    pub(crate) fn may_retry(&self, state: AttemptState) -> bool {
        let ok = !state.may_have_run;
        self.metrics
            .answer(if ok { Answer::Pass } else { Answer::Stopped });
        ok
    }

    /// A retry's answer that did not fail, from `upstream`: Envoy can send
    /// the requests held for `cluster` somewhere.
    pub(crate) fn served(&self, cluster: Option<&str>, upstream: Upstream) {
        if upstream.endpoint().is_some() {
            self.holds.served(cluster);
        }
    }

    /// The failed response the client is about to get: learn from it.
    pub(crate) fn last(&self, upstream: Upstream, cause: Cause) {
        self.learn(upstream, cause);
        self.metrics.answer(Answer::Final);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Whether retrying this failure may add load on the apps: only a failure
/// the app may have processed does. Retries away from a departing endpoint
/// (a drain signal, a refused connection, an endpoint known draining or not
/// ready, no endpoint at all) are free: the budget never stops them, so a
/// rollout cannot exhaust it.
fn adds_load(cause: Cause, reached: Reached) -> bool {
    reached == Reached::Maybe && !matches!(cause, Cause::UpstreamDraining | Cause::UpstreamNotReady)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, endpoints::State};

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";

    fn addr(a: &str) -> SocketAddr {
        a.parse().expect("an address")
    }

    /// Cluster `app` of A and B, both ready, with `change` applied.
    fn decider(change: impl FnOnce(&mut Config)) -> Decider {
        let mut cfg = Config::default();
        cfg.endpoints
            .clusters
            .insert("app".into(), vec![addr(A), addr(B)]);
        cfg.retry.retry_plain_503 = true;
        change(&mut cfg);
        let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
        Decider::new(&cfg, registry, Metrics::new())
    }

    /// How the failed response said why it failed.
    #[derive(Clone, Copy)]
    enum Signal {
        Plain,
        /// The drain header: the app refused it unprocessed.
        Drain,
        /// `connection: close`: a pod on its way out.
        Close,
    }

    const GET: RequestFacts = RequestFacts {
        idempotent_method: true,
        idempotency_key: false,
    };
    const POST: RequestFacts = RequestFacts {
        idempotent_method: false,
        idempotency_key: false,
    };
    const KEYED_POST: RequestFacts = RequestFacts {
        idempotent_method: false,
        idempotency_key: true,
    };

    fn attempt(
        status: u16,
        signal: Signal,
        facts: RequestFacts,
        upstream: Upstream,
    ) -> Failed<'static> {
        Failed {
            response: Observed {
                status,
                flags: 0,
                details: "",
                connection_close: matches!(signal, Signal::Close),
                drain_header: matches!(signal, Signal::Drain),
                overloaded: false,
                endpoint: None,
            },
            upstream,
            cluster: Some("app"),
            facts,
        }
    }

    fn from_a(status: u16, signal: Signal, facts: RequestFacts) -> Failed<'static> {
        attempt(status, signal, facts, Upstream::Endpoint(addr(A)))
    }

    /// The verdict on the first failed attempt of a request.
    fn first(d: &Decider, f: &Failed<'_>) -> (Cause, Verdict) {
        d.judge(f, &mut AttemptState::default())
    }

    /// Guards: `policy::decide` (cause) and `safety::is_safe` (the verdict's
    /// own safety check).
    #[tokio::test(start_paused = true)]
    async fn the_verdict_follows_the_cause_and_the_requests_safety() {
        use Signal::*;
        let d = decider(|_| {});
        let stand = Verdict::Stand;
        let cases = [
            (503, Drain, POST, Verdict::Retry, "never reached the app"),
            (503, Close, GET, Verdict::Retry, "a leaving pod, idempotent"),
            (
                503,
                Close,
                POST,
                stand(Decision::Unsafe),
                "a leaving pod may have run it",
            ),
            (503, Close, KEYED_POST, Verdict::Retry, "an idempotency key"),
            (503, Plain, GET, Verdict::Retry, "retry_plain_503 on"),
            (
                503,
                Plain,
                POST,
                stand(Decision::Unsafe),
                "a plain 503 may have run it",
            ),
            (
                500,
                Plain,
                GET,
                stand(Decision::NotRetriable),
                "another 5xx",
            ),
            (429, Plain, GET, stand(Decision::NotRetriable), "overload"),
        ];
        for (status, signal, facts, want, why) in cases {
            let (_, got) = first(&d, &from_a(status, signal, facts));
            assert_eq!(got, want, "{status} {why}");
        }
        let off = decider(|c| c.retry.retry_plain_503 = false);
        let (cause, got) = first(&off, &from_a(503, Plain, GET));
        assert_eq!((cause, got), (Cause::App503, stand(Decision::NotRetriable)));
        let disabled = decider(|c| c.retry.enabled = false);
        let (_, got) = first(&disabled, &from_a(503, Drain, GET));
        assert_eq!(got, stand(Decision::Disabled));
    }

    /// Guard: the hold-or-retry choice at the end of `verdict`.
    #[tokio::test(start_paused = true)]
    async fn hold_when_no_other_endpoint_can_serve_else_retry() {
        let d = decider(|_| {});
        let (_, got) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(got, Verdict::Retry, "B is ready");
        d.registry
            .set_state(addr(B), None, State::Draining, "test")
            .expect("known");
        let (_, got) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(got, Verdict::Hold, "B is leaving: only A, which failed");
        let hold = attempt(503, Signal::Plain, POST, Upstream::Hold);
        let (cause, got) = first(&d, &hold);
        assert_eq!((cause, got), (Cause::NoHealthyUpstream, Verdict::Hold));
        let mut elsewhere = from_a(503, Signal::Drain, GET);
        elsewhere.cluster = Some("not-known");
        let (_, got) = first(&d, &elsewhere);
        assert_eq!(
            got,
            Verdict::Retry,
            "no cluster to hold for: Envoy's own retry"
        );
    }

    /// Guard: `lagging` (the third-failure rule) in `verdict`, counted in
    /// the request's own state.
    #[tokio::test(start_paused = true)]
    async fn the_third_failure_of_one_request_is_held() {
        let d = decider(|_| {});
        let mut same = AttemptState::default();
        let mut fail = || d.judge(&from_a(503, Signal::Drain, GET), &mut same).1;
        assert_eq!(fail(), Verdict::Retry);
        assert_eq!(fail(), Verdict::Retry);
        assert_eq!(fail(), Verdict::Hold, "Envoy's view lags: give it time");
        assert_eq!(same.failures, 3);
        // Envoy's view caught up (a retry was served): another request is
        // judged on its own failures again.
        d.served(Some("app"), Upstream::Endpoint(addr(B)));
        let (_, other) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(other, Verdict::Retry, "another request has its own count");
    }

    /// Guard: the may-have-run check at the top of `verdict` (and
    /// `may_retry`), carried in the request's state.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_may_have_run_taints_every_later_one() {
        let d = decider(|_| {});
        let mut post = AttemptState::default();
        let (_, once) = d.judge(&from_a(503, Signal::Close, POST), &mut post);
        assert_eq!(once, Verdict::Stand(Decision::Unsafe));
        assert!(post.may_have_run);
        assert!(!d.may_retry(post), "the gate stops any retry of it");
        // A later attempt that never reached an app would be safe on its
        // own: not after one that may have run it.
        let (_, later) = d.judge(&from_a(503, Signal::Drain, POST), &mut post);
        assert_eq!(later, Verdict::Stand(Decision::Unsafe));
        assert!(
            d.may_retry(AttemptState::default()),
            "nothing known against it"
        );
    }

    /// Guards: `adds_load` and the budget withdrawal in `verdict`.
    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_only_retries_that_add_load_and_refills() {
        let d = decider(|c| {
            c.budget.ratio = 0.0;
            c.budget.min_per_second = 1;
            c.budget.window = Duration::from_secs(1);
        });
        let plain = || first(&d, &from_a(503, Signal::Plain, GET)).1;
        assert_eq!(plain(), Verdict::Retry, "the floor: one a second");
        assert_eq!(plain(), Verdict::Stand(Decision::BudgetSpent));
        for signal in [Signal::Close, Signal::Drain] {
            let (_, got) = first(&d, &from_a(503, signal, GET));
            assert_eq!(got, Verdict::Retry, "away from a leaving pod: free");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(plain(), Verdict::Retry, "a second later");
    }

    /// Guards: the `envoy_behind` call in `judge` and `served`.
    #[tokio::test(start_paused = true)]
    async fn a_held_attempt_marks_envoy_behind_until_an_app_serves_a_retry() {
        let d = decider(|_| {});
        let (_, got) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(got, Verdict::Retry);
        assert!(!d.holds.is_behind(Some("app")), "retried, not held");
        let (_, got) = first(&d, &attempt(503, Signal::Plain, GET, Upstream::Hold));
        assert_eq!(got, Verdict::Hold);
        assert!(
            d.holds.is_behind(Some("app")),
            "Envoy had nowhere to send it"
        );
        d.served(Some("app"), Upstream::Hold);
        assert!(d.holds.is_behind(Some("app")), "not served by an app");
        d.served(Some("app"), Upstream::Endpoint(addr(B)));
        assert!(!d.holds.is_behind(Some("app")));
    }

    /// Guard: `is_behind` in `lagging`.
    #[tokio::test(start_paused = true)]
    async fn while_envoy_is_behind_a_first_failure_is_held_not_retried() {
        let d = decider(|_| {});
        d.holds.envoy_behind(Some("app"));
        let (_, got) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(got, Verdict::Hold, "B is ready, but Envoy is behind");
        d.served(Some("app"), Upstream::Endpoint(addr(B)));
        let (_, got) = first(&d, &from_a(503, Signal::Drain, GET));
        assert_eq!(got, Verdict::Retry, "a retry was served since");
        d.holds.envoy_behind(Some("app"));
        let (_, got) = first(&d, &from_a(503, Signal::Close, POST));
        assert_eq!(got, Verdict::Stand(Decision::Unsafe), "safety first");
    }
}
