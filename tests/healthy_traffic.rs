//! Healthy traffic passes untouched: through real Envoy on the reference
//! wiring, every request that does not fail arrives at the pod and returns
//! to the client exactly as on the baseline listener (the same route
//! without mulligan), whatever its size, framing or HTTP version, and opens
//! no ext_proc stream at all: mulligan is asked only about failures.
//! (gRPC and WebSocket: `tests/protocols.rs`.)

use http::Method;
use rig::{
    client::{self, HttpClient, Proto, Reply},
    payload,
    pods::{Pod, PodState, Seen},
    Stack,
};

const MIB: usize = 1024 * 1024;

/// One request every listener must carry intact.
struct Case {
    label: &'static str,
    method: Method,
    path: String,
    body: Vec<u8>,
    chunked: bool,
}

fn case(label: &'static str, method: Method, path: &str, body: Vec<u8>, chunked: bool) -> Case {
    Case {
        label,
        method,
        path: path.to_string(),
        body,
        chunked,
    }
}

/// Bodies of 0, 1 B, 64 KiB and 5 MiB, with a content-length and chunked,
/// and responses of the same sizes, streamed and whole.
fn cases() -> Vec<Case> {
    vec![
        case("GET /", Method::GET, "/", vec![], false),
        case("POST 0 B", Method::POST, "/echo", vec![], false),
        case("POST 1 B", Method::POST, "/echo", payload(1), false),
        case(
            "POST 64 KiB",
            Method::POST,
            "/echo",
            payload(64 * 1024),
            false,
        ),
        case("chunked POST 1 B", Method::POST, "/echo", payload(1), true),
        case(
            "chunked POST 64 KiB",
            Method::POST,
            "/echo",
            payload(64 * 1024),
            true,
        ),
        case("POST 5 MiB", Method::POST, "/echo", payload(5 * MIB), false),
        case(
            "chunked POST 5 MiB",
            Method::POST,
            "/echo",
            payload(5 * MIB),
            true,
        ),
        case(
            "streamed GET 64x4 KiB",
            Method::GET,
            "/stream/64/4096",
            vec![],
            false,
        ),
        case("GET 0 B", Method::GET, "/bytes/0", vec![], false),
        case(
            "GET 5 MiB",
            Method::GET,
            &format!("/bytes/{}", 5 * MIB),
            vec![],
            false,
        ),
    ]
}

/// What the pod sends for `c`.
fn expected(c: &Case) -> Vec<u8> {
    match c.path.as_str() {
        "/" => b"hello from a\n".to_vec(),
        "/echo" => c.body.clone(),
        "/stream/64/4096" => payload(64 * 4096),
        p => payload(p.trim_start_matches("/bytes/").parse().expect("bytes path")),
    }
}

async fn send(http: &HttpClient, to: std::net::SocketAddr, c: &Case) -> Reply {
    let body = if c.chunked {
        client::chunked(c.body.clone(), 16 * 1024)
    } else {
        client::full(c.body.clone())
    };
    http.send(c.method.clone(), to, &c.path, &[("x-test", "1")], body)
        .await
        .unwrap_or_else(|e| panic!("{} to {to}: {e}", c.label))
}

/// A request as the pod saw it, without what differs by design between the
/// two listeners (the port in `host`) or requests (Envoy's request id).
fn comparable(s: &Seen) -> Seen {
    let mut s = s.clone();
    s.headers
        .retain(|(k, _)| k != "x-request-id" && k != "host");
    s
}

/// The same requests through both listeners, over HTTP/1.1 and HTTP/2:
/// the same status, headers and bytes at the client, the same request at
/// the pod, and not one ext_proc stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_requests_are_byte_identical_to_the_baseline_and_open_no_stream() {
    let stack = Stack::start(&[("a", PodState::Ready)], &[], &[]).await;
    let pod = stack.pod("a");
    let mut sent = 0;
    for proto in [Proto::Http1, Proto::Http2] {
        let http = HttpClient::new(proto);
        for c in cases() {
            let before = pod.seen().len();
            let via = send(&http, stack.front, &c).await;
            let direct = send(&http, stack.baseline, &c).await;
            sent += 2;
            let what = format!("{proto:?} {}", c.label);
            assert_eq!(via.status, 200, "{what} via mulligan");
            assert_eq!(via.status, direct.status, "{what}");
            assert_eq!(via.body.len(), direct.body.len(), "{what}: length");
            assert!(via.body == direct.body, "{what}: bodies differ");
            assert!(via.body == expected(&c), "{what}: not what the pod sent");
            let headers = |r: &Reply| {
                let mut h: Vec<(String, Vec<u8>)> = r
                    .headers
                    .iter()
                    .filter(|(k, _)| *k != "date" && *k != "x-envoy-upstream-service-time")
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect();
                h.sort();
                h
            };
            assert_eq!(headers(&via), headers(&direct), "{what}: response headers");
            // Chunked or not, the pod got the same request from both.
            let seen = pod.seen();
            assert_eq!(seen.len(), before + 2, "{what}: each listener sent it once");
            assert_eq!(
                comparable(&seen[before]),
                comparable(&seen[before + 1]),
                "{what}: the pod saw a different request through mulligan's listener"
            );
        }
    }
    assert_eq!(pod.served(), sent);
    assert_eq!(
        stack.mulligan.streams().await,
        0.0,
        "a healthy request opened an ext_proc stream"
    );
    assert_eq!(stack.ext_proc_stat("streams_started").await, 0);
    assert_eq!(stack.ext_proc_stat("failure_mode_allowed").await, 0);
}

/// Under Envoy Gateway's buffer limit (32 KiB per connection), POSTs of
/// 33-63 KiB with a content-length get exactly what they get without
/// mulligan: whatever Envoy does with a body it cannot buffer for a retry,
/// it does the same on both listeners.
#[tokio::test]
async fn bodies_over_the_buffer_limit_behave_as_without_mulligan() {
    let pods = vec![
        Pod::start("a", PodState::Ready).await,
        Pod::start("b", PodState::Ready).await,
    ];
    let stack = Stack::around(pods, &[], &[], |v| {
        for l in v["static_resources"]["listeners"]
            .as_sequence_mut()
            .expect("listeners")
        {
            if l.get("address").is_some() {
                l["per_connection_buffer_limit_bytes"] = serde_yaml_ng::Value::from(32768);
            }
        }
    })
    .await;
    let http = HttpClient::new(Proto::Http1);
    for kib in 33..64 {
        let c = case("POST", Method::POST, "/echo", payload(kib * 1024), false);
        let with = send(&http, stack.front, &c).await;
        let without = send(&http, stack.baseline, &c).await;
        assert_eq!(with.status, without.status, "{kib} KiB");
        assert_eq!(with.status, 200, "{kib} KiB");
        assert_eq!(with.body, without.body, "{kib} KiB");
    }
    assert_eq!(stack.mulligan.streams().await, 0.0);
}

/// No per-try timeout: a 7 s request is served, not cut and retried.
#[tokio::test]
async fn a_slow_request_is_not_cut() {
    let stack = Stack::start(&[("a", PodState::Ready), ("b", PodState::Ready)], &[], &[]).await;
    let r = client::get(stack.front, "/delay/7000")
        .await
        .expect("slow GET");
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with(b"hello from "));
    assert_eq!(stack.served(), 1, "served once, never retried");
    assert_eq!(stack.mulligan.streams().await, 0.0);
}
