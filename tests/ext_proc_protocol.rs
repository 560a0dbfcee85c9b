//! The ext_proc protocol, driven by a hand-made client (no Envoy) for the
//! cases Envoy will not produce on demand: observability mode, empty and
//! oversized messages, hang-ups. Each behaviour Envoy can produce is proven
//! through real Envoy in `passthrough.rs` and `shutdown.rs`.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::{
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{
        body_mutation::Mutation, external_processor_client::ExternalProcessorClient,
        processing_request::Request, processing_response::Response, HttpHeaders, HttpTrailers,
        ProcessingRequest, ProtocolConfiguration,
    },
};
use rig::{
    ext_proc::{body, msg, open, request_headers, Conversation},
    mulligan::Mulligan,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn full_duplex_bodies_are_echoed_in_order() {
    let m = Mulligan::start(&[]).await;
    let mut c = open(m.grpc).await;
    let mut first = msg(Request::RequestHeaders(HttpHeaders::default()));
    first.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::FullDuplexStreamed as i32,
        response_body_mode: BodySendMode::FullDuplexStreamed as i32,
        send_body_without_waiting_for_header_response: true,
    });
    // Full duplex: Envoy sends without waiting for replies.
    c.send(first).await;
    c.send(msg(Request::RequestBody(body(b"first", false))))
        .await;
    c.send(msg(Request::RequestBody(body(b"second", false))))
        .await;
    c.send(msg(Request::RequestTrailers(HttpTrailers::default())))
        .await;
    c.send(msg(Request::ResponseHeaders(HttpHeaders::default())))
        .await;
    c.send(msg(Request::ResponseBody(body(b"reply", true))))
        .await;

    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    for expected in [&b"first"[..], b"second"] {
        let Some(Response::RequestBody(b)) = c.reply().await.response else {
            panic!("expected a request body reply");
        };
        let Some(Mutation::StreamedResponse(s)) = b
            .response
            .and_then(|r| r.body_mutation)
            .and_then(|m| m.mutation)
        else {
            panic!("full duplex needs a streamed body mutation");
        };
        assert_eq!(s.body, expected);
        assert!(!s.end_of_stream);
    }
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestTrailers(_))
    ));
    assert!(matches!(
        c.reply().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    let Some(Response::ResponseBody(b)) = c.reply().await.response else {
        panic!("expected a response body reply");
    };
    let Some(Mutation::StreamedResponse(s)) = b
        .response
        .and_then(|r| r.body_mutation)
        .and_then(|m| m.mutation)
    else {
        panic!("streamed mutation");
    };
    assert_eq!(s.body, b"reply");
    assert!(s.end_of_stream);
}

#[tokio::test]
async fn streamed_mode_continues_without_mutating() {
    let m = Mulligan::start(&[]).await;
    let mut c = open(m.grpc).await;
    c.send(msg(Request::RequestHeaders(HttpHeaders::default())))
        .await;
    c.send(msg(Request::RequestBody(body(b"abc", true)))).await;
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    let Some(Response::RequestBody(b)) = c.reply().await.response else {
        panic!("expected a body reply");
    };
    assert!(
        b.response.and_then(|r| r.body_mutation).is_none(),
        "body must not be touched"
    );
}

#[tokio::test]
async fn observability_mode_and_empty_messages_get_no_reply() {
    let m = Mulligan::start(&[]).await;
    let mut c = open(m.grpc).await;
    let mut observed = msg(Request::RequestHeaders(HttpHeaders::default()));
    observed.observability_mode = true;
    c.send(observed).await;
    c.send(ProcessingRequest::default()).await; // no phase at all
    c.send(msg(Request::ResponseHeaders(HttpHeaders::default())))
        .await;
    // The first reply is for the response headers: nothing was sent for the
    // two messages before it.
    assert!(matches!(
        c.reply().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    let empty = m
        .metric(r#"mulligan_ext_proc_errors_total{kind="empty_message"}"#)
        .await;
    assert_eq!(empty, 1.0);
}

#[tokio::test]
async fn oversized_message_fails_only_its_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_message_bytes = 1024\n[rescue]\nmax_response_body_bytes = 1024\n",
    )
    .expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let mut big = open(m.grpc).await;
    let mut small = open(m.grpc).await;
    big.send(msg(Request::RequestBody(body(&[7u8; 4096], true))))
        .await;
    let err = tokio::time::timeout(Duration::from_secs(5), big.rx.message())
        .await
        .expect("an answer")
        .expect_err("oversized message must fail the stream");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    // The other stream is unaffected.
    small
        .send(msg(Request::RequestHeaders(HttpHeaders::default())))
        .await;
    assert!(matches!(
        small.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    let transport = m
        .metric(r#"mulligan_ext_proc_errors_total{kind="transport"}"#)
        .await;
    assert_eq!(transport, 1.0);
}

#[tokio::test]
async fn hang_up_mid_stream_releases_the_stream() {
    let m = Mulligan::start(&[]).await;
    let mut c = open(m.grpc).await;
    c.send(msg(Request::RequestHeaders(HttpHeaders::default())))
        .await;
    c.reply().await;
    assert_eq!(m.metric("mulligan_ext_proc_streams_in_flight").await, 1.0);
    drop(c); // the client vanishes mid-request
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.metric("mulligan_ext_proc_streams_in_flight").await != 0.0 {
        assert!(Instant::now() < deadline, "stream never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_places_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[limits]\nmax_streams = 2\n").expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let mut first = open(m.grpc).await;
    let mut second = open(m.grpc).await;
    for c in [&mut first, &mut second] {
        c.send(msg(Request::RequestHeaders(HttpHeaders::default())))
            .await;
        c.reply().await;
    }
    let mut client = ExternalProcessorClient::connect(format!("http://{}", m.grpc))
        .await
        .expect("connect");
    let (_tx, rx) = mpsc::channel(1);
    let refused = client
        .process(ReceiverStream::new(rx))
        .await
        .expect_err("a third stream is over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
            .await,
        1.0
    );
    // One stream ends: a new one is admitted.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (tx, rx) = mpsc::channel(1);
        match client.process(ReceiverStream::new(rx)).await {
            Ok(r) => {
                let mut c = Conversation {
                    tx,
                    rx: r.into_inner(),
                };
                c.send(msg(Request::RequestHeaders(HttpHeaders::default())))
                    .await;
                assert!(matches!(
                    c.reply().await.response,
                    Some(Response::RequestHeaders(_))
                ));
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A failed response as Envoy reports a refused connection.
fn refused_response() -> ProcessingRequest {
    response_with_code(503.0)
}

/// A refused connection's response headers, with `response.code` = `code`.
fn response_with_code(code: f64) -> ProcessingRequest {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let mut attrs = Struct::default();
    attrs.fields.insert(
        "response.code".into(),
        Value {
            kind: Some(Kind::NumberValue(code)),
        },
    );
    attrs.fields.insert(
        "response.flags".into(),
        Value {
            kind: Some(Kind::NumberValue(32.0)),
        },
    );
    let mut m = msg(Request::ResponseHeaders(HttpHeaders::default()));
    m.attributes
        .insert("envoy.filters.http.ext_proc".into(), attrs);
    m
}

fn post_headers() -> ProcessingRequest {
    request_headers(&[(":method", "PUT"), (":path", "/x")], false)
}

#[tokio::test]
async fn bodies_past_the_total_buffer_limit_are_not_captured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[limits]\nmax_buffered_bytes = 1000\n").expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let decision = |d: &'static str| {
        let m = &m;
        async move {
            m.metric(&format!(
                r#"mulligan_decisions_total{{cause="connect_failure",decision="{d}"}}"#
            ))
            .await
        }
    };
    // The first request holds 800 bytes (its stream stays open).
    let mut first = open(m.grpc).await;
    first.send(post_headers()).await;
    first.reply().await;
    first
        .send(msg(Request::RequestBody(body(&[1u8; 800], true))))
        .await;
    first.reply().await;
    // The second's 800 bytes do not fit beside them.
    let mut second = open(m.grpc).await;
    second.send(post_headers()).await;
    second.reply().await;
    second
        .send(msg(Request::RequestBody(body(&[2u8; 800], true))))
        .await;
    second.reply().await;
    second.send(refused_response()).await;
    assert!(matches!(
        second.reply().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    assert_eq!(decision("body_not_captured").await, 1.0);
    drop(second);
    // The first one's body was kept: it is rescued (it extends Envoy's
    // message timeout first; no endpoint exists, so it ends as it came).
    first.send(refused_response()).await;
    let extend = first.reply().await;
    assert!(extend.override_message_timeout.is_some());
    assert_eq!(decision("rescue").await, 1.0);
    drop(first);
    // Both gone: their bytes are released, so a third body fits again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.metric("mulligan_ext_proc_streams_in_flight").await != 0.0 {
        assert!(Instant::now() < deadline, "streams never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = open(m.grpc).await;
    third.send(post_headers()).await;
    third.reply().await;
    third
        .send(msg(Request::RequestBody(body(&[3u8; 900], true))))
        .await;
    third.reply().await;
    third.send(refused_response()).await;
    assert!(
        third.reply().await.override_message_timeout.is_some(),
        "third body was not captured"
    );
}

#[tokio::test]
async fn a_status_past_u16_is_not_mistaken_for_a_503() {
    // 66039 is 503 modulo 65536: a status truncated to u16 would read as 503.
    let m = Mulligan::start(&["--endpoints", "127.0.0.1:1"]).await;
    let mut c = open(m.grpc).await;
    c.send(request_headers(&[(":method", "GET"), (":path", "/")], true))
        .await;
    c.reply().await;
    c.send(response_with_code(66039.0)).await;
    let r = c.reply().await;
    assert!(matches!(r.response, Some(Response::ResponseHeaders(_))));
    assert!(
        r.override_message_timeout.is_none(),
        "no rescue for a status that is not one"
    );
}

#[tokio::test]
async fn an_absurd_deadline_in_the_config_does_not_take_a_rescue_down() {
    // A config is input too: `Instant + 500 billion years` overflows and panics.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[rescue]\ndeadline = \"500000000000years\"\nbackoff_max = \"500000000000years\"\n\
         [hold]\nenvoy_max_message_timeout = \"500000000001years\"\n",
    )
    .expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let mut c = open(m.grpc).await;
    c.send(request_headers(&[(":method", "GET"), (":path", "/")], true))
        .await;
    c.reply().await;
    c.send(refused_response()).await;
    // The rescue runs (no endpoint is known, so it ends at once) and the
    // stream answers instead of dying.
    let extend = c.reply().await;
    assert!(extend.override_message_timeout.is_some());
    assert!(matches!(
        c.reply().await.response,
        Some(Response::ResponseHeaders(_))
    ));
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="unknown_cluster"}"#)
            .await,
        1.0
    );
}
