//! gRPC (h2c, trailers, `grpc-status`) and WebSocket upgrades through the
//! reference wiring (`envoy-config/standalone/envoy.yaml`) while pods drain,
//! side by side with the baseline listener (the same route without
//! mulligan): every call either succeeds or ends exactly as it does without
//! mulligan, never with a rescued reply whose body or trailers are broken.
use std::{net::SocketAddr, sync::Arc};

use rig::{
    envoy::Envoy,
    mulligan::Mulligan,
    protocols::{self, GrpcReply, ProtoPod, ProtoState},
    render,
};

/// The app clusters speak h2c (gRPC's transport) instead of HTTP/1.1.
const H2C: (&str, &str) = ("APP_PROTOCOL", "http2_protocol_options");

/// Protocol pods, mulligan and Envoy on the reference bootstrap.
struct Rig {
    pods: Vec<Arc<ProtoPod>>,
    mulligan: Mulligan,
    _envoy: Envoy,
    front: SocketAddr,
    baseline: SocketAddr,
}

impl Rig {
    async fn start(pods: &[(&str, ProtoState)], overrides: &[(&'static str, &str)]) -> Rig {
        let mut started = Vec::new();
        for (name, state) in pods {
            started.push(ProtoPod::start(name, *state).await);
        }
        let addrs: Vec<SocketAddr> = started.iter().map(|p| p.addr).collect();
        let list = rig::endpoint_list(&addrs);
        let mulligan = Mulligan::start(&["--endpoints", &list]).await;
        let overrides: Vec<(&'static str, String)> =
            overrides.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let envoy = Envoy::start(&render::standalone(
            &addrs,
            mulligan.grpc.port(),
            &overrides,
        ))
        .await;
        let front = envoy.listener("mulligan").await;
        let baseline = envoy.listener("baseline").await;
        Rig {
            pods: started,
            mulligan,
            _envoy: envoy,
            front,
            baseline,
        }
    }
}

/// What a client can tell about a call, in a form two listeners' calls can
/// be compared in.
fn outcome(r: &GrpcReply) -> String {
    format!(
        "http {} grpc-status {:?} grpc-message {:?} pod {:?} messages {:?} trailers {:?} reset {}",
        r.status.as_u16(),
        r.grpc_status(),
        r.header("grpc-message"),
        r.header("x-pod"),
        r.messages,
        r.trailers,
        r.reset
    )
}

/// Sorted, so two listeners' runs (each round-robin over the same pods)
/// compare whatever pod each began with.
fn outcomes<'a>(replies: impl IntoIterator<Item = &'a GrpcReply>) -> Vec<String> {
    let mut all: Vec<String> = replies.into_iter().map(outcome).collect();
    all.sort();
    all
}

/// `n` unary calls to `addr`, one at a time, each with `message`.
async fn unary_calls(addr: SocketAddr, n: usize, message: &[u8]) -> Vec<GrpcReply> {
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(protocols::grpc_call(addr, "/test.Echo/Unary", message).await);
    }
    replies
}

/// A gRPC call as a gRPC client accepts it: HTTP 200, the messages, and
/// trailers with `grpc-status: 0`.
fn assert_whole(r: &GrpcReply, messages: &[Vec<u8>]) {
    let summary = || {
        format!(
            "http {} grpc-status {:?} grpc-message {:?} {} messages, trailers {:?}, reset {}",
            r.status,
            r.grpc_status(),
            r.header("grpc-message"),
            r.messages.len(),
            r.trailers,
            r.reset
        )
    };
    assert_eq!(r.status, 200, "{}", summary());
    assert!(!r.reset, "{}", summary());
    assert!(r.messages == messages, "other messages: {}", summary());
    assert_eq!(r.trailer("grpc-status"), Some("0"), "{}", summary());
}

/// gRPC needs HTTP/2 to the app (its status travels in trailers). With the
/// wiring's default (HTTP/1.1 to the pods) both listeners lose the trailers
/// alike; with `APP_PROTOCOL=http2_protocol_options` both app clusters
/// speak h2c and the call arrives whole through either listener.
#[tokio::test]
async fn grpc_needs_the_h2c_app_protocol_and_gets_it_on_both_listeners() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[]).await;
    let with = protocols::grpc_call(rig.front, "/test.Echo/Unary", b"hello").await;
    let without = protocols::grpc_call(rig.baseline, "/test.Echo/Unary", b"hello").await;
    assert_eq!(outcome(&with), outcome(&without));
    assert_eq!(
        with.trailers, None,
        "HTTP/1.1 to the pod carries no trailers"
    );
    assert_eq!(rig.pods[0].http2_requests(), 0);

    let rig = Rig::start(&[("a", ProtoState::Ready)], &[H2C]).await;
    for addr in [rig.front, rig.baseline] {
        let r = protocols::grpc_call(addr, "/test.Echo/Unary", b"hello").await;
        assert_whole(&r, &[b"hello".to_vec()]);
        assert_eq!(r.trailer("x-pod"), Some("a"), "the app's own trailer");
    }
    assert_eq!(rig.pods[0].http2_requests(), 2, "both clusters speak h2c");
    assert_eq!(
        rig.mulligan.streams().await,
        0.0,
        "a healthy call opens no stream"
    );
}

