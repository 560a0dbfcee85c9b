//! mulligan in passthrough: through real Envoy, every request arrives and
//! returns byte-identical with and without mulligan in the path, in every
//! body mode, over HTTP/1.1 and HTTP/2.

use http::Method;
use rig::{
    client::{self, HttpClient, Proto},
    payload,
    pods::PodState,
    Stack,
};

const MIB: usize = 1024 * 1024;

/// The requests every mode must carry intact: (label, method, path, body, chunked).
fn cases(max_body: usize) -> Vec<(&'static str, Method, String, Vec<u8>, bool)> {
    let mut v = vec![
        ("GET /", Method::GET, "/".to_string(), vec![], false),
        ("POST 1 B", Method::POST, "/echo".into(), payload(1), false),
        (
            "POST 64 KiB",
            Method::POST,
            "/echo".into(),
            payload(64 * 1024),
            false,
        ),
        (
            "chunked POST 64 KiB",
            Method::POST,
            "/echo".into(),
            payload(64 * 1024),
            true,
        ),
        (
            "streamed GET 64x4 KiB",
            Method::GET,
            "/stream/64/4096".into(),
            vec![],
            false,
        ),
    ];
    if max_body >= 5 * MIB {
        v.push((
            "POST 5 MiB",
            Method::POST,
            "/echo".into(),
            payload(5 * MIB),
            false,
        ));
        v.push((
            "chunked POST 5 MiB",
            Method::POST,
            "/echo".into(),
            payload(5 * MIB),
            true,
        ));
        v.push((
            "GET 5 MiB",
            Method::GET,
            format!("/bytes/{}", 5 * MIB),
            vec![],
            false,
        ));
    }
    v
}

fn expected(path: &str, sent: &[u8]) -> Vec<u8> {
    match path {
        "/" => b"hello from a\n".to_vec(),
        "/echo" => sent.to_vec(),
        "/stream/64/4096" => payload(64 * 4096),
        p => payload(p.trim_start_matches("/bytes/").parse().expect("bytes path")),
    }
}

/// Sends every case to both listeners; asserts identical, correct replies.
async fn assert_identical(stack: &Stack, max_body: usize) -> usize {
    let mut sent = 0;
    for proto in [Proto::Http1, Proto::Http2] {
        let http = HttpClient::new(proto);
        for (label, method, path, body, chunked) in cases(max_body) {
            let mk = |b: &Vec<u8>| {
                if chunked {
                    client::chunked(b.clone(), 16 * 1024)
                } else {
                    client::full(b.clone())
                }
            };
            let via = http
                .send(method.clone(), stack.front, &path, &[], mk(&body))
                .await
                .unwrap_or_else(|e| panic!("{proto:?} {label} via mulligan: {e}"));
            let direct = http
                .send(method.clone(), stack.baseline, &path, &[], mk(&body))
                .await
                .unwrap_or_else(|e| panic!("{proto:?} {label} baseline: {e}"));
            sent += 1;
            assert_eq!(via.status, 200, "{proto:?} {label} via mulligan");
            assert_eq!(via.status, direct.status, "{proto:?} {label}");
            assert_eq!(
                via.body.len(),
                direct.body.len(),
                "{proto:?} {label} length"
            );
            assert!(via.body == direct.body, "{proto:?} {label}: bodies differ");
            assert!(
                via.body == expected(&path, &body),
                "{proto:?} {label}: body is not what the pod sent"
            );
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_only_mode_is_byte_identical() {
    let stack = Stack::start(&[("a", PodState::Ready)], &[], &[]).await;
    let sent = assert_identical(&stack, 5 * MIB).await as f64;

    let m = stack.mulligan.metrics().await;
    let metric = |s: &str| rig::mulligan::parse_metric(&m, s);
    assert!(metric("mulligan_ext_proc_streams_total") >= sent, "{m}");
    assert!(metric(r#"mulligan_ext_proc_phases_total{phase="request_headers"}"#) >= sent);
    assert!(metric(r#"mulligan_ext_proc_phases_total{phase="response_headers"}"#) >= sent);
    // mulligan answered every message in time: Envoy never fell back.
    assert_eq!(
        stack.ext_proc_stat("failure_mode_allowed").await,
        0,
        "{}",
        stack.envoy.log()
    );
    assert_eq!(stack.ext_proc_stat("message_timeouts").await, 0);
    assert!(stack.ext_proc_stat("streams_started").await >= sent as u64);
}

/// Every body mode Envoy offers, each on its own Envoy against one mulligan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_mode_is_byte_identical() {
    // BUFFERED modes hold the whole body in Envoy, within its 1 MiB buffer
    // limit (a larger body gets Envoy's own 413 with or without mulligan), so
    // they are checked up to 64 KiB.
    let modes = [
        ("STREAMED", 5 * MIB),
        ("BUFFERED", 64 * 1024),
        ("BUFFERED_PARTIAL", 64 * 1024),
        ("FULL_DUPLEX_STREAMED", 5 * MIB),
    ];
    for (mode, max_body) in modes {
        // FULL_DUPLEX_STREAMED requires trailers to be sent too.
        let trailers = if mode == "FULL_DUPLEX_STREAMED" {
            "SEND"
        } else {
            "SKIP"
        };
        let stack = Stack::start(
            &[("a", PodState::Ready)],
            &[],
            &[
                ("REQUEST_BODY_MODE", mode.into()),
                ("RESPONSE_BODY_MODE", mode.into()),
                ("REQUEST_TRAILER_MODE", trailers.into()),
                ("RESPONSE_TRAILER_MODE", trailers.into()),
            ],
        )
        .await;
        assert_identical(&stack, max_body).await;
        let req_bodies = stack
            .mulligan
            .metric(r#"mulligan_ext_proc_phases_total{phase="request_body"}"#)
            .await;
        let resp_bodies = stack
            .mulligan
            .metric(r#"mulligan_ext_proc_phases_total{phase="response_body"}"#)
            .await;
        assert!(req_bodies > 0.0, "{mode}: mulligan saw no request body");
        assert!(resp_bodies > 0.0, "{mode}: mulligan saw no response body");
        assert_eq!(
            stack.ext_proc_stat("failure_mode_allowed").await,
            0,
            "{mode}: Envoy fell back to failure_mode_allow:\n{}\n{}",
            stack.envoy.stats("ext_proc").await,
            stack.envoy.log()
        );
        assert_eq!(stack.ext_proc_stat("message_timeouts").await, 0, "{mode}");
    }
}
