//! Rescue: turns a retriable failure into the response the client should
//! have got, by replaying the request to a healthy endpoint, or holding it
//! until one is ready, within the request's deadline and the shared budget.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    classify::{self, Cause, Observed},
    config,
    endpoints::{picker, Cluster, Endpoint, Registry},
    metrics::{AttemptResult, Metrics, Outcome},
    policy::{self, safety, Backoff, Budget, Decision, RequestFacts},
    replay::{Attempt, BufferBudget, Failure, Prepared, Replayed, Replayer, Reservation},
};

/// Below this much time left, a replay is not started (or `per_try_timeout`,
/// if shorter): it could not finish, and its timeout would be blamed on an
/// endpoint that did nothing wrong.
const MIN_REPLAY_TIME: Duration = Duration::from_millis(50);

/// Shared by every stream: the budget, the client and the limits.
#[derive(Debug)]
pub struct Rescuer {
    pub cfg: config::Rescue,
    pub budget: Budget,
    backoff: Backoff,
    replayer: Replayer,
    registry: Arc<Registry>,
    metrics: Metrics,
    held: AtomicUsize,
    /// Body bytes held across every stream: requests captured for replay
    /// and replayed responses.
    buffers: Arc<BufferBudget>,
}

/// One rescue: decided on when the response headers are judged, run when
/// the stream next asks for a reply.
#[derive(Debug)]
pub struct Job {
    pub request: Prepared,
    pub facts: RequestFacts,
    pub cluster: Option<String>,
    /// The endpoints that failed it already (not tried again at once).
    pub failed: Vec<SocketAddr>,
    pub deadline: Instant,
    /// The captured body's share of `limits.max_buffered_bytes`, held
    /// until the rescue ends.
    pub _reserved: Reservation,
}

/// How a rescue ended, for the stream to answer Envoy.
#[derive(Debug)]
pub enum Ending {
    /// Send this response instead of the failed one.
    Rescued(Replayed),
    /// Let the original response through; with `Retry-After` when held
    /// until the deadline.
    PassThrough { retry_after: bool },
}

impl Rescuer {
    pub(crate) fn new(cfg: &config::Config, registry: Arc<Registry>, metrics: Metrics) -> Self {
        let buffers = BufferBudget::new(cfg.limits.max_buffered_bytes);
        Self {
            budget: Budget::new(
                cfg.budget.ratio,
                cfg.budget.min_per_second,
                cfg.budget.window,
            ),
            backoff: Backoff {
                base: cfg.rescue.backoff_base,
                max: cfg.rescue.backoff_max,
            },
            replayer: Replayer::new(&cfg.rescue, Arc::clone(&buffers)),
            cfg: cfg.rescue.clone(),
            registry,
            metrics,
            held: AtomicUsize::new(0),
            buffers,
        }
    }

    /// An empty share of `limits.max_buffered_bytes`, for a request body
    /// to be captured into.
    pub(crate) fn reservation(&self) -> Reservation {
        Reservation::new(Arc::clone(&self.buffers))
    }

