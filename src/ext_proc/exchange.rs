//! One HTTP request/response exchange, as seen over its ext_proc stream.
//!
//! Envoy sends the phases it is configured to send (request headers, body
//! chunks, trailers, then the same for the response) and, unless it runs in
//! observability mode, waits for exactly one reply per message (in
//! FULL_DUPLEX_STREAMED mode, for the body chunks it handed over). Every
//! message is answered at once, in order, so Envoy never reaches its message
//! timeout; whatever Envoy sends, in whatever order, gets a well-formed reply
//! and the request passes through as Envoy would have served it.

use std::sync::Arc;

use envoy_types::pb::envoy::{
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{processing_request::Request, ProcessingRequest, ProcessingResponse},
};

use super::{attributes::Attributes, header_value, reply, Context};
use crate::metrics::{Phase, StreamError};

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
}

impl Exchange {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            request_body: BodySendMode::None,
            response_body: BodySendMode::None,
            observability: false,
            started: false,
        }
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Handles one message from Envoy; returns the reply to send, if any.
    pub async fn on_message(&mut self, message: ProcessingRequest) -> Option<ProcessingResponse> {
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

        let reply = match message.request {
            Some(Request::RequestHeaders(_)) => {
                self.ctx.metrics.phase(Phase::RequestHeaders);
                reply::continue_request_headers()
            }
            Some(Request::RequestBody(chunk)) => {
                self.ctx.metrics.phase(Phase::RequestBody);
                body_reply(true, self.request_body, chunk)
            }
            Some(Request::RequestTrailers(_)) => {
                self.ctx.metrics.phase(Phase::RequestTrailers);
                reply::continue_trailers(true)
            }
            Some(Request::ResponseHeaders(ref headers)) => {
                self.ctx.metrics.phase(Phase::ResponseHeaders);
                if tracing::enabled!(tracing::Level::TRACE) {
                    let attrs = Attributes::of(&message);
                    let status = attrs.uint("response.code").or_else(|| {
                        header_value(headers.headers.as_ref(), ":status")
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    });
                    tracing::trace!(
                        status,
                        cluster = attrs.str("xds.cluster_name"),
                        upstream = attrs.str("upstream.address"),
                        "response headers"
                    );
                }
                reply::continue_response_headers()
            }
            Some(Request::ResponseBody(chunk)) => {
                self.ctx.metrics.phase(Phase::ResponseBody);
                body_reply(false, self.response_body, chunk)
            }
            Some(Request::ResponseTrailers(_)) => {
                self.ctx.metrics.phase(Phase::ResponseTrailers);
                reply::continue_trailers(false)
            }
            None => {
                // A flow-control update alone needs no reply; anything else
                // without a phase is malformed, and ignoring it loses nothing.
                if message.client_window_update.is_none() {
                    self.ctx.metrics.error(StreamError::EmptyMessage);
                    tracing::debug!("ext_proc message without a phase; ignored");
                }
                return None;
            }
        };
        (!self.observability).then_some(reply)
    }
}

fn body_reply(
    request_path: bool,
    mode: BodySendMode,
    chunk: envoy_types::pb::envoy::service::ext_proc::v3::HttpBody,
) -> ProcessingResponse {
    match mode {
        BodySendMode::FullDuplexStreamed | BodySendMode::Grpc => {
            reply::echo_body(request_path, chunk)
        }
        _ => reply::continue_body(request_path),
    }
}
