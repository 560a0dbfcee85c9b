//! The ext_proc gRPC service: one of mulligan's filters in Envoy opens a
//! bidirectional stream per question (a failed attempt, a retry about to
//! leave, a failed response), names itself in the stream's
//! `x-mulligan-phase` metadata, and sends a message per phase it was
//! configured to send.
//!
//! hyper already runs each HTTP/2 stream on its own task, so the per-stream
//! state ([`Exchange`]) lives inside the response stream that task polls: no
//! extra task or channel per stream, and when Envoy hangs up the stream and
//! everything it holds (a hold included) is dropped at once.

mod attributes;
mod budget;
mod decide;
mod exchange;
mod headers;
mod reply;

use std::{pin::Pin, sync::Arc, time::Duration};

use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    ProcessingRequest, ProcessingResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

pub use crate::decide::Role;
#[cfg(feature = "fuzzing")]
pub(crate) use attributes::Attributes;
pub use exchange::Exchange;
pub(crate) use headers::header_value;

use crate::{
    decide::Decider,
    drain::{Drain, StreamGuard},
    endpoints::Registry,
    metrics::{Metrics, StreamError},
};

/// The gRPC service name Envoy calls, also used for gRPC health.
pub(crate) const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// What every stream shares.
#[derive(Debug)]
pub struct Context {
    pub metrics: Metrics,
    pub drain: Arc<Drain>,
    pub registry: Arc<Registry>,
    /// Verdicts on failed attempts, the gate and the holds.
    pub decider: Decider,
    /// `limits.max_streams`.
    pub max_streams: usize,
}

impl Context {
    /// What every stream shares, from the config: the one place it is put
    /// together (the server, the benches and the fuzz targets all use it).
    pub fn new(
        cfg: &crate::config::Config,
        registry: Arc<Registry>,
        metrics: Metrics,
        drain: Arc<Drain>,
    ) -> Self {
        Self {
            decider: Decider::new(cfg, Arc::clone(&registry), metrics.clone()),
            max_streams: cfg.limits.max_streams,
            metrics,
            drain,
            registry,
        }
    }
}

/// The `ExternalProcessor` implementation.
#[derive(Clone, Debug)]
pub(crate) struct ExtProc {
    ctx: Arc<Context>,
    /// `limits.stream_idle_timeout`; `None` when off.
    idle_timeout: Option<Duration>,
}

impl ExtProc {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            idle_timeout: None,
        }
    }

    /// Ends a stream on which nothing arrives for `timeout` (zero: never).
    pub(crate) fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// The tonic service; `max_message_bytes` bounds each message both ways
    /// (a body chunk is echoed back in full-duplex mode).
    pub(crate) fn into_server(self, max_message_bytes: usize) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes.saturating_add(4096))
    }
}

/// The role a stream's metadata names, or the status that refuses the
/// stream at once (counted): mulligan never guesses which filter is asking,
/// and Envoy's failure_mode_allow carries the request on untouched.
pub(crate) fn role_of(
    metadata: &tonic::metadata::MetadataMap,
    metrics: &Metrics,
) -> Result<Role, Status> {
    let role = metadata
        .get(crate::names::phase::HEADER)
        .and_then(|v| Role::parse(v.as_bytes()));
    role.ok_or_else(|| {
        metrics.error(StreamError::UnknownRole);
        Status::invalid_argument(format!(
            "gRPC metadata {} must be one of {}: it names the filter that opened the stream",
            crate::names::phase::HEADER,
            crate::names::phase::ALL.join(", ")
        ))
    })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let role = role_of(request.metadata(), &self.ctx.metrics)?;
        let Some(guard) = self.ctx.drain.admit() else {
            // Envoy's failure_mode_allow lets this request through untouched.
            self.ctx.metrics.error(StreamError::Draining);
            return Err(Status::unavailable("mulligan is draining"));
        };
        if self.ctx.drain.in_flight() > self.ctx.max_streams {
            // The guard goes with this return: the place is released.
            self.ctx.metrics.error(StreamError::StreamLimit);
            return Err(Status::resource_exhausted(
                "mulligan is at its stream limit",
            ));
        }
        let max_hold = request
            .metadata()
            .get(crate::names::max_hold::HEADER)
            .and_then(|v| budget::parse(v.as_bytes()));
        let stream = StreamState {
            inbound: request.into_inner(),
            exchange: Exchange::new(Arc::clone(&self.ctx), role).with_max_hold(max_hold),
            _scope: StreamScope::new(Arc::clone(&self.ctx), guard),
            idle_timeout: self.idle_timeout,
            done: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            stream,
            StreamState::next,
        ))))
    }
}

/// One ext_proc stream: Envoy's messages in, our replies out.
struct StreamState {
    inbound: Streaming<ProcessingRequest>,
    exchange: Exchange,
    _scope: StreamScope,
    idle_timeout: Option<Duration>,
    done: bool,
}

impl StreamState {
    /// Reads Envoy's messages until one needs a reply, and returns it.
    async fn next(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        if self.done {
            return None;
        }
        if let Some(reply) = self.exchange.resume().await {
            return Some((Ok(reply), self));
        }
        loop {
            let next = match self.idle_timeout {
                None => self.inbound.message().await,
                Some(idle) => match tokio::time::timeout(idle, self.inbound.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        // A stalled peer: end the stream so its place and
                        // memory come back; Envoy's failure_mode_allow
                        // carries the request on without us.
                        self.exchange.ctx().metrics.error(StreamError::Idle);
                        self.done = true;
                        let status = Status::deadline_exceeded(format!(
                            "no ext_proc message for {idle:?} (limits.stream_idle_timeout); stream closed"
                        ));
                        return Some((Err(status), self));
                    }
                },
            };
            match next {
                Ok(Some(message)) => {
                    if let Some(reply) = self.exchange.on_message(message).await {
                        return Some((Ok(reply), self));
                    }
                }
                // Envoy closed its side: the HTTP request is over.
                Ok(None) => return None,
                Err(status) => {
                    // A decode error or a reset: nothing more will arrive.
                    self.exchange.ctx().metrics.error(StreamError::Transport);
                    tracing::debug!(%status, "ext_proc stream ended in error");
                    self.done = true;
                    return Some((Err(status), self));
                }
            }
        }
    }
}

/// Counts the stream and holds its place in the drain, for as long as the
/// stream lives, however it ends.
struct StreamScope {
    ctx: Arc<Context>,
    _guard: StreamGuard,
}

impl StreamScope {
    fn new(ctx: Arc<Context>, guard: StreamGuard) -> Self {
        ctx.metrics.stream_started();
        Self { ctx, _guard: guard }
    }
}

impl Drop for StreamScope {
    fn drop(&mut self) {
        self.ctx.metrics.stream_ended();
    }
}