/// A draining gRPC pod that answers HTTP 503 with the drain header (the
/// request not processed): on the mulligan listener every call is retried
/// to the ready pod and arrives whole, trailers included; the baseline
/// passes the 503s on.
#[tokio::test]
async fn a_draining_grpc_pod_is_retried_away_from_with_trailers_intact() {
    let rig = Rig::start(
        &[("old", ProtoState::Draining), ("new", ProtoState::Ready)],
        &[H2C],
    )
    .await;
    for i in 0..6 {
        let message = format!("call {i}").into_bytes();
        let r = protocols::grpc_call(rig.front, "/test.Echo/Unary", &message).await;
        assert_whole(&r, &[message]);
        assert_eq!(r.trailer("x-pod"), Some("new"));
    }
    let stream = protocols::grpc_call(rig.front, "/test.Echo/Stream", &[20]).await;
    let want: Vec<Vec<u8>> = (0..20)
        .map(|i| protocols::stream_message(i).to_vec())
        .collect();
    assert_whole(&stream, &want);
    assert!(rig.pods[0].rejected() >= 3, "the draining pod was tried");
    assert!(rig.mulligan.answers("retry").await >= 3.0);

    let baseline = unary_calls(rig.baseline, 6, b"call").await;
    let failed = baseline.iter().filter(|r| r.status == 503).count();
    assert_eq!(failed, 3, "{:?}", outcomes(&baseline));
    assert_eq!(rig.pods[1].served(), 7 + 3);
}

/// A draining gRPC pod that answers the gRPC way (a trailers-only
/// response, `grpc-status` 14 UNAVAILABLE, HTTP 200): mulligan is not asked
/// (a 200) and every call ends exactly as on the baseline.
#[tokio::test]
async fn a_trailers_only_unavailable_passes_through_as_on_the_baseline() {
    let rig = Rig::start(
        &[("old", ProtoState::Unavailable), ("new", ProtoState::Ready)],
        &[H2C],
    )
    .await;
    let with = unary_calls(rig.front, 6, b"call").await;
    let without = unary_calls(rig.baseline, 6, b"call").await;
    assert_eq!(outcomes(&with), outcomes(&without));
    let unavailable = with
        .iter()
        .filter(|r| r.grpc_status() == Some("14") && r.trailers.is_none())
        .count();
    assert_eq!(unavailable, 3, "{:?}", outcomes(&with));
    assert_eq!(rig.mulligan.streams().await, 0.0);
}

/// A long server stream arrives whole through both listeners; one cut
/// mid-response (the pod resets it after some messages) ends as on the
/// baseline: the same messages, then a reset, no trailers.
#[tokio::test]
async fn a_grpc_stream_cut_mid_response_ends_as_on_the_baseline() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[H2C]).await;
    let want: Vec<Vec<u8>> = (0..200)
        .map(|i| protocols::stream_message(i).to_vec())
        .collect();
    for addr in [rig.front, rig.baseline] {
        let long = protocols::grpc_call(addr, "/test.Echo/Stream", &[200]).await;
        assert_whole(&long, &want);
    }
    let cut: Vec<GrpcReply> = futures::future::join_all(
        [rig.front, rig.baseline].map(|a| protocols::grpc_call(a, "/test.Echo/Cut", &[4])),
    )
    .await;
    assert_eq!(outcome(&cut[0]), outcome(&cut[1]));
    assert!(
        cut[0].reset && cut[0].trailers.is_none(),
        "{}",
        outcome(&cut[0])
    );
    assert_eq!(cut[0].messages.len(), 4);
    assert_eq!(
        rig.mulligan.streams().await,
        0.0,
        "mulligan is not asked about a 200"
    );
}

