//! A hand-made ext_proc client: one gRPC stream driven message by message,
//! for the protocol cases Envoy will not produce on demand (observability
//! mode, oversized or empty messages, stalls, resets, floods).

use std::{net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::ext_proc::v3::{
        external_processor_client::ExternalProcessorClient, processing_request::Request, HttpBody,
        HttpHeaders, ProcessingRequest, ProcessingResponse,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Streaming};

pub type Client = ExternalProcessorClient<Channel>;

/// One ext_proc stream: what we send, and mulligan's replies.
pub struct Conversation {
    pub tx: mpsc::Sender<ProcessingRequest>,
    pub rx: Streaming<ProcessingResponse>,
}

/// A new gRPC connection to mulligan's ext_proc port.
pub async fn connect(grpc: SocketAddr) -> Client {
    ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect")
}

/// A stream on a new connection.
pub async fn open(grpc: SocketAddr) -> Conversation {
    open_on(&mut connect(grpc).await)
        .await
        .expect("open stream")
}

/// A stream on an existing connection; the error is mulligan's refusal.
pub async fn open_on(client: &mut Client) -> Result<Conversation, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let rx = client.process(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Conversation { tx, rx })
}

/// A stream that names its role in the gRPC metadata `x-mulligan-phase`,
/// as the decide wiring's filters do (`attempt`, `gate`, `final`).
pub async fn open_as(grpc: SocketAddr, role: &str) -> Conversation {
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-mulligan-phase", role.parse().expect("metadata value"));
    let rx = connect(grpc)
        .await
        .process(request)
        .await
        .expect("open stream")
        .into_inner();
    Conversation { tx, rx }
}

impl Conversation {
    pub async fn send(&self, request: ProcessingRequest) {
        self.tx.send(request).await.expect("send");
    }

    /// Ends our side of the stream (END_STREAM), keeping theirs open.
    pub fn half_close(&mut self) {
        self.tx = mpsc::channel(1).0;
    }

    pub async fn reply(&mut self) -> ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a reply within 5 s")
            .expect("no gRPC error")
            .expect("stream still open")
    }

    /// How the stream ends, within `limit`: `Ok(())` for a clean end (gRPC
    /// OK), the status otherwise. Replies still in flight are skipped.
    pub async fn end(&mut self, limit: Duration) -> Result<(), tonic::Status> {
        tokio::time::timeout(limit, async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .expect("the stream ends in time")
    }
}

pub fn msg(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

pub fn body(bytes: &[u8], end: bool) -> HttpBody {
    HttpBody {
        body: bytes.to_vec(),
        end_of_stream: end,
        ..Default::default()
    }
}

/// Request headers with `pairs` (in `raw_value`, as Envoy sends them).
pub fn request_headers(pairs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    msg(Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    }))
}
