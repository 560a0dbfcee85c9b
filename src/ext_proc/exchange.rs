//! One HTTP request/response exchange, as seen over its ext_proc stream.
//!
//! Envoy sends the phases it is configured to send (request headers, body
//! chunks, trailers, then the same for the response) and, unless it runs in
//! observability mode, waits for exactly one reply per message (in
//! FULL_DUPLEX_STREAMED mode, for the body chunks it handed over). Every
//! message is answered at once, in order, so Envoy never reaches its message
//! timeout; whatever Envoy sends, in whatever order, gets a well-formed reply
//! and the request passes through as Envoy would have served it.
//!
//! The one exception is a rescue: on a retriable failure the reply to the
//! response headers first extends Envoy's message timeout, then, once the
//! rescue ends ([`Exchange::resume`]), replaces the response or lets it
//! through.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::{
    config::core::v3::HeaderValue as EnvoyHeader,
    extensions::filters::http::ext_proc::v3::{
        processing_mode::{BodySendMode, HeaderSendMode},
        ProcessingMode,
    },
    service::ext_proc::v3::{
        processing_request::Request, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    },
};
use tokio::time::Instant;

use super::{
    attributes, attributes::Attributes, decide, header_value, headers::find, reply, Context,
};
use crate::{
    classify::{self, Cause, Observed},
    decide::Role,
    metrics::{Outcome, Phase, StreamError},
    policy::{self, safety, Decision, RequestFacts},
    replay::Prepared,
    rescue::{Ending, Job},
    steer,
};

/// The request, as captured for a possible replay. The headers are the
/// message's own, moved here, not copied.
#[derive(Debug)]
struct Captured {
    headers: Vec<EnvoyHeader>,
    received: Instant,
    body: Body,
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

/// A rescue decided on, to run when the stream next asks for a reply.
#[derive(Debug)]
struct Pending {
    request: Prepared,
    facts: RequestFacts,
    cluster: Option<String>,
    /// Endpoints that already failed this request (not retried at once).
    failed: Vec<SocketAddr>,
    deadline: Instant,
}

/// Per-request state, owned by the stream.
#[derive(Debug)]
pub struct Exchange {
    ctx: Arc<Context>,
    /// Body modes announced in the stream's first message (`protocol_config`).
    request_body: BodySendMode,
    response_body: BodySendMode,
    /// Envoy ignores replies in observability mode, so none are sent.
    observability: bool,
    started: bool,
    request: Option<Captured>,
    pending: Option<Pending>,
    /// The endpoints steer listed for this request, in order.
    steered: Vec<SocketAddr>,
    /// Captured body bytes counted against `limits.max_buffered_bytes`.
    reserved: usize,
    /// Which decide filter opened the stream; `None`: the legacy wiring.
    role: Option<Role>,
    /// A hold decided on, to run when the stream next asks for a reply.
    hold: Option<decide::HoldJob>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.ctx.rescuer.release(self.reserved);
    }
}