/// Open (docs/decide.md, "gRPC and WebSocket"): a stream the app resets
/// ejects its pod (a local-origin failure), so the next call goes to the
/// hold endpoint; Envoy rewrites the hold's 503 for a gRPC request into a
/// trailers-only UNAVAILABLE (200), which `mulligan.attempt` never sees, so
/// the call fails at once where the baseline serves it.
#[tokio::test]
#[ignore = "open: the hold answers gRPC with a trailers-only UNAVAILABLE that mulligan never sees"]
async fn after_a_cut_stream_the_next_grpc_call_is_served_as_on_the_baseline() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[H2C]).await;
    for addr in [rig.front, rig.baseline] {
        let cut = protocols::grpc_call(addr, "/test.Echo/Cut", &[4]).await;
        assert!(cut.reset);
        let next = protocols::grpc_call(addr, "/test.Echo/Unary", b"next").await;
        assert_whole(&next, &[b"next".to_vec()]);
    }
}

/// Envoy Gateway forwards WebSocket upgrades on every route; the reference
/// wiring does the same on both listeners, and an upgraded connection
/// carries bytes both ways.
#[tokio::test]
async fn websocket_upgrades_echo_through_both_listeners() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[]).await;
    let data = rig::payload(64 * 1024);
    for addr in [rig.front, rig.baseline] {
        let mut ws = protocols::upgrade(addr, "/ws").await;
        assert_eq!(ws.status, 101, "{}", ws.head);
        for _ in 0..3 {
            assert_eq!(ws.echo(&data).await, data);
        }
    }
    assert_eq!(rig.pods[0].served(), 2);
}

/// The status line and answering pod of `n` upgrades to `path`, sorted;
/// every accepted upgrade must echo.
async fn upgrades(addr: SocketAddr, path: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let mut ws = protocols::upgrade(addr, path).await;
        if ws.status == 101 {
            assert_eq!(ws.echo(b"ping").await, b"ping");
        }
        seen.push(format!("{} {:?}", ws.status, ws.header("x-pod")));
    }
    seen.sort();
    seen
}

/// With the app clusters on h2c, an HTTP/1.1 upgrade needs the app to take
/// an extended CONNECT (RFC 8441); this one does not, and both listeners
/// refuse the upgrade (the mulligan listener's connection-level retries
/// turn Envoy's 502 into a 503), with Envoy still up.
#[tokio::test]
async fn over_h2c_an_upgrade_is_refused_on_both_listeners() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[H2C]).await;
    for _ in 0..2 {
        for addr in [rig.front, rig.baseline] {
            let ws = protocols::upgrade(addr, "/ws").await;
            assert!(ws.status == 502 || ws.status == 503, "{}", ws.head);
        }
    }
    assert_eq!(rig.pods[0].served(), 0);
    let r = protocols::grpc_call(rig.front, "/test.Echo/Unary", b"up").await;
    assert_whole(&r, &[b"up".to_vec()]);
}

/// An upgrade whose answer is a 5xx (a draining pod's 503, an app's 500)
/// passes through as on the baseline, and Envoy stays up: Envoy 1.40
/// crashes when an ext_proc upstream filter sees such an answer (the second
/// one kills it), so `mulligan.attempt` never matches an upgrade.
#[tokio::test]
async fn an_upgrade_answered_5xx_passes_through_as_on_the_baseline() {
    let rig = Rig::start(
        &[("old", ProtoState::Draining), ("new", ProtoState::Ready)],
        &[],
    )
    .await;
    let with = upgrades(rig.front, "/ws", 6).await;
    assert_eq!(with, upgrades(rig.baseline, "/ws", 6).await);
    assert_eq!(with.iter().filter(|s| s.starts_with("101")).count(), 3);
    let with = upgrades(rig.front, "/fail", 4).await;
    assert_eq!(with, upgrades(rig.baseline, "/fail", 4).await);
    assert_eq!(with.iter().filter(|s| s.starts_with("500")).count(), 2);
    // Still up, still serving upgrades.
    let mut ws = protocols::upgrade(rig.front, "/ws").await;
    assert!(ws.status == 101 || ws.status == 503, "{}", ws.head);
    assert_eq!(
        rig.mulligan.answers("retry").await,
        0.0,
        "mulligan was not asked"
    );
    if ws.status == 101 {
        assert_eq!(ws.echo(b"still up").await, b"still up");
    }
}
