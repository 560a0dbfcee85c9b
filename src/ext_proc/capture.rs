//! The legacy wiring's request capture: what a replay needs of the request
//! (its headers and, when small enough, its body), taken as Envoy hands the
//! phases over, and every buffered byte counted against
//! `limits.max_buffered_bytes` until the capture (or the rescue it became)
//! is dropped.

use std::{net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::{
    config::core::v3::HeaderValue as EnvoyHeader,
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
};
use tokio::time::Instant;

use super::headers::find;
use crate::{
    config,
    metrics::Outcome,
    policy::{safety, RequestFacts},
    replay::{Prepared, Reservation},
    rescue::{self, Job},
};

/// The request, as captured for a possible replay. The headers are the
/// message's own, moved here, not copied.
#[derive(Debug)]
pub struct Captured {
    headers: Vec<EnvoyHeader>,
    received: Instant,
    body: Body,
    /// The body's bytes, counted against `limits.max_buffered_bytes`.
    reserved: Reservation,
}

/// The request body, as far as replay is concerned.
#[derive(Debug)]
enum Body {
    /// The request has no body.
    Empty,
    /// Chunks are arriving and fit under the cap so far.
    Buffering(BytesMut),
    /// The whole body, under the cap.
    Complete(Bytes),
    /// Over the cap, with trailers, or not observed: never replayed.
    Unavailable,
}

impl Captured {
    /// Starts capturing a request whose headers are `headers`. `replays`:
    /// whether it may be replayed at all; `announced`: the request body mode
    /// Envoy announced. Returns the capture, and the body mode to ask Envoy
    /// for when this body must be observed and Envoy would not send it.
    pub(crate) fn start(
        headers: Vec<EnvoyHeader>,
        end_of_stream: bool,
        replays: bool,
        announced: BodySendMode,
        cfg: &config::Rescue,
        reserved: Reservation,
    ) -> (Self, Option<BodySendMode>) {
        let length = find(&headers, "content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        let (body, mode) = if !replays {
            (Body::Unavailable, None)
        } else if end_of_stream {
            (Body::Empty, None)
        } else if length.is_some_and(|n| n > cfg.max_request_body_bytes) {
            (Body::Unavailable, None)
        } else {
            // Observe this body only when Envoy would not send it: a known
            // small one whole (one message); one of unknown length chunk by
            // chunk, so it is never held back waiting for a buffer.
            let mode = (announced == BodySendMode::None).then_some(if length.is_some() {
                BodySendMode::Buffered
            } else {
                BodySendMode::Streamed
            });
            (Body::Buffering(BytesMut::new()), mode)
        };
        let captured = Self {
            headers,
            received: Instant::now(),
            body,
            reserved,
        };
        (captured, mode)
    }

    /// Whether body chunks are still being kept.
    pub(crate) fn capturing(&self) -> bool {
        matches!(self.body, Body::Buffering(_))
    }

    /// Whether the body is whole (or there is none): a replay can carry it.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self.body, Body::Empty | Body::Complete(_))
    }

    /// Trailers are not replayed: a body followed by them is not either.
    pub(crate) fn trailers(&mut self) {
        self.give_up();
    }

    /// Keeps one body chunk, unless it takes the body over the per-request
    /// cap (`cap`) or over what every request together may hold: then this
    /// body will not be replayed, and what it held goes back.
    pub(crate) fn add(&mut self, bytes: Vec<u8>, end: bool, cap: usize) {
        let Body::Buffering(buf) = &mut self.body else {
            return;
        };
        if buf.len() + bytes.len() > cap || !self.reserved.take(bytes.len()) {
            self.give_up();
        } else if buf.is_empty() && end {
            // The usual case (BUFFERED): the whole body in one message, kept
            // without a copy.
            self.body = Body::Complete(Bytes::from(bytes));
        } else {
            buf.extend_from_slice(&bytes);
            if end {
                self.body = Body::Complete(buf.split().freeze());
            }
        }
    }

    fn give_up(&mut self) {
        self.body = Body::Unavailable;
        self.reserved.release_all();
    }

    /// What the safety rules need to know about this request.
    pub(crate) fn facts(&self) -> RequestFacts {
        facts(&self.headers, self.replayable())
    }

    /// The rescue of this request: within the route's budget when an Envoy
    /// in front announced one, never past `rescue.deadline`; `failed`: the
    /// endpoints it is not to be replayed to at once.
    pub(crate) fn into_job(
        self,
        cfg: &config::Rescue,
        cluster: Option<&str>,
        failed: Vec<SocketAddr>,
    ) -> Result<Job, Outcome> {
        let route_budget = find(&self.headers, "x-envoy-expected-rq-timeout-ms")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let budget = route_budget.map_or(cfg.deadline, |b| b.min(cfg.deadline));
        let deadline = rescue::later(self.received, budget);
        if Instant::now() >= deadline {
            return Err(Outcome::NoTimeLeft);
        }
        let facts = facts(&self.headers, true);
        let body = match self.body {
            Body::Complete(b) => b,
            _ => Bytes::new(),
        };
        let request = Prepared::from_envoy(&self.headers, body).map_err(|e| {
            tracing::debug!(error = %e, "request cannot be replayed");
            Outcome::Unreplayable
        })?;
        Ok(Job {
            request,
            facts,
            cluster: cluster.map(str::to_string),
            failed,
            deadline,
            _reserved: self.reserved,
        })
    }
}

/// What the safety rules need to know about a request, from its headers.
pub(crate) fn facts(headers: &[EnvoyHeader], body_replayable: bool) -> RequestFacts {
    RequestFacts {
        idempotent_method: find(headers, ":method").is_some_and(safety::idempotent_method),
        // An empty key is no key: it names nothing to deduplicate on.
        idempotency_key: find(headers, "idempotency-key")
            .is_some_and(|k| !k.trim_ascii().is_empty()),
        body_replayable,
    }
}
