//! A hand-made ext_proc client: one gRPC stream driven message by message,
//! for the protocol cases Envoy will not produce on demand (messages out of
//! order, oversized or empty, made-up attributes, stalls, resets, floods,
//! a missing or unknown role).

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

/// The gRPC metadata key by which each filter of the decide wiring names
/// its role.
pub const PHASE: &str = "x-mulligan-phase";

/// The roles the decide wiring's filters name: `retry` (a retry about to
/// leave, then its answer), `attempt` (a failed first attempt), `final`
/// (the failed response on its way to the client).
pub const ROLES: [&str; 3] = ["retry", "attempt", "final"];

/// A stream, on a new connection, that names its role in `x-mulligan-phase`
/// as the decide wiring's filters do.
pub async fn open_as(grpc: SocketAddr, role: &str) -> Conversation {
    open_as_on(&mut connect(grpc).await, role)
        .await
        .unwrap_or_else(|s| panic!("opening a {role} stream: {s}"))
}

/// A stream on an existing connection naming its role (`None`: no
/// `x-mulligan-phase` at all); the error is mulligan's refusal.
pub async fn open_as_on(
    client: &mut Client,
    role: impl Into<Option<&str>>,
) -> Result<Conversation, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(role) = role.into() {
        let value = role.parse().map_err(|_| tonic::Status::internal("role"))?;
        request.metadata_mut().insert(PHASE, value);
    }
    let rx = client.process(request).await?.into_inner();
    Ok(Conversation { tx, rx })
}

/// `m` with ext_proc attributes, as Envoy attaches them to a message.
pub fn with_attributes(
    mut m: ProcessingRequest,
    attrs: &[(&str, envoy_types::pb::google::protobuf::value::Kind)],
) -> ProcessingRequest {
    use envoy_types::pb::google::protobuf::{Struct, Value};
    let mut s = Struct::default();
    for (k, v) in attrs {
        s.fields.insert(
            (*k).to_string(),
            Value {
                kind: Some(v.clone()),
            },
        );
    }
    m.attributes.insert("envoy.filters.http.ext_proc".into(), s);
    m
}

impl Conversation {
    pub async fn send(&self, request: ProcessingRequest) {
        self.tx.send(request).await.expect("send");
    }

    /// Ends our side of the stream (END_STREAM), keeping theirs open.
    pub fn half_close(&mut self) {
        self.tx = mpsc::channel(1).0;
    }

    /// The next reply; a bound a loaded machine meets with room to spare.
    pub async fn reply(&mut self) -> ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("no reply within 20 s")
            .unwrap_or_else(|s| panic!("a reply, not the gRPC status {s}"))
            .expect("a reply, but the stream ended")
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
        .unwrap_or_else(|_| panic!("the stream did not end within {limit:?}"))
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
