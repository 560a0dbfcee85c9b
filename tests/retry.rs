//! Retry through real Envoy on the reference wiring: Envoy makes every
//! attempt and mulligan only judges the failed ones. A draining pod's
//! refusals are retried on another pod for every method; a retried request
//! reaches the pod byte for byte as a first attempt does, with the route's
//! rewrites, header policies and TLS; no request runs twice, whatever retry
//! policy the route has of its own; and a POST the app may have run is
//! retried only with an Idempotency-Key.

use std::net::SocketAddr;

use http::Method;
use rig::{
    client::{self, HttpClient, Proto, Reply},
    payload,
    pods::{Pod, PodState},
    render, Stack,
};
use serde_yaml_ng::Value;

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    HttpClient::new(Proto::Http1)
        .send(method, addr, path, headers, client::full(body))
        .await
        .expect("request through Envoy")
}

#[tokio::test]
async fn a_draining_pod_is_retried_away_from_for_every_method() {
    let stack = Stack::start(
        &[("a", PodState::Draining), ("b", PodState::Ready)],
        &[],
        &[],
    )
    .await;
    let body = payload(20_000);
    for i in 0..20 {
        let id = format!("drain-{i}");
        let headers = [("x-harness-id", id.as_str())];
        let get = send(stack.front, Method::GET, "/", &headers, Vec::new()).await;
        assert_eq!(get.status, 200, "{:?}", get.body);
        let post = send(stack.front, Method::POST, "/echo", &headers, body.clone()).await;
        assert_eq!(post.status, 200);
        assert_eq!(post.body, body, "the POST body arrived whole");
    }
    assert!(stack.pod("a").rejected() > 0, "the draining pod was tried");
    assert_eq!(stack.pod("a").served(), 0);
    assert_eq!(stack.pod("b").served(), 40);
    assert!(
        stack
            .mulligan
            .metric("mulligan_answers_total{answer=\"retry\"}")
            .await
            > 0.0
    );
}

/// The route's own retry policy (a 503 retried, previous_hosts: what Envoy
/// Gateway's BackendTrafficPolicy emits) over a pod that runs a POST and
/// answers 503, and a pod that is gone: each POST runs exactly once. Without
/// the gate, the connection failure's retry would carry it back to the pod
/// that already ran it.
#[tokio::test]
async fn the_routes_own_retries_never_run_a_post_twice() {
    let pods = vec![
        Pod::start("a", PodState::Failing).await,
        Pod::start("b", PodState::Gone).await,
    ];
    let rig = Stack::around(pods, &[], &[], |v| {
        let policy = &mut render::route(v)["route"]["retry_policy"];
        let on = policy["retry_on"].as_str().expect("retry_on").to_string();
        policy["retry_on"] = Value::from(format!("{on},retriable-status-codes"));
        policy["retriable_status_codes"] = render::yaml("[503]");
    })
    .await;
    for i in 0..10 {
        let id = format!("post-{i}");
        let r = send(
            rig.front,
            Method::POST,
            "/echo",
            &[("x-harness-id", id.as_str())],
            payload(100),
        )
        .await;
        assert_eq!(r.status, 503);
    }
    let ran = rig.pods[0].executions();
    assert_eq!(ran.len(), 10, "every POST reached the failing pod: {ran:?}");
    assert!(ran.values().all(|n| *n == 1), "a POST ran twice: {ran:?}");
    assert!(
        rig.mulligan.answers("stopped").await > 0.0,
        "the gate stopped a retry"
    );
}

/// A route with a prefix rewrite, a header it overwrites, and TLS to the
/// pods: a request Envoy retried reaches the pod byte for byte as a first
/// attempt does.
#[tokio::test]
async fn a_retried_request_reaches_the_pod_as_a_first_attempt() {
    let certs = rig::tls::Certs::new();
    let pods = vec![
        Pod::start_tls("a", PodState::Draining, certs.acceptor()).await,
        Pod::start_tls("b", PodState::Ready, certs.acceptor()).await,
    ];
    let ca = certs.ca_pem.clone();
    let rig = Stack::around(pods, &[], &[], |v| {
        let r = render::route(v);
        r["match"] = render::yaml("{prefix: /api/}");
        r["route"]["prefix_rewrite"] = Value::from("/v2/");
        r["request_headers_to_add"] = render::yaml(
            "[{header: {key: x-user, value: gateway}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]",
        );
        let mut tls = render::yaml(
            "{name: envoy.transport_sockets.tls, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: localhost, common_tls_context: {validation_context: {trusted_ca: {inline_string: ''}}}}}",
        );
        tls["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]
            ["inline_string"] = Value::from(ca);
        render::cluster(v, "app")["transport_socket"] = tls;
    })
    .await;
    let body = payload(2048);
    for i in 0..12 {
        let id = format!("fidelity-{i}");
        let r = send(
            rig.front,
            Method::POST,
            "/api/echo?x=1",
            &[("x-user", "client"), ("x-harness-id", id.as_str())],
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}\n{}", r.body, rig.envoy.log());
        assert_eq!(r.body, body);
    }
    assert!(rig.pods[0].rejected() > 0, "some requests were retried");
    assert!(rig.mulligan.answers("retry").await > 0.0);
    let seen = rig.pods[1].seen();
    assert_eq!(seen.len(), 12);
    // Per-request values aside, every request the pod saw is the same.
    // (Envoy sets x-envoy-expected-rq-timeout-ms on each attempt to the time
    // the route has left, with or without mulligan.)
    let strip = |s: &rig::pods::Seen| {
        let mut s = s.clone();
        s.headers.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "x-request-id" | "x-harness-id" | "x-envoy-expected-rq-timeout-ms"
            )
        });
        s
    };
    let first = strip(&seen[0]);
    assert_eq!(first.uri, "/v2/echo?x=1");
    assert_eq!(first.header("x-user"), Some("gateway"));
    assert_eq!(first.body.as_ref(), body.as_slice());
    for s in &seen[1..] {
        assert_eq!(strip(s), first);
    }
}