impl Exchange {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            request_body: BodySendMode::None,
            response_body: BodySendMode::None,
            observability: false,
            started: false,
            request: None,
            pending: None,
            steered: Vec::new(),
            reserved: 0,
            role: None,
            hold: None,
        }
    }

    /// A stream opened by a decide filter (`role`), or the legacy wiring.
    pub fn with_role(mut self, role: Option<Role>) -> Self {
        self.role = role;
        self
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Handles one message from Envoy; returns the reply to send, if any.
    pub async fn on_message(
        &mut self,
        mut message: ProcessingRequest,
    ) -> Option<ProcessingResponse> {
        if !self.started {
            self.started = true;
            if let Some(cfg) = message.protocol_config {
                self.request_body =
                    BodySendMode::try_from(cfg.request_body_mode).unwrap_or(BodySendMode::None);
                self.response_body =
                    BodySendMode::try_from(cfg.response_body_mode).unwrap_or(BodySendMode::None);
            }
        }
        self.observability = message.observability_mode;
        let metrics = &self.ctx.metrics;

        let reply = match message.request.take() {
            Some(Request::RequestHeaders(headers)) => {
                metrics.phase(Phase::RequestHeaders);
                let attrs = message.attributes.remove(attributes::FILTER_KEY);
                let attrs = Attributes::from_struct(attrs.as_ref());
                match self.role {
                    Some(Role::Retry) => decide::on_retry(&self.ctx.decider, attrs),
                    _ => self.on_request_headers(headers, attrs),
                }
            }
            Some(Request::RequestBody(chunk)) => {
                metrics.phase(Phase::RequestBody);
                self.on_request_body(chunk)
            }
            Some(Request::RequestTrailers(_)) => {
                metrics.phase(Phase::RequestTrailers);
                // Trailers are not replayed: a body followed by them is not either.
                if let Some(r) = &mut self.request {
                    r.body = Body::Unavailable;
                }
                reply::continue_trailers(true)
            }
            Some(Request::ResponseHeaders(headers)) => {
                metrics.phase(Phase::ResponseHeaders);
                let attrs = message.attributes.remove(attributes::FILTER_KEY);
                let attrs = Attributes::from_struct(attrs.as_ref());
                match self.role {
                    Some(role) => {
                        let r =
                            decide::on_response_headers(&self.ctx.decider, role, &headers, attrs);
                        self.hold = r.hold;
                        r.now
                    }
                    None => self.on_response_headers(&headers, attrs),
                }
            }
            Some(Request::ResponseBody(chunk)) => {
                metrics.phase(Phase::ResponseBody);
                body_reply(false, self.response_body, chunk)
            }
            Some(Request::ResponseTrailers(_)) => {
                metrics.phase(Phase::ResponseTrailers);
                reply::continue_trailers(false)
            }
            None => {
                // A flow-control update alone needs no reply; anything else
                // without a phase is malformed, and ignoring it loses nothing.
                if message.client_window_update.is_none() {
                    metrics.error(StreamError::EmptyMessage);
                    tracing::debug!("ext_proc message without a phase; ignored");
                }
                return None;
            }
        };
        (!self.observability).then_some(reply)
    }

    /// Runs a rescue decided on in the response headers phase, and returns
    /// the reply that ends it. `None` when no rescue is pending.
    pub async fn resume(&mut self) -> Option<ProcessingResponse> {
        if let Some(job) = self.hold.take() {
            return Some(decide::run_hold(&self.ctx.decider, job).await);
        }
        let p = self.pending.take()?;
        let ending = self
            .ctx
            .rescuer
            .run(Job {
                request: &p.request,
                facts: p.facts,
                cluster: p.cluster.as_deref(),
                failed: &p.failed,
                deadline: p.deadline,
            })
            .await;
        Some(match ending {
            Ending::Rescued(r) => {
                reply::immediate(r).unwrap_or_else(reply::continue_response_headers)
            }
            Ending::PassThrough { retry_after: true } => {
                reply::continue_with_retry_after(self.ctx.rescuer.cfg.retry_after_seconds)
            }
            Ending::PassThrough { retry_after: false } => reply::continue_response_headers(),
        })
    }

    fn on_request_headers(
        &mut self,
        headers: HttpHeaders,
        attrs: Attributes<'_>,
    ) -> ProcessingResponse {
        self.ctx.rescuer.budget.deposit();
        let fields = headers.headers.map(|m| m.headers).unwrap_or_default();
        let mut mutation = reply::Mutation::default();
        // With steer on, the response phase is asked for only when needed.
        let observe = if self.ctx.steer.enabled {
            Some(self.steer(&fields, attrs, &mut mutation))
        } else {
            None
        };
        let rescuer = &self.ctx.rescuer;
        let mut body_override = None;
        let replays = rescuer.cfg.enabled && rescuer.cfg.replay;
        let body = if !replays || observe == Some(false) {
            Body::Unavailable
        } else if headers.end_of_stream {
            Body::Empty
        } else {
            let cap = rescuer.cfg.max_request_body_bytes;
            let length = find(&fields, "content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
            match length {
                Some(n) if n > cap => Body::Unavailable,
                _ => {
                    if self.request_body == BodySendMode::None {
                        // Observe this body only: a known small one whole
                        // (one message); one of unknown length chunk by chunk,
                        // so it is never held back waiting for a buffer.
                        let mode = if length.is_some() {
                            BodySendMode::Buffered
                        } else {
                            BodySendMode::Streamed
                        };
                        body_override = Some(mode);
                        self.request_body = mode;
                    }
                    Body::Buffering(BytesMut::new())
                }
            }
        };
        let mode_override =
            (observe.is_some() || body_override.is_some()).then(|| ProcessingMode {
                request_header_mode: HeaderSendMode::Send as i32,
                response_header_mode: if observe == Some(false) {
                    HeaderSendMode::Skip
                } else {
                    HeaderSendMode::Send
                } as i32,
                request_body_mode: self.request_body as i32,
                response_body_mode: self.response_body as i32,
                request_trailer_mode: HeaderSendMode::Default as i32,
                response_trailer_mode: HeaderSendMode::Default as i32,
            });
        self.request = Some(Captured {
            headers: fields,
            received: Instant::now(),
            body,
        });
        reply::continue_request_headers(mode_override, mutation)
    }

    /// Steers the request: the endpoint list and retry headers go in
    /// `mutation`; returns whether the response phase is wanted.
    fn steer(
        &mut self,
        fields: &[EnvoyHeader],
        attrs: Attributes<'_>,
        mutation: &mut reply::Mutation,
    ) -> bool {
        let cfg = &self.ctx.steer;
        let facts = facts(fields, true);
        let plan = steer::plan(
            &self.ctx.registry,
            attrs.str("xds.cluster_name"),
            facts,
            cfg,
            &self.ctx.rescuer.cfg,
            fastrand::f64(),
        );
        if plan.endpoints.is_empty() {
            // Never let a client's own list through.
            mutation.remove(&cfg.header);
        } else {
            mutation.set(&cfg.header, steer::header_value(&plan.endpoints));
            mutation.set("x-envoy-retry-on", plan.retry_on.to_string());
            mutation.set(
                "x-envoy-retriable-header-names",
                self.ctx.rescuer.cfg.drain_header.clone(),
            );
            mutation.set("x-envoy-max-retries", plan.max_retries.to_string());
            mutation.set(
                "x-envoy-upstream-rq-per-try-timeout-ms",
                plan.per_try_timeout_ms.to_string(),
            );
            if plan.retry_503 {
                mutation.set("x-envoy-retriable-status-codes", "503".to_string());
            }
        }
        self.ctx
            .metrics
            .steered(plan.endpoints.is_empty(), plan.observe);
        self.steered = plan.endpoints;
        plan.observe
    }

    fn on_request_body(&mut self, chunk: HttpBody) -> ProcessingResponse {
        let cap = self.ctx.rescuer.cfg.max_request_body_bytes;
        let duplex = matches!(
            self.request_body,
            BodySendMode::FullDuplexStreamed | BodySendMode::Grpc
        );
        let capturing = matches!(
            self.request,
            Some(Captured {
                body: Body::Buffering(_),
                ..
            })
        );
        if duplex {
            // The chunk goes back to Envoy; keep a copy only while capturing.
            if capturing {
                self.capture(chunk.body.clone(), chunk.end_of_stream, cap);
            }
            reply::echo_body(true, chunk)
        } else {
            if capturing {
                self.capture(chunk.body, chunk.end_of_stream, cap);
            }
            reply::continue_body(true)
        }
    }

    fn capture(&mut self, bytes: Vec<u8>, end: bool, cap: usize) {
        let Some(r) = &mut self.request else { return };
        let Body::Buffering(buf) = &mut r.body else {
            return;
        };
        // Over the per-request cap, or over what every request together may
        // hold: this body will not be replayed, and what it held goes back.
        if buf.len() + bytes.len() > cap || !self.ctx.rescuer.reserve(bytes.len()) {
            r.body = Body::Unavailable;
            self.ctx.rescuer.release(std::mem::take(&mut self.reserved));
        } else if buf.is_empty() && end {
            self.reserved += bytes.len();
            // The usual case (BUFFERED): the whole body in one message, kept
            // without a copy.
            r.body = Body::Complete(Bytes::from(bytes));
        } else {
            self.reserved += bytes.len();
            buf.extend_from_slice(&bytes);
            if end {
                r.body = Body::Complete(buf.split().freeze());
            }
        }
    }

    fn on_response_headers(
        &mut self,
        headers: &HttpHeaders,
        attrs: Attributes<'_>,
    ) -> ProcessingResponse {
        let fields = headers.headers.as_ref();
        let status = attrs
            .uint("response.code")
            .or_else(|| {
                header_value(fields, ":status")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            })
            // A code past u16 is no HTTP status: unknown, left alone (a
            // plain cast would wrap 66039 to 503).
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let registry = &self.ctx.registry;
        let upstream = || {
            attrs
                .str("upstream.address")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        if !self.steered.is_empty() {
            // Envoy went down our list: the endpoints before the one that
            // answered failed this request.
            let attempts = attrs.uint("upstream.request_attempt_count").unwrap_or(1);
            if attempts > 1 {
                for e in steer::failed_before(&self.steered, attempts, upstream()) {
                    registry.observe_failure(*e);
                }
            }
        }
        if status < 500 && status != 429 {
            // The fast path: every healthy response. Passive health only
            // looks further when some endpoint is penalised.
            if registry.has_penalties() {
                if let Some(addr) = upstream() {
                    registry.observe_success(addr);
                }
            }
            return reply::continue_response_headers();
        }

        let rescue_cfg = &self.ctx.rescuer.cfg;
        let failed = upstream();
        let cause = classify::classify(&Observed {
            status,
            flags: attrs.uint("response.flags").unwrap_or(0),
            details: attrs.str("response.code_details").unwrap_or(""),
            connection_close: header_value(fields, "connection")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"close")),
            drain_header: header_value(fields, &rescue_cfg.drain_header).is_some(),
            overloaded: header_value(fields, "x-envoy-overloaded").is_some(),
            endpoint: failed.and_then(|a| registry.state_of(a)),
        });
        if let Some(addr) = failed {
            if cause.blames_endpoint() {
                registry.observe_failure(addr);
            }
        }

        let decision = self.decide(cause);
        self.ctx.metrics.decision(cause, decision);
        tracing::debug!(
            status,
            cause = cause.as_str(),
            decision = decision.as_str(),
            upstream = ?failed,
            cluster = attrs.str("xds.cluster_name"),
            "failed response"
        );
        if decision != Decision::Rescue {
            return reply::continue_response_headers();
        }
        match self.plan(attrs, failed) {
            Ok(pending) => {
                let wait = pending.deadline.saturating_duration_since(Instant::now());
                self.pending = Some(pending);
                // Envoy must wait for the rescue: extend its message timeout
                // to the deadline (plus a margin to answer in).
                reply::extend_timeout(wait + Duration::from_millis(200))
            }
            Err(outcome) => {
                self.ctx.metrics.outcome(outcome, 0.0);
                reply::continue_response_headers()
            }
        }
    }

    fn decide(&self, cause: Cause) -> Decision {
        let cfg = &self.ctx.rescuer.cfg;
        if cause == Cause::Success {
            return Decision::NotRetriable;
        }
        if !cfg.enabled || !cfg.replay || self.observability {
            return Decision::Disabled;
        }
        let Some(r) = &self.request else {
            return Decision::BodyNotCaptured;
        };
        let facts = facts(
            &r.headers,
            matches!(r.body, Body::Empty | Body::Complete(_)),
        );
        policy::decide(cause, facts, cfg.retry_plain_503)
    }

    /// Everything the rescue needs, taken from the captured request.
    fn plan(
        &mut self,
        attrs: Attributes<'_>,
        failed: Option<SocketAddr>,
    ) -> Result<Pending, Outcome> {
        let cfg = &self.ctx.rescuer.cfg;
        let r = self.request.take().ok_or(Outcome::Unreplayable)?;
        let facts = facts(&r.headers, true);
        // The route's budget, when an Envoy in front announced it.
        let route_budget = find(&r.headers, "x-envoy-expected-rq-timeout-ms")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let budget = route_budget.map_or(cfg.deadline, |b| b.min(cfg.deadline));
        let deadline = crate::rescue::later(r.received, budget);
        if Instant::now() >= deadline {
            return Err(Outcome::NoTimeLeft);
        }
        let body = match r.body {
            Body::Complete(b) => b,
            _ => Bytes::new(),
        };
        let request = Prepared::from_envoy(&r.headers, body).map_err(|e| {
            tracing::debug!(error = %e, "request cannot be replayed");
            Outcome::Unreplayable
        })?;
        let attempts = attrs.uint("upstream.request_attempt_count").unwrap_or(1);
        let mut tried: Vec<SocketAddr> =
            steer::failed_before(&self.steered, attempts, failed).to_vec();
        tried.extend(failed);
        Ok(Pending {
            request,
            facts,
            cluster: attrs.str("xds.cluster_name").map(str::to_string),
            failed: tried,
            deadline,
        })
    }
}

/// What the safety rules need to know about a request, from its headers.
fn facts(headers: &[EnvoyHeader], body_replayable: bool) -> RequestFacts {
    RequestFacts {
        idempotent_method: find(headers, ":method").is_some_and(safety::idempotent_method),
        // An empty key is no key: it names nothing to deduplicate on.
        idempotency_key: find(headers, "idempotency-key")
            .is_some_and(|k| !k.trim_ascii().is_empty()),
        body_replayable,
    }
}

fn body_reply(request_path: bool, mode: BodySendMode, chunk: HttpBody) -> ProcessingResponse {
    match mode {
        BodySendMode::FullDuplexStreamed | BodySendMode::Grpc => {
            reply::echo_body(request_path, chunk)
        }
        _ => reply::continue_body(request_path),
    }
}