    /// Body bytes held now, across every stream (replayed responses
    /// included): back to zero once every stream has ended, or the
    /// accounting leaks.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn buffered(&self) -> usize {
        self.buffers.used()
    }

    /// `limits.max_buffered_bytes`.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn max_buffered(&self) -> usize {
        self.buffers.max()
    }

    pub(crate) async fn run(&self, job: Job) -> Ending {
        let started = Instant::now();
        let outcome = self.attempts(&job).await;
        let (outcome, ending) = match outcome {
            Ok(replayed) => (Outcome::Rescued, Ending::Rescued(replayed)),
            Err(o) => (
                o,
                Ending::PassThrough {
                    retry_after: o == Outcome::HeldTooLong,
                },
            ),
        };
        self.metrics
            .outcome(outcome, started.elapsed().as_secs_f64());
        tracing::debug!(
            outcome = outcome.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rescue"
        );
        ending
    }

    async fn attempts(&self, job: &Job) -> Result<Replayed, Outcome> {
        let Some(cluster) = self.registry.cluster(job.cluster.as_deref()) else {
            // No endpoint is known for this cluster: no target, and never
            // another cluster's endpoints.
            return Err(Outcome::UnknownCluster);
        };
        let mut tried: Vec<SocketAddr> = job.failed.clone();
        for replay in 1..=self.cfg.max_attempts {
            let endpoint = self.next(&cluster, &tried, replay, job.deadline).await?;
            let timeout = self.time_for_one(job.deadline)?;
            if !self.budget.try_withdraw() {
                return Err(Outcome::BudgetExhausted);
            }
            let attempt = {
                let _in_flight = endpoint.start_request();
                self.replayer
                    .send(endpoint.addr, &job.request, replay + 1, timeout)
                    .await
            };
            tried.push(endpoint.addr);
            if let Some(r) = self.outcome_of(attempt, job.facts, endpoint.addr, timeout)? {
                return Ok(r);
            }
        }
        Err(Outcome::AttemptsExhausted)
    }

    /// The endpoint for replay number `replay`, after its backoff: one not
    /// tried yet, or the first to become usable while held.
    async fn next(
        &self,
        cluster: &Cluster,
        tried: &[SocketAddr],
        replay: u32,
        deadline: Instant,
    ) -> Result<Arc<Endpoint>, Outcome> {
        if Instant::now() >= deadline {
            return Err(Outcome::NoTimeLeft);
        }
        let pause = self.backoff.delay(replay);
        if !pause.is_zero() {
            tokio::time::sleep_until(later(Instant::now(), pause).min(deadline)).await;
        }
        match picker::pick(cluster, tried, self.registry.now_ms()) {
            Some(e) => Ok(e),
            None => self.hold(cluster, deadline).await,
        }
    }

    /// The time one replay may take: `per_try_timeout`, cut to what is left
    /// before the deadline. A replay that would have almost none (the
    /// backoff or a hold ran up to the deadline) is not sent at all: it
    /// could only time out, and the endpoint would be blamed for it.
    fn time_for_one(&self, deadline: Instant) -> Result<Duration, Outcome> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < MIN_REPLAY_TIME.min(self.cfg.per_try_timeout) {
            return Err(Outcome::NoTimeLeft);
        }
        Ok(self.cfg.per_try_timeout.min(remaining))
    }

    /// Learns from one attempt (passive health, metrics): the response to
    /// answer with, `None` to try another endpoint, or why the rescue ends.
    /// Only a failure that is the endpoint's fault counts against it.
    fn outcome_of(
        &self,
        attempt: Attempt,
        facts: RequestFacts,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Option<Replayed>, Outcome> {
        let blame = match attempt {
            Attempt::Response(r) => return Ok(self.answered(r, facts, addr)),
            Attempt::ConnectFailed => {
                self.metrics.attempt(AttemptResult::ConnectFailure);
                self.registry.observe_failure(addr);
                return Ok(None);
            }
            Attempt::TooLarge => {
                self.metrics.attempt(AttemptResult::Response);
                return Err(Outcome::ResponseTooLarge);
            }
            // Nothing was sent: the request's fault, no endpoint's.
            Attempt::Unsendable => return Err(Outcome::Unreplayable),
            Attempt::Failed(why) => {
                self.metrics.replay_failed(why);
                tracing::debug!(endpoint = %addr, why = why.as_str(), "replay failed");
                // A timeout the deadline cut short says nothing of the endpoint.
                why != Failure::Timeout || timeout >= self.cfg.per_try_timeout
            }
        };
        if blame {
            self.registry.observe_failure(addr);
        }
        // The app may have this one now: only an idempotent request may go
        // out again.
        if !safety::is_safe(classify::Reached::Maybe, facts) {
            return Err(Outcome::StoppedUnsafe);
        }
        Ok(None)
    }

    /// A replayed response: the one to answer with, or `None` when the
    /// policy would retry it.
    fn answered(&self, r: Replayed, facts: RequestFacts, addr: SocketAddr) -> Option<Replayed> {
        if self.judge(&r, facts, addr) == Decision::Rescue {
            self.metrics.attempt(AttemptResult::Retriable);
            self.registry.observe_failure(addr);
            return None;
        }
        self.metrics.attempt(AttemptResult::Response);
        if r.status < 500 {
            self.registry.observe_success(addr);
        }
        Some(r)
    }

    /// Would the policy retry this replayed response?
    fn judge(&self, r: &Replayed, facts: RequestFacts, addr: SocketAddr) -> Decision {
        let cause = classify::classify(&Observed {
            details: "via_upstream",
            endpoint: self.registry.state_of(addr),
            ..Observed::response(r.status, &self.cfg.drain_header, |name| {
                r.headers.get(name).map(|v| v.as_bytes())
            })
        });
        if cause == Cause::Success {
            return Decision::NotRetriable;
        }
        policy::decide(cause, facts, self.cfg.retry_plain_503)
    }

    /// Why the response Envoy got from `upstream` failed; passive health
    /// learns from it when the failure is the endpoint's own.
    pub(crate) fn learn(&self, observed: Observed<'_>, upstream: Option<SocketAddr>) -> Cause {
        let cause = classify::classify(&Observed {
            endpoint: upstream.and_then(|a| self.registry.state_of(a)),
            ..observed
        });
        if let Some(addr) = upstream {
            if cause.blames_endpoint() {
                self.registry.observe_failure(addr);
            }
        }
        cause
    }

    /// Waits for a usable endpoint until the deadline: woken by any change
    /// that can make one usable (a lifecycle or probe "ready", a cleared
    /// penalty) or by the next penalty expiring; no polling.
    async fn hold(&self, cluster: &Cluster, deadline: Instant) -> Result<Arc<Endpoint>, Outcome> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Outcome::HeldLimit);
        }
        let _held = Held(self);
        self.metrics.held(1.0);
        let mut changes = self.registry.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(e) = picker::pick(cluster, &[], self.registry.now_ms()) {
                return Ok(e);
            }
            let wake = self
                .registry
                .next_penalty_expiry(cluster)
                .map_or(deadline, |d| {
                    later(Instant::now(), d + Duration::from_millis(1)).min(deadline)
                });
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(Outcome::HeldTooLong);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(Outcome::HeldTooLong);
                    }
                }
            }
        }
    }
}

/// Releases a held request's place, however the hold ends.
struct Held<'a>(&'a Rescuer);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.held(-1.0);
    }
}

/// `start + d`, but never past a year from `start`: durations come from the
/// config, which is input too, and an `Instant` that overflows panics (a
/// `rescue.deadline` of a billion years would otherwise take the stream
/// down on its first rescue).
pub(crate) fn later(start: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    start.checked_add(d.min(FAR)).unwrap_or(start)
}
