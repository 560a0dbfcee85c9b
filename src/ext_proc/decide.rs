//! The protocol side of a verdict: reads a failed attempt (or final
//! response) out of Envoy's message, asks [`crate::decide`] for a verdict,
//! and writes it back as Envoy understands it.

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};

use super::{attributes::Attributes, header_value, reply};
use crate::{
    classify::Observed,
    decide::{Decider, Failed, Role, Upstream, Verdict, RETRY_HEADER},
    metrics::Answer,
    policy::{safety, RequestFacts},
};

/// A hold under way: what it needs once the stream asks for the reply.
#[derive(Debug)]
pub struct HoldJob {
    cluster: Option<String>,
    request_id: Option<String>,
}

/// What to send Envoy now, and a hold to run after it, if any.
pub struct Reply {
    pub now: ProcessingResponse,
    pub hold: Option<HoldJob>,
}

/// Reads the failed attempt or response in `headers`.
fn failed<'a>(decider: &Decider, headers: &'a HttpHeaders, attrs: Attributes<'a>) -> Failed<'a> {
    let fields = headers.headers.as_ref();
    let method = attrs.str("request.method").unwrap_or("").as_bytes();
    Failed {
        response: Observed::response(attrs.status(fields), &decider.cfg.drain_header, |name| {
            header_value(fields, name)
        }),
        upstream: Upstream::parse(attrs.str("upstream.address")),
        cluster: attrs.str("xds.cluster_name"),
        request_id: attrs.str("request.id").filter(|id| !id.is_empty()),
        facts: RequestFacts {
            idempotent_method: safety::idempotent_method(method),
            // An empty key is no key: it names nothing to deduplicate on.
            idempotency_key: attrs
                .str("request.headers['idempotency-key']")
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
) -> Reply {
    let f = failed(decider, headers, attrs);
    if role == Role::Final {
        return final_response(decider, &f);
    }
    if f.response.status < 500 {
        // A retry's answer that did not fail: nothing to judge.
        return Reply {
            now: reply::continue_response_headers(),
            hold: None,
        };
    }
    let (cause, verdict) = decider.judge(&f);
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
        Verdict::Hold => {
            // Envoy must wait for the hold: extend its message timeout to
            // `max_hold`, plus a margin to answer in.
            let wait = decider
                .hold_cfg
                .max_hold
                .saturating_add(crate::config::Hold::ANSWER_MARGIN);
            return Reply {
                now: reply::extend_timeout(wait),
                hold: Some(HoldJob {
                    cluster: f.cluster.map(str::to_string),
                    request_id: f.request_id.map(str::to_string),
                }),
            };
        }
    };
    Reply { now, hold: None }
}

/// A retry about to leave for a pod: stopped here when an earlier attempt
/// may have run a request that is not safe to run twice. (A reply from an
/// upstream filter goes straight to the client, Envoy retries it no more:
/// the client gets this 503.)
pub(crate) fn on_retry(decider: &Decider, attrs: Attributes<'_>) -> ProcessingResponse {
    let id = attrs.str("request.id").filter(|id| !id.is_empty());
    if decider.may_retry(id) {
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
    let answer = decider
        .hold(job.cluster.as_deref(), job.request_id.as_deref())
        .await;
    decider.metrics().answer(answer);
    match answer {
        Answer::RetryAfterHold => retry(),
        _ => reply::continue_with_retry_after(decider.cfg.retry_after_seconds),
    }
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
    reply::continue_setting(RETRY_HEADER, "1".to_string())
}
