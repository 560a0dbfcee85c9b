//! The protocol side of a verdict: reads a failed attempt (or final
//! response) out of Envoy's message, asks [`crate::decide`] for a verdict,
//! and writes it back as Envoy understands it.

use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};

use super::{attributes::Attributes, header_value, reply};
use crate::{
    classify::Observed,
    decide::{AttemptState, Decider, Failed, Role, Upstream, Verdict},
    metrics::Answer,
    names::{self, attribute},
    policy::{safety, RequestFacts},
};

/// A hold under way: what it needs once the stream asks for the reply.
#[derive(Debug)]
pub struct HoldJob {
    cluster: Option<String>,
    /// How long the hold may last.
    max_hold: Duration,
    /// The request's state with this attempt counted, written back with
    /// the answer that ends the hold.
    state: AttemptState,
}

/// What a stream knows beyond the message in hand: the request's state as
/// Envoy forwarded it, and the stream's hold budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Known {
    pub(crate) state: AttemptState,
    pub(crate) max_hold: Option<Duration>,
}

/// How long a hold may last, and the wait to ask Envoy for. The budget is
/// the stream's (`x-mulligan-max-hold`: the wiring gives Envoy the same as
/// `max_message_timeout`), or `hold.max_hold` for a stream without one (a
/// hand-written wiring; check-config holds it within
/// `hold.envoy_max_message_timeout`). Envoy is asked to wait exactly the
/// budget, never more than it grants, and the hold ends
/// [`ANSWER_MARGIN`](crate::config::Hold::ANSWER_MARGIN) earlier so the
/// answer arrives in time.
pub(crate) fn hold_budget(decider: &Decider, stream: Option<Duration>) -> (Duration, Duration) {
    let budget = stream.unwrap_or(decider.hold_cfg.max_hold);
    let margin = crate::config::Hold::ANSWER_MARGIN;
    (budget.saturating_sub(margin), budget)
}

/// `reply`, carrying the request's updated `state` back to Envoy.
fn with_state(mut reply: ProcessingResponse, state: AttemptState) -> ProcessingResponse {
    reply.dynamic_metadata = Some(state.write());
    reply
}

/// What to send Envoy now, and a hold to run after it, if any.
pub struct Reply {
    pub now: ProcessingResponse,
    pub hold: Option<HoldJob>,
}

/// Reads the failed attempt or response in `headers`.
fn failed<'a>(decider: &Decider, headers: &'a HttpHeaders, attrs: Attributes<'a>) -> Failed<'a> {
    let fields = headers.headers.as_ref();
    let method = attrs
        .str(attribute::REQUEST_METHOD)
        .unwrap_or("")
        .as_bytes();
    Failed {
        response: Observed::response(attrs.status(fields), &decider.cfg.drain_header, |name| {
            header_value(fields, name)
        }),
        upstream: Upstream::parse(attrs.str(attribute::UPSTREAM_ADDRESS)),
        cluster: attrs.str(attribute::CLUSTER_NAME),
        facts: RequestFacts {
            idempotent_method: safety::idempotent_method(method),
            // An empty key is no key: it names nothing to deduplicate on.
            idempotency_key: attrs
                .str(attribute::IDEMPOTENCY_KEY)
                .is_some_and(|k| !k.trim().is_empty()),
        },
    }
}

/// The answer to the response headers of a decide stream.
pub(crate) fn on_response_headers(
    decider: &Decider,
    role: Role,
    headers: &HttpHeaders,
    attrs: Attributes<'_>,
    known: Known,
) -> Reply {
    let f = failed(decider, headers, attrs);
    if role == Role::Final {
        return final_response(decider, &f);
    }
    if f.response.status < 500 {
        // A retry's answer that did not fail: nothing to judge, but Envoy
        // can reach an app again.
        decider.served(f.cluster, f.upstream);
        return Reply {
            now: reply::continue_response_headers(),
            hold: None,
        };
    }
    let mut state = known.state;
    let (cause, verdict) = decider.judge(&f, &mut state);
    tracing::debug!(
        status = f.response.status,
        cause = cause.as_str(),
        ?verdict,
        upstream = ?f.upstream,
        cluster = f.cluster,
        "failed attempt"
    );
    let now = match verdict {
        Verdict::Retry => {
            decider.metrics().answer(Answer::Retry);
            retry()
        }
        Verdict::Stand(_) => {
            decider.metrics().answer(Answer::Stand);
            reply::continue_response_headers()
        }
        Verdict::Hold => return hold(decider, f.cluster, known.max_hold, state),
    };
    Reply {
        now: with_state(now, state),
        hold: None,
    }
}

/// The reply that starts a hold: Envoy must wait for it, so its message
/// timeout is extended to the budget, never past what it grants. (Envoy
/// takes no state from this reply: the answer that ends the hold carries
/// it.)
fn hold(
    decider: &Decider,
    cluster: Option<&str>,
    budget: Option<Duration>,
    state: AttemptState,
) -> Reply {
    let (max_hold, wait) = hold_budget(decider, budget);
    Reply {
        now: reply::extend_timeout(wait),
        hold: Some(HoldJob {
            cluster: cluster.map(str::to_string),
            max_hold,
            state,
        }),
    }
}

/// A retry about to leave for a pod: stopped here when an earlier attempt
/// may have run a request that is not safe to run twice. (A reply from an
/// upstream filter goes straight to the client, Envoy retries it no more:
/// the client gets this 503.)
pub(crate) fn on_retry(decider: &Decider, state: AttemptState) -> ProcessingResponse {
    if decider.may_retry(state) {
        reply::continue_request_headers()
    } else {
        reply::refuse(
            "not retried: an earlier attempt may have run this request\n",
            "mulligan_unsafe_retry",
        )
    }
}

/// Runs a hold; the reply that ends it.
pub(crate) async fn run_hold(decider: &Decider, job: HoldJob) -> ProcessingResponse {
    let mut state = job.state;
    let answer = decider
        .hold(job.cluster.as_deref(), job.max_hold, &mut state)
        .await;
    decider.metrics().answer(answer);
    let reply = match answer {
        Answer::RetryAfterHold => retry(),
        _ => reply::continue_with_retry_after(decider.cfg.retry_after_seconds),
    };
    with_state(reply, state)
}

/// A failed response on its way to the client: learn from it, and tell the
/// client when to come back if it is a 503.
fn final_response(decider: &Decider, f: &Failed<'_>) -> Reply {
    let cause = crate::classify::classify(&f.response);
    decider.last(f.upstream, cause);
    let now = if f.response.status == 503 {
        reply::continue_with_retry_after(decider.cfg.retry_after_seconds)
    } else {
        reply::continue_response_headers()
    };
    Reply { now, hold: None }
}

fn retry() -> ProcessingResponse {
    reply::continue_setting(names::RETRY_HEADER, names::RETRY_VALUE.to_string())
}
