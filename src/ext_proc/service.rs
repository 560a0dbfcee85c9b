//! The ext_proc method on the wire: what envoy-types' generated
//! `ExternalProcessorServer` does (route `Process`, decode and encode with
//! prost), with a codec whose buffers fit ext_proc's messages.
//!
//! tonic gives every stream a buffer each way, allocated when the stream
//! opens and kept for its life, 8 KiB each by default. Envoy's messages
//! and mulligan's replies are a few hundred bytes, but a held request keeps
//! its stream open for the whole hold, and mulligan holds up to
//! `hold.max_held` (10,000) at once: with the default those two buffers
//! were most of what a held request cost. A body chunk larger than the
//! buffer grows it as it arrives.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::ExternalProcessor, ProcessingRequest, ProcessingResponse,
};
use tonic::{
    body::Body,
    codec::{BufferSettings, Codec},
    codegen::{Service, StdError},
    server::{Grpc, NamedService, StreamingService},
    Request, Response, Status, Streaming,
};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The one method Envoy calls.
const PROCESS: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
/// Each stream's buffer each way: one message of Envoy's (headers and
/// attributes) or one reply fits.
const BUFFER_BYTES: usize = 1024;
/// How much encoded reply a stream batches into one write before it
/// yields: tonic's default.
const YIELD_BYTES: usize = 32 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// prost's encoding with [`BUFFER_BYTES`] buffers.
#[derive(Clone, Copy, Debug, Default)]
struct SmallBuffers;

impl Codec for SmallBuffers {
    type Encode = ProcessingResponse;
    type Decode = ProcessingRequest;
    type Encoder = ProstEncoder<ProcessingResponse>;
    type Decoder = ProstDecoder<ProcessingRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
    }
}

/// The ext_proc service as the gRPC server routes it; `max_message_bytes`
/// bounds each message both ways (a body chunk is echoed back in
/// full-duplex mode).
#[derive(Debug)]
pub(crate) struct ExtProcServer<T> {
    inner: Arc<T>,
    max_decoding: usize,
    max_encoding: usize,
}

impl<T> ExtProcServer<T> {
    pub(crate) fn new(inner: T, max_message_bytes: usize) -> Self {
        Self {
            inner: Arc::new(inner),
            max_decoding: max_message_bytes,
            max_encoding: max_message_bytes.saturating_add(4096),
        }
    }
}

impl<T> Clone for ExtProcServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            max_decoding: self.max_decoding,
            max_encoding: self.max_encoding,
        }
    }
}

impl<T> NamedService for ExtProcServer<T> {
    const NAME: &'static str = super::SERVICE_NAME;
}

impl<T, B> Service<http::Request<B>> for ExtProcServer<T>
where
    T: ExternalProcessor,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != PROCESS {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = Process(Arc::clone(&self.inner));
        let mut grpc = Grpc::new(SmallBuffers)
            .apply_max_message_size_config(Some(self.max_decoding), Some(self.max_encoding));
        Box::pin(async move { Ok(grpc.streaming(method, req).await) })
    }
}

/// gRPC's answer to a method this service does not have.
fn unimplemented() -> http::Response<Body> {
    Status::unimplemented("").into_http()
}

/// `Process`, handed to tonic's streaming call.
struct Process<T>(Arc<T>);

impl<T: ExternalProcessor> StreamingService<ProcessingRequest> for Process<T> {
    type Response = ProcessingResponse;
    type ResponseStream = T::ProcessStream;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<ProcessingRequest>>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.process(request).await })
    }
}