/// The route's own response headers (HSTS here) are on every response the
/// client gets, retried ones included. A client's own endpoint choice never
/// reaches Envoy's router or the pod.
#[tokio::test]
async fn responses_keep_the_routes_headers_and_clients_cannot_pick_endpoints() {
    let pods = vec![
        Pod::start("a", PodState::Draining).await,
        Pod::start("b", PodState::Ready).await,
    ];
    let draining = pods[0].addr.to_string();
    let rig = Stack::around(pods, &[], &[], |v| {
        render::route(v)["response_headers_to_add"] =
            render::yaml("[{header: {key: strict-transport-security, value: max-age=31536000}}]");
    })
    .await;
    for _ in 0..6 {
        let r = send(
            rig.front,
            Method::GET,
            "/",
            &[("x-gateway-destination-endpoint", draining.as_str())],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers
                .get("strict-transport-security")
                .map(|v| v.as_bytes()),
            Some(&b"max-age=31536000"[..])
        );
    }
    assert!(
        rig.mulligan.answers("retry").await > 0.0,
        "some responses were retried"
    );
    let seen = rig.pods[1].seen();
    assert!(seen
        .iter()
        .all(|s| s.header("x-gateway-destination-endpoint").is_none()));
}

/// A POST the app may have seen (a 503 with `connection: close`, no drain
/// header) is sent again only with a non-empty Idempotency-Key: an empty
/// one names nothing to deduplicate on.
#[tokio::test]
async fn only_a_non_empty_idempotency_key_lets_a_post_be_retried() {
    let stack = Stack::start(
        &[("a", PodState::Draining), ("b", PodState::Ready)],
        &[],
        &[],
    )
    .await;
    stack.pod("a").set_drain_header(false);
    let mut refused = 0;
    for i in 0..10 {
        let empty = send(
            stack.front,
            Method::POST,
            "/echo",
            &[("idempotency-key", "")],
            payload(64),
        )
        .await;
        refused += usize::from(empty.status == 503);
        let key = format!("k-{i}");
        let keyed = send(
            stack.front,
            Method::POST,
            "/echo",
            &[("idempotency-key", key.as_str())],
            payload(64),
        )
        .await;
        assert_eq!(keyed.status, 200, "a keyed POST is retried");
    }
    assert!(refused > 0, "a POST with an empty key was retried");
    assert!(
        stack
            .mulligan
            .metric(r#"mulligan_decisions_total{cause="upstream_draining",decision="unsafe"}"#)
            .await
            >= refused as f64
    );
}

/// When Envoy has no retry left to make, the attempt's answer goes to the
/// client as it is: mulligan's retry header on it stays inside Envoy (the
/// route removes it from every response), so the client gets exactly what
/// Envoy alone would send it.
#[tokio::test]
async fn a_client_never_receives_mulligans_retry_header() {
    let stack = Stack::start(
        &[("a", PodState::Draining), ("b", PodState::Draining)],
        &[],
        &[("NUM_RETRIES", "1".to_string())],
    )
    .await;
    for i in 0..6 {
        let id = format!("spent-{i}");
        let r = send(
            stack.front,
            Method::GET,
            "/",
            &[("x-harness-id", &id)],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, 503, "both pods are draining");
        assert!(
            r.headers.get("x-mulligan-retry").is_none(),
            "the client got mulligan's retry header: {:?}",
            r.headers
        );
    }
    assert!(
        stack.mulligan.answers("retry").await >= 6.0,
        "mulligan asked for the retries Envoy then had no room for"
    );
}
