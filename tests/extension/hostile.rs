//! A hand-made gRPC client that sends the extension server what Envoy
//! Gateway never would: bytes that are not a request, a request past the
//! size limit, a frame cut short. Each gets a clear gRPC status; the server
//! stays up and answers the next good request.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use super::{server::ExtensionServer, xds};
use mulligan::extension::api::raw;

const PATH: &str = "/envoygateway.extension.EnvoyGatewayExtension/PostTranslateModify";
const LIMIT: usize = 64 * 1024;

/// A gRPC length-prefixed frame claiming `declared` bytes, carrying `payload`.
fn frame(declared: usize, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(declared as u32);
    b.put_slice(payload);
    b.freeze()
}

/// One raw call over a fresh HTTP/2 connection: (grpc-status, grpc-message).
async fn call(server: &ExtensionServer, body: Bytes) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(server.grpc)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}{PATH}", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200, "gRPC errors travel as grpc-status");
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| headers.get(k))
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    let status = get("grpc-status")
        .expect("grpc-status")
        .parse()
        .expect("number");
    (status, get("grpc-message").unwrap_or_default())
}

fn good_request() -> Vec<u8> {
    let t = xds::translations().into_iter().next().expect("a fixture");
    let raw: raw::PostTranslateModifyRequest = super::convert(&t.request);
    raw.encode_to_vec()
}

#[tokio::test]
async fn malformed_oversized_and_truncated_requests_get_clear_statuses_and_the_server_stays_up() {
    let limit = LIMIT.to_string();
    let mut server =
        ExtensionServer::start("127.0.0.1:50051", &["--max-message-bytes", &limit]).await;
    let good = good_request();
    assert!(good.len() < LIMIT, "the good request fits");
    assert_eq!(
        call(&server, frame(good.len(), &good)).await.0,
        0,
        "a good request is answered"
    );

    // Not a PostTranslateModifyRequest: field 2 (clusters) with a wire type
    // that cannot be a message, then garbage.
    let malformed = [0x13u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    let (code, message) = call(&server, frame(malformed.len(), &malformed)).await;
    assert_eq!(code, tonic::Code::Internal as i32, "malformed: {message}");
    assert!(
        message.to_lowercase().contains("decode"),
        "malformed: {message}"
    );

    // A cluster whose bytes are not a Cluster: the envelope decodes (the
    // server keeps resources as bytes), so this one is no error at all: it
    // passes through untouched, and is not wired even with a policy.
    let mut req = raw::PostTranslateModifyRequest::decode(good.as_slice()).expect("good");
    req.clusters.push(vec![0xff, 0xff, 0xff]);
    let bytes = req.encode_to_vec();
    assert_eq!(
        call(&server, frame(bytes.len(), &bytes)).await.0,
        0,
        "an undecodable resource passes through"
    );

    // Past --max-message-bytes.
    let big = vec![0u8; LIMIT + 1];
    let (code, message) = call(&server, frame(big.len(), &big)).await;
    // tonic's status for a message over its decoding limit.
    assert_eq!(code, tonic::Code::OutOfRange as i32, "oversized: {message}");
    assert!(
        message.contains(&LIMIT.to_string()),
        "the limit is named: {message}"
    );

    // A frame that promises more than it carries before the stream ends.
    let (code, message) = call(&server, frame(good.len(), &good[..good.len() / 2])).await;
    assert_eq!(code, tonic::Code::Internal as i32, "truncated: {message}");
    assert!(!message.is_empty(), "truncated: a message says why");
    // A frame header cut short.
    let (code, message) = call(&server, Bytes::from_static(&[0, 0, 0])).await;
    assert_eq!(code, tonic::Code::Internal as i32, "cut header: {message}");

    assert!(server.running(), "the server is still up");
    assert_eq!(
        call(&server, frame(good.len(), &good)).await.0,
        0,
        "and answers the next good request"
    );
}
