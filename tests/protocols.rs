//! gRPC (h2c, trailers, `grpc-status`) and WebSocket upgrades through the
//! reference wiring (`envoy-config/standalone/envoy.yaml`) while pods drain,
//! side by side with the baseline listener (the same route without
//! mulligan): every call either succeeds or ends exactly as it does without
//! mulligan, never with a retried reply whose body or trailers are broken;
//! healthy calls and upgrades open no ext_proc stream.
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
    envoy: Envoy,
    front: SocketAddr,
    baseline: SocketAddr,
}

impl Rig {
    async fn start(pods: &[(&str, ProtoState)], overrides: &[(&'static str, &str)]) -> Rig {
        Rig::start_with(pods, overrides, &[]).await
    }

    /// [`Rig::start`], with `args` added to mulligan's command line.
    async fn start_with(
        pods: &[(&str, ProtoState)],
        overrides: &[(&'static str, &str)],
        args: &[&str],
    ) -> Rig {
        let mut started = Vec::new();
        for (name, state) in pods {
            started.push(ProtoPod::start(name, *state).await);
        }
        let addrs: Vec<SocketAddr> = started.iter().map(|p| p.addr).collect();
        let list = rig::endpoint_list(&addrs);
        let mut all = vec!["--endpoints", list.as_str()];
        all.extend_from_slice(args);
        let mulligan = Mulligan::start(&all).await;
        let overrides: Vec<(&'static str, String)> =
            overrides.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let envoy = Envoy::start(&render::tolerant(&addrs, mulligan.grpc.port(), &overrides)).await;
        let front = envoy.listener("mulligan").await;
        let baseline = envoy.listener("baseline").await;
        Rig {
            pods: started,
            mulligan,
            envoy,
            front,
            baseline,
        }
    }

    /// Waits until Envoy's outlier detection has ejected a pod of `app`.
    async fn until_ejected(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .envoy
            .stat("cluster.app.outlier_detection.ejections_active")
            .await
            == 0
        {
            assert!(std::time::Instant::now() < deadline, "no pod ejected");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
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

/// A stream the app resets ejects its pod (a local-origin failure), so the
/// next call goes to the hold endpoint, whose 503 must reach
/// `mulligan.attempt` as a 503 (not as the trailers-only UNAVAILABLE Envoy
/// makes of a local reply to a gRPC request): mulligan holds the call until
/// the ejection ends and Envoy retries it to the pod, as the baseline
/// (no outlier detection) serves it at once.
#[tokio::test]
async fn after_a_cut_stream_the_next_grpc_call_is_served_as_on_the_baseline() {
    let rig = Rig::start(&[("a", ProtoState::Ready)], &[H2C]).await;
    for addr in [rig.front, rig.baseline] {
        let cut = protocols::grpc_call(addr, "/test.Echo/Cut", &[4]).await;
        assert!(cut.reset);
        if addr == rig.front {
            rig.until_ejected().await;
        }
        let next = protocols::grpc_call(addr, "/test.Echo/Unary", b"next").await;
        assert_whole(&next, &[b"next".to_vec()]);
    }
    assert!(
        rig.envoy
            .stat("http.mulligan_hold.downstream_rq_total")
            .await
            >= 1,
        "the call went to the hold"
    );
    assert!(rig.mulligan.answers("retry_after_hold").await >= 1.0);
}

/// A gRPC call through a real gRPC client (tonic): `Code::Unavailable`, or
/// the reply itself when the call succeeded.
async fn tonic_call(addr: SocketAddr) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to Envoy");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("channel ready");
    // The pod echoes the message; `Vec<u8>` is protobuf's BytesValue.
    client
        .unary(
            tonic::Request::new(b"nothing".to_vec()),
            http::uri::PathAndQuery::from_static("/test.Echo/Unary"),
            tonic_prost::ProstCodec::<Vec<u8>, Vec<u8>>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

/// Nothing can serve (the only pod is gone): a gRPC call is held like an
/// HTTP request, and at `rescue.deadline` ends as the hold's 503 with
/// `grpc-status: 14` and `Retry-After`, no body, which a gRPC client reads
/// as UNAVAILABLE, the code of the baseline's trailers-only answer (HTTP
/// 200, `grpc-status: 14`).
#[tokio::test]
async fn a_grpc_call_nothing_can_serve_is_held_then_ends_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[rescue]\ndeadline = \"1s\"\n").expect("config");
    let args = ["--config", cfg.to_str().expect("path")];
    let mut rig = Rig::start_with(&[("a", ProtoState::Ready)], &[H2C], &args).await;
    rig.pods.clear();
    let front = protocols::grpc_call(rig.front, "/test.Echo/Unary", b"x").await;
    assert_eq!(front.status, 503, "{}", outcome(&front));
    assert_eq!(front.grpc_status(), Some("14"), "{}", outcome(&front));
    assert_eq!(
        front.header("grpc-message"),
        Some("no healthy upstream"),
        "{}",
        outcome(&front)
    );
    assert!(front.messages.is_empty(), "{}", outcome(&front));
    assert!(front.header("retry-after").is_some(), "{}", outcome(&front));
    assert!(
        rig.mulligan.answers("held_too_long").await >= 1.0,
        "the call was held until its deadline"
    );
    let baseline = protocols::grpc_call(rig.baseline, "/test.Echo/Unary", b"x").await;
    assert_eq!(baseline.status, 200, "{}", outcome(&baseline));
    assert_eq!(baseline.grpc_status(), Some("14"), "{}", outcome(&baseline));
    for addr in [rig.front, rig.baseline] {
        let status = tonic_call(addr).await.expect_err("nothing can serve");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
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
    assert_eq!(
        rig.mulligan.streams().await,
        0.0,
        "a healthy upgrade opens no stream"
    );
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
