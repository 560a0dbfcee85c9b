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
pub mod memory;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    classify::{self, Cause, Observed, Reached},
    config,
    endpoints::Registry,
    metrics::{Answer, Metrics},
    policy::{self, Budget, Decision, RequestFacts},
};
use hold::{Holds, Unheld};
use memory::Memory;

/// The response header that asks Envoy for another attempt. The route's
/// retry policy retries on it (`retriable-headers`), and the wiring strips
/// it from every upstream response first, so only mulligan can set it.
pub const RETRY_HEADER: &str = "x-mulligan-retry";

/// Which filter opened the stream: the gRPC initial metadata
/// `x-mulligan-phase` the wiring sets on each.
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
    pub const METADATA_KEY: &'static str = "x-mulligan-phase";
    /// The values [`Role::METADATA_KEY`] may take, for error messages.
    pub const ACCEPTED: &'static str = "retry, attempt, final";

    pub(crate) fn parse(value: &[u8]) -> Option<Role> {
        match value {
            b"retry" => Some(Role::Retry),
            b"attempt" => Some(Role::Attempt),
            b"final" => Some(Role::Final),
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
    /// Envoy's request id: the same on every attempt of one request.
    pub request_id: Option<&'a str>,
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
/// the hold first (with a settle time that doubles per release).
const REPEATED_FAILURES: u8 = 3;

/// Shared by every stream.
#[derive(Debug)]
pub struct Decider {
    pub cfg: config::Retry,
    pub hold_cfg: config::Hold,
    registry: Arc<Registry>,
    metrics: Metrics,
    budget: Budget,
    memory: Memory,
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
            memory: Memory::new(cfg.hold.max_hold.max(Duration::from_secs(1))),
            holds: Holds::new(Arc::clone(&registry), metrics.clone(), &cfg.hold),
            cfg: cfg.retry.clone(),
            hold_cfg: cfg.hold.clone(),
            registry,
            metrics,
        }
    }

    /// The verdict on one failed attempt; learns from it on the way.
    pub(crate) fn judge(&self, f: &Failed<'_>) -> (Cause, Verdict) {
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
        let verdict = self.verdict(f, cause);
        let decision = match verdict {
            Verdict::Stand(d) => d,
            _ => Decision::Retry,
        };
        self.metrics.decision(cause, decision);
        (cause, verdict)
    }

    fn verdict(&self, f: &Failed<'_>, cause: Cause) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Stand(Decision::Disabled);
        }
        self.budget.deposit();
        let reached = cause.reached_app();
        let note = self
            .memory
            .update(f.request_id, |n| n.failures = n.failures.saturating_add(1));
        if note.tainted {
            return Verdict::Stand(Decision::Unsafe);
        }
        if !policy::safety::is_safe(reached, f.facts) {
            // Whatever happens next (the route's own retry policy may still
            // try again), mulligan never blesses another attempt of it.
            self.memory.update(f.request_id, |n| n.tainted = true);
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
        // serve: Envoy's view lags (its endpoint list still shows pods that
        // are leaving). Holding gives it time to catch up before the next
        // attempt, instead of spending every retry on the same leavers.
        let lagging = note.failures >= REPEATED_FAILURES;
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
    /// cluster can serve; the answer that ends the hold.
    pub(crate) async fn hold(&self, cluster: Option<&str>, request_id: Option<&str>) -> Answer {
        let note = self.memory.get(request_id);
        // A request back at the hold right after a release found Envoy
        // still without the endpoint: give Envoy's view longer to catch up.
        let settle = self
            .hold_cfg
            .settle
            .saturating_mul(2u32.saturating_pow(note.releases.into()))
            .min(Duration::from_secs(1));
        let started = Instant::now();
        let deadline = hold::later(started, self.hold_cfg.max_hold);
        let waited = self.holds.wait(cluster, settle, deadline).await;
        if waited != Err(Unheld::Limit) && waited != Err(Unheld::NothingComing) {
            self.metrics.hold_ended(started.elapsed().as_secs_f64());
        }
        match waited {
            Ok(()) => {
                self.memory
                    .update(request_id, |n| n.releases = n.releases.saturating_add(1));
                Answer::RetryAfterHold
            }
            Err(Unheld::Limit) => Answer::HeldLimit,
            Err(Unheld::TooLong) => Answer::HeldTooLong,
            Err(Unheld::NothingComing) => Answer::NothingComing,
        }
    }

    /// Whether a retry of request `id` may leave for a pod: not when an
    /// earlier attempt may have run it and it is not safe to run twice,
    /// whoever asked for the retry (mulligan, a connection failure, or a
    /// retry policy of the route's own).
    pub(crate) fn may_retry(&self, id: Option<&str>) -> bool {
        let ok = !self.memory.get(id).tainted;
        self.metrics
            .answer(if ok { Answer::Pass } else { Answer::Stopped });
        ok
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
        id: &'static str,
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
            request_id: Some(id),
            facts,
        }
    }

    fn from_a(
        status: u16,
        signal: Signal,
        facts: RequestFacts,
        id: &'static str,
    ) -> Failed<'static> {
        attempt(status, signal, facts, Upstream::Endpoint(addr(A)), id)
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
        for (i, (status, signal, facts, want, why)) in cases.into_iter().enumerate() {
            let id = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"][i];
            let (_, got) = d.judge(&from_a(status, signal, facts, id));
            assert_eq!(got, want, "{status} {why}");
        }
        let off = decider(|c| c.retry.retry_plain_503 = false);
        let (cause, got) = off.judge(&from_a(503, Plain, GET, "p"));
        assert_eq!((cause, got), (Cause::App503, stand(Decision::NotRetriable)));
        let disabled = decider(|c| c.retry.enabled = false);
        let (_, got) = disabled.judge(&from_a(503, Drain, GET, "d"));
        assert_eq!(got, stand(Decision::Disabled));
    }

    /// Guard: the hold-or-retry choice at the end of `verdict`.
    #[tokio::test(start_paused = true)]
    async fn hold_when_no_other_endpoint_can_serve_else_retry() {
        let d = decider(|_| {});
        let (_, got) = d.judge(&from_a(503, Signal::Drain, GET, "1"));
        assert_eq!(got, Verdict::Retry, "B is ready");
        d.registry
            .set_state(addr(B), None, State::Draining, "test")
            .expect("known");
        let (_, got) = d.judge(&from_a(503, Signal::Drain, GET, "2"));
        assert_eq!(got, Verdict::Hold, "B is leaving: only A, which failed");
        let hold = attempt(503, Signal::Plain, POST, Upstream::Hold, "3");
        let (cause, got) = d.judge(&hold);
        assert_eq!((cause, got), (Cause::NoHealthyUpstream, Verdict::Hold));
        let mut elsewhere = from_a(503, Signal::Drain, GET, "4");
        elsewhere.cluster = Some("not-known");
        let (_, got) = d.judge(&elsewhere);
        assert_eq!(
            got,
            Verdict::Retry,
            "no cluster to hold for: Envoy's own retry"
        );
    }

    /// Guard: `lagging` (the third-failure rule) in `verdict`.
    #[tokio::test(start_paused = true)]
    async fn the_third_failure_of_one_request_is_held() {
        let d = decider(|_| {});
        let fail = || d.judge(&from_a(503, Signal::Drain, GET, "same")).1;
        assert_eq!(fail(), Verdict::Retry);
        assert_eq!(fail(), Verdict::Retry);
        assert_eq!(fail(), Verdict::Hold, "Envoy's view lags: give it time");
        let (_, other) = d.judge(&from_a(503, Signal::Drain, GET, "other"));
        assert_eq!(other, Verdict::Retry, "another request has its own count");
    }

    /// Guard: the taint check at the top of `verdict` (and `may_retry`).
    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_may_have_run_taints_every_later_one() {
        let d = decider(|_| {});
        let (_, first) = d.judge(&from_a(503, Signal::Close, POST, "post"));
        assert_eq!(first, Verdict::Stand(Decision::Unsafe));
        assert!(!d.may_retry(Some("post")), "the gate stops any retry of it");
        // A later attempt that never reached an app would be safe on its
        // own: not after one that may have run it.
        let (_, later) = d.judge(&from_a(503, Signal::Drain, POST, "post"));
        assert_eq!(later, Verdict::Stand(Decision::Unsafe));
        assert!(d.may_retry(Some("another")));
        assert!(d.may_retry(None), "no id: nothing known against it");
    }

    /// Guards: `adds_load` and the budget withdrawal in `verdict`.
    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_only_retries_that_add_load_and_refills() {
        let d = decider(|c| {
            c.budget.ratio = 0.0;
            c.budget.min_per_second = 1;
            c.budget.window = Duration::from_secs(1);
        });
        let plain = |id| d.judge(&from_a(503, Signal::Plain, GET, id)).1;
        assert_eq!(plain("1"), Verdict::Retry, "the floor: one a second");
        assert_eq!(plain("2"), Verdict::Stand(Decision::BudgetSpent));
        for (signal, id) in [(Signal::Close, "3"), (Signal::Drain, "4")] {
            let (_, got) = d.judge(&from_a(503, signal, GET, id));
            assert_eq!(got, Verdict::Retry, "away from a leaving pod: free");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(plain("5"), Verdict::Retry, "a second later");
    }
}
