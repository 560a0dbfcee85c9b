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

use envoy_types::pb::envoy::{
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
    attributes, attributes::Attributes, capture::Captured, decide, header_value, reply, Context,
};
use crate::{
    classify::{Cause, Observed},
    decide::{AttemptState, Role},
    metrics::{Phase, StreamError},
    policy::{self, Decision},
    rescue::{Ending, Job},
    steer,
};

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
    /// A rescue decided on, to run when the stream next asks for a reply.
    pending: Option<Job>,
    /// The endpoints steer listed for this request, in order.
    steered: Vec<SocketAddr>,
    /// Which decide filter opened the stream; `None`: the legacy wiring.
    role: Option<Role>,
    /// A hold decided on, to run when the stream next asks for a reply.
    hold: Option<decide::HoldJob>,
    /// The hold budget the wiring gave this stream (`x-mulligan-max-hold`).
    max_hold: Option<Duration>,
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
            role: None,
            hold: None,
            max_hold: None,
        }
    }

    /// A stream whose wiring gave it the hold budget `max_hold`.
    pub(crate) fn with_max_hold(mut self, max_hold: Option<Duration>) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// A stream opened by a decide filter (`role`), or the legacy wiring.
    pub(crate) fn with_role(mut self, role: Option<Role>) -> Self {
        self.role = role;
        self
    }

    pub(crate) fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Handles one message from Envoy; returns the reply to send, if any.
    pub async fn on_message(
        &mut self,
        mut message: ProcessingRequest,
    ) -> Option<ProcessingResponse> {
        self.start(&message);
        let Some(phase) = message.request.take() else {
            // A flow-control update alone needs no reply; anything else
            // without a phase is malformed, and ignoring it loses nothing.
            if message.client_window_update.is_none() {
                self.ctx.metrics.error(StreamError::EmptyMessage);
                tracing::debug!("ext_proc message without a phase; ignored");
            }
            return None;
        };
        let attrs = message.attributes.remove(attributes::FILTER_KEY);
        let state = AttemptState::read(message.metadata_context.as_ref());
        let reply = self.on_phase(phase, Attributes::from_struct(attrs.as_ref()), state);
        (!self.observability).then_some(reply)
    }

    /// Reads the body modes from the stream's first message, and whether
    /// this one is sent in observability mode.
    fn start(&mut self, message: &ProcessingRequest) {
        if !self.started {
            self.started = true;
            if let Some(cfg) = &message.protocol_config {
                self.request_body =
                    BodySendMode::try_from(cfg.request_body_mode).unwrap_or(BodySendMode::None);
                self.response_body =
                    BodySendMode::try_from(cfg.response_body_mode).unwrap_or(BodySendMode::None);
            }
        }
        self.observability = message.observability_mode;
    }

    /// The reply to one phase.
    fn on_phase(
        &mut self,
        phase: Request,
        attrs: Attributes<'_>,
        state: AttemptState,
    ) -> ProcessingResponse {
        let metrics = &self.ctx.metrics;
        match phase {
            Request::RequestHeaders(headers) => {
                metrics.phase(Phase::RequestHeaders);
                match self.role {
                    Some(Role::Retry) => decide::on_retry(&self.ctx.decider, state),
                    _ => self.on_request_headers(headers, attrs),
                }
            }
            Request::RequestBody(chunk) => {
                metrics.phase(Phase::RequestBody);
                self.on_request_body(chunk)
            }
            Request::RequestTrailers(_) => {
                metrics.phase(Phase::RequestTrailers);
                if let Some(r) = &mut self.request {
                    r.trailers();
                }
                reply::continue_trailers(true)
            }
            Request::ResponseHeaders(headers) => {
                metrics.phase(Phase::ResponseHeaders);
                let Some(role) = self.role else {
                    return self.on_response_headers(&headers, attrs);
                };
                let ctx = decide::Context {
                    state,
                    max_hold: self.max_hold,
                };
                let r = decide::on_response_headers(&self.ctx.decider, role, &headers, attrs, ctx);
                self.hold = r.hold;
                r.now
            }
            Request::ResponseBody(chunk) => {
                metrics.phase(Phase::ResponseBody);
                body_reply(false, self.response_body, chunk)
            }
            Request::ResponseTrailers(_) => {
                metrics.phase(Phase::ResponseTrailers);
                reply::continue_trailers(false)
            }
        }
    }

    /// Runs a rescue decided on in the response headers phase, and returns
    /// the reply that ends it. `None` when no rescue is pending.
    pub async fn resume(&mut self) -> Option<ProcessingResponse> {
        if let Some(job) = self.hold.take() {
            return Some(decide::run_hold(&self.ctx.decider, job).await);
        }
        let job = self.pending.take()?;
        Some(match self.ctx.rescuer.run(job).await {
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
        let rescuer = &self.ctx.rescuer;
        rescuer.budget.deposit();
        let fields = headers.headers.map(|m| m.headers).unwrap_or_default();
        let mut mutation = reply::Mutation::default();
        // With steer on, the response phase is asked for only when needed.
        let observe = if self.ctx.steer.enabled {
            Some(self.steer(&fields, attrs, &mut mutation))
        } else {
            None
        };
        let rescuer = &self.ctx.rescuer;
        let replays = rescuer.cfg.enabled && rescuer.cfg.replay && observe != Some(false);
        let (captured, body_override) = Captured::start(
            fields,
            headers.end_of_stream,
            replays,
            self.request_body,
            &rescuer.cfg,
            rescuer.reservation(),
        );
        self.request = Some(captured);
        if let Some(mode) = body_override {
            self.request_body = mode;
        }
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
        reply::continue_request_headers(mode_override, mutation)
    }

    /// Steers the request: the endpoint list and retry headers go in
    /// `mutation`; returns whether the response phase is wanted.
    fn steer(
        &mut self,
        fields: &[envoy_types::pb::envoy::config::core::v3::HeaderValue],
        attrs: Attributes<'_>,
        mutation: &mut reply::Mutation,
    ) -> bool {
        let cfg = &self.ctx.steer;
        let plan = steer::plan(
            &self.ctx.registry,
            attrs.str("xds.cluster_name"),
            super::capture::facts(fields, true),
            cfg,
            &self.ctx.rescuer.cfg,
            fastrand::f64(),
        );
        for (name, value) in plan.headers(&cfg.header, &self.ctx.rescuer.cfg.drain_header) {
            match value {
                Some(v) => mutation.set(name, v),
                None => mutation.remove(name),
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
        let capture = self.request.as_mut().filter(|r| r.capturing());
        if duplex {
            // The chunk goes back to Envoy; keep a copy only while capturing.
            if let Some(r) = capture {
                r.add(chunk.body.clone(), chunk.end_of_stream, cap);
            }
            reply::echo_body(true, chunk)
        } else {
            if let Some(r) = capture {
                r.add(chunk.body, chunk.end_of_stream, cap);
            }
            reply::continue_body(true)
        }
    }

    fn on_response_headers(
        &mut self,
        headers: &HttpHeaders,
        attrs: Attributes<'_>,
    ) -> ProcessingResponse {
        let fields = headers.headers.as_ref();
        let status = attrs.status(fields);
        let registry = &self.ctx.registry;
        let attempts = attrs.uint("upstream.request_attempt_count").unwrap_or(1);
        if !self.steered.is_empty() {
            steer::learn(registry, &self.steered, attempts, attrs.upstream());
        }
        if status < 500 && status != 429 {
            // The fast path: every healthy response. Passive health only
            // looks further when some endpoint is penalised.
            if registry.has_penalties() {
                if let Some(addr) = attrs.upstream() {
                    registry.observe_success(addr);
                }
            }
            return reply::continue_response_headers();
        }
        let rescuer = &self.ctx.rescuer;
        let failed = attrs.upstream();
        let cause = rescuer.learn(
            Observed {
                flags: attrs.uint("response.flags").unwrap_or(0),
                details: attrs.str("response.code_details").unwrap_or(""),
                ..Observed::response(status, &rescuer.cfg.drain_header, |name| {
                    header_value(fields, name)
                })
            },
            failed,
        );
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
        self.plan(attrs.str("xds.cluster_name"), attempts, failed)
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
        policy::decide(cause, r.facts(), cfg.retry_plain_503)
    }

    /// Turns the captured request into a rescue to run when the stream next
    /// asks for a reply; the reply that makes Envoy wait for it.
    fn plan(
        &mut self,
        cluster: Option<&str>,
        attempts: u64,
        failed: Option<SocketAddr>,
    ) -> ProcessingResponse {
        let mut tried = steer::failed_before(&self.steered, attempts, failed).to_vec();
        tried.extend(failed);
        let cfg = &self.ctx.rescuer.cfg;
        let job = match self.request.take() {
            Some(r) => r.into_job(cfg, cluster, tried),
            None => Err(crate::metrics::Outcome::Unreplayable),
        };
        match job {
            Ok(job) => {
                let wait = job.deadline.saturating_duration_since(Instant::now());
                self.pending = Some(job);
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
}

fn body_reply(request_path: bool, mode: BodySendMode, chunk: HttpBody) -> ProcessingResponse {
    match mode {
        BodySendMode::FullDuplexStreamed | BodySendMode::Grpc => {
            reply::echo_body(request_path, chunk)
        }
        _ => reply::continue_body(request_path),
    }
}
