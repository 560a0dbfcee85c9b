//! One ext_proc stream of one filter, as mulligan sees it.
//!
//! Envoy sends the phases it is configured to send (request headers, body
//! chunks, trailers, then the same for the response) and, unless it runs in
//! observability mode, waits for exactly one reply per message (in
//! FULL_DUPLEX_STREAMED mode, for the body chunks it handed over). Every
//! message is answered at once, in order, so Envoy never reaches its message
//! timeout; whatever Envoy sends, in whatever order, gets a well-formed reply
//! and the request passes through as Envoy would have served it.
//!
//! The one exception is a hold: the reply to a failed attempt's response
//! headers first extends Envoy's message timeout, then, once the hold ends
//! ([`Exchange::resume`]), says whether Envoy retries.

use std::{sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{
        processing_request::Request, HttpBody, ProcessingRequest, ProcessingResponse,
    },
};

use super::{attributes, attributes::Attributes, decide, reply, Context};
use crate::{
    decide::{AttemptState, Role},
    metrics::{Phase, StreamError},
};

/// Per-stream state, owned by the stream.
#[derive(Debug)]
pub struct Exchange {
    ctx: Arc<Context>,
    /// Which filter opened the stream.
    role: Role,
    /// Body modes announced in the stream's first message (`protocol_config`).
    request_body: BodySendMode,
    response_body: BodySendMode,
    /// Envoy ignores replies in observability mode, so none are sent.
    observability: bool,
    started: bool,
    /// A hold decided on, to run when the stream next asks for a reply.
    hold: Option<decide::HoldJob>,
    /// The hold budget the wiring gave this stream (`x-mulligan-max-hold`).
    max_hold: Option<Duration>,
}

impl Exchange {
    /// A stream opened by the filter that plays `role`.
    pub fn new(ctx: Arc<Context>, role: Role) -> Self {
        Self {
            ctx,
            role,
            request_body: BodySendMode::None,
            response_body: BodySendMode::None,
            observability: false,
            started: false,
            hold: None,
            max_hold: None,
        }
    }

    /// A stream whose wiring gave it the hold budget `max_hold`.
    pub(crate) fn with_max_hold(mut self, max_hold: Option<Duration>) -> Self {
        self.max_hold = max_hold;
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
        // What earlier attempts of the request did: Envoy forwards it with
        // every message of mulligan.attempt's streams.
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
            Request::RequestHeaders(_) => {
                metrics.phase(Phase::RequestHeaders);
                match self.role {
                    Role::Retry => decide::on_retry(&self.ctx.decider, state),
                    // The attempt and final filters skip the request
                    // headers; a peer that sends them anyway gets them back.
                    Role::Attempt | Role::Final => reply::continue_request_headers(),
                }
            }
            Request::RequestBody(chunk) => {
                metrics.phase(Phase::RequestBody);
                body_reply(true, self.request_body, chunk)
            }
            Request::RequestTrailers(_) => {
                metrics.phase(Phase::RequestTrailers);
                reply::continue_trailers(true)
            }
            Request::ResponseHeaders(headers) => {
                metrics.phase(Phase::ResponseHeaders);
                let known = decide::Known {
                    state,
                    max_hold: self.max_hold,
                };
                let decider = &self.ctx.decider;
                let r = decide::on_response_headers(decider, self.role, &headers, attrs, known);
                // Envoy ignores every reply in observability mode: a hold
                // would keep a place in `max_held` for an answer no one
                // reads.
                self.hold = r.hold.filter(|_| !self.observability);
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

    /// Runs a hold decided on in the response headers phase, and returns
    /// the reply that ends it. `None` when no hold is pending.
    pub async fn resume(&mut self) -> Option<ProcessingResponse> {
        let job = self.hold.take()?;
        Some(decide::run_hold(&self.ctx.decider, job).await)
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
