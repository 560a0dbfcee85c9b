//! Steer through real Envoy (`envoy-config/standalone/steer.yaml`): mulligan
//! lists healthy endpoints per request and Envoy's router walks the list.

use std::time::{Duration, Instant};

use http::Method;
use rig::{
    client::{self, HttpClient, Proto},
    payload,
    pods::PodState,
    render, Stack,
};
use serde_json::Value;

const STEER: &str = "[steer]\nenabled = true\n";

const THREE_READY: [(&str, PodState); 3] = [
    ("a", PodState::Ready),
    ("b", PodState::Ready),
    ("c", PodState::Ready),
];

async fn steer_stack(pods: &[(&str, PodState)], toml: &str) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mulligan.toml");
    // `toml` may carry more [steer] keys first, then other tables.
    std::fs::write(&path, format!("{STEER}{toml}")).expect("config");
    Stack::start_with(
        render::steer,
        pods,
        &["--config", path.to_str().expect("path")],
        &[],
    )
    .await
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("yaml")
}

#[test]
fn steer_yaml_differs_from_the_reference_only_where_documented() {
    let addr = ["127.0.0.1:1".parse().expect("addr")];
    let mut reference = yaml(&render::legacy_rescue(&addr, 1, &[]));
    let mut steer = yaml(&render::steer(&addr, 1, &[]));
    let route = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0/route";
    let ext_proc = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config";
    let app = "/static_resources/clusters/0";
    // 1. override_host instead of round robin.
    assert_eq!(
        steer.pointer(&format!(
            "{app}/load_balancing_policy/policies/0/typed_extension_config/name"
        )),
        Some(&Value::from("envoy.load_balancing_policies.override_host"))
    );
    steer
        .pointer_mut(app)
        .and_then(Value::as_object_mut)
        .expect("app")
        .remove("load_balancing_policy");
    reference
        .pointer_mut(app)
        .and_then(Value::as_object_mut)
        .expect("app")
        .remove("lb_policy");
    // 2. the route's retries and the buffer that lets them resend a body.
    steer
        .pointer_mut(route)
        .and_then(Value::as_object_mut)
        .expect("route")
        .remove("retry_policy");
    steer
        .pointer_mut(route.trim_end_matches("/route"))
        .and_then(Value::as_object_mut)
        .expect("route entry")
        .remove("per_request_buffer_limit_bytes");
    // 3. the response phase off by default, the cluster name on requests.
    assert_eq!(
        steer.pointer(&format!("{ext_proc}/processing_mode/response_header_mode")),
        Some(&Value::from("SKIP"))
    );
    *steer
        .pointer_mut(&format!("{ext_proc}/processing_mode/response_header_mode"))
        .expect("mode") = Value::from("SEND");
    steer
        .pointer_mut(ext_proc)
        .and_then(Value::as_object_mut)
        .expect("ext_proc")
        .remove("request_attributes");
    assert_eq!(
        steer, reference,
        "steer.yaml has an undocumented difference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_marked_draining_gets_no_new_request_after_the_call() {
    let stack = steer_stack(&THREE_READY, "").await;
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..30 {
        assert_eq!(http.get(stack.front, "/").await.expect("warm").status, 200);
    }
    assert!(stack.pod("b").served() > 0, "b served before its drain");
    let r = client::post(
        stack.mulligan.admin,
        &format!("/v1/endpoints/{}/drain", stack.pod("b").addr),
    )
    .await
    .expect("drain");
    assert_eq!(r.status, 200);
    let before = stack.pod("b").served();
    for i in 0..300 {
        let r = if i % 3 == 0 {
            http.send(
                Method::POST,
                stack.front,
                "/echo",
                &[],
                client::full(payload(64)),
            )
            .await
        } else {
            http.get(stack.front, "/").await
        }
        .expect("request");
        assert_eq!(r.status, 200);
    }
    // Envoy's own endpoint set still has b (nothing told Envoy): only
    // mulligan's list kept requests away from it.
    assert_eq!(
        stack.pod("b").served(),
        before,
        "b got requests after its drain"
    );
    assert!(stack.pod("a").served() > 50 && stack.pod("c").served() > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_mid_run_costs_no_client_request() {
    let stack = steer_stack(&THREE_READY, "").await;
    let http = HttpClient::new(Proto::Http1);
    let mut statuses = Vec::new();
    for i in 0..600 {
        if i == 200 {
            // A crash: no preStop, mulligan is not told.
            stack.pod("b").set_state(PodState::Gone).await;
        }
        let r = http.get(stack.front, "/").await.expect("request");
        statuses.push(r.status.as_u16());
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "requests failed after b died");
    // Envoy did walk the list past the dead pod.
    assert!(stack.envoy.stat("cluster.app.upstream_rq_retry").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5mib_streamed_post_to_a_gone_pod_succeeds_on_another() {
    // mulligan believes both pods are ready (no probe, no failure seen yet).
    let stack = steer_stack(&[("gone", PodState::Gone), ("ready", PodState::Ready)], "").await;
    let http = HttpClient::new(Proto::Http1);
    let body = payload(5 * 1024 * 1024);
    // Which pod mulligan lists first is a random pick between the two: send
    // until one POST was steered to the gone pod first (each 1 in 2), at
    // least six in all.
    let mut sent = 0;
    while sent < 6 || (sent < 40 && stack.envoy.stat(CONNECT_FAIL).await == 0) {
        sent += 1;
        let r = http
            .send(
                Method::POST,
                stack.front,
                "/echo",
                &[("idempotency-key", "k")],
                client::chunked(body.clone(), 64 * 1024),
            )
            .await
            .expect("POST");
        assert_eq!(r.status, 200);
        assert!(r.body == body, "5 MiB body must arrive intact");
    }
    assert!(
        stack.envoy.stat(CONNECT_FAIL).await > 0,
        "no request was steered to the gone pod first in {sent}; the test proved nothing"
    );
}

/// Envoy's count of connections the app cluster could not open.
const CONNECT_FAIL: &str = "cluster.app.upstream_cx_connect_fail";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_responses_are_not_retried() {
    let stack = steer_stack(&[("a", PodState::Ready), ("b", PodState::Ready)], "").await;
    let http = HttpClient::new(Proto::Http1);
    for (path, status) in [("/overload", 503), ("/status/429", 429)] {
        for _ in 0..10 {
            let r = http
                .send(
                    Method::GET,
                    stack.front,
                    path,
                    &[("x-harness-variant", "A")],
                    client::empty(),
                )
                .await
                .expect("request");
            assert_eq!(r.status, status, "{path}");
        }
    }
    let arrivals: u64 = stack.pods.iter().map(|p| p.arrivals(0)).sum();
    assert_eq!(arrivals, 20, "each shed request reached a pod exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_usable_falls_back_to_rescue() {
    // Every pod gone, and mulligan's probes know it; one comes back: the
    // held request is rescued.
    let stack = steer_stack(
        &[("a", PodState::Gone), ("b", PodState::Gone)],
        "[probe]\npath = \"/ready\"\ninterval = \"50ms\"\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(stack.mulligan.admin, "/v1/endpoints")
            .await
            .expect("list");
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        let eps = v["endpoints"].as_array().expect("array");
        if eps.iter().all(|e| e["state"] == "gone") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probes never saw the pods gone: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let front = stack.front;
    let held = tokio::spawn(async move { client::get(front, "/").await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.mulligan.metric("mulligan_rescue_held").await < 1.0 {
        assert!(Instant::now() < deadline, "request was not held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.pod("a").set_state(PodState::Ready).await;
    client::post(
        stack.mulligan.admin,
        &format!("/v1/endpoints/{}/ready", stack.pod("a").addr),
    )
    .await
    .expect("ready");
    let r = held.await.expect("task").expect("held request");
    assert_eq!(r.status, 200);
    assert!(
        stack
            .mulligan
            .metric(r#"mulligan_steered_total{endpoints="none",response_phase="observed"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pods_503_is_retried_by_envoy_for_any_method() {
    // mulligan was not told about the drain; the app marks its 503.
    let stack = steer_stack(&[("a", PodState::Ready), ("b", PodState::Draining)], "").await;
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..40 {
        let r = http
            .send(
                Method::POST,
                stack.front,
                "/echo",
                &[],
                client::full(payload(100)),
            )
            .await
            .expect("POST");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, payload(100));
    }
    assert!(stack.pod("b").rejected() > 0, "some POSTs went to b first");
    assert_eq!(
        stack.pod("a").served(),
        40,
        "each POST processed exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_envoy_reports_teaches_passive_health() {
    // Every response observed, so every walk down the list is seen.
    let stack = steer_stack(
        &[("a", PodState::Ready), ("b", PodState::Ready)],
        "observe_one_in = 1\n",
    )
    .await;
    stack.pod("b").set_state(PodState::Gone).await;
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..20 {
        assert_eq!(http.get(stack.front, "/").await.expect("GET").status, 200);
    }
    let r = client::get(stack.mulligan.admin, "/v1/endpoints")
        .await
        .expect("list");
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    let b = v["endpoints"]
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["address"] == stack.pod("b").addr.to_string())
        .expect("b listed")
        .clone();
    assert!(
        b["penalty_ms"].as_u64().unwrap_or(0) > 0,
        "b not penalised: {b}"
    );
    // Once penalised, b is no longer listed first: later requests go to a
    // directly (no more walks down the list).
    let retries = stack.envoy.stat("cluster.app.upstream_rq_retry").await;
    for _ in 0..20 {
        assert_eq!(http.get(stack.front, "/").await.expect("GET").status, 200);
    }
    assert_eq!(
        stack.envoy.stat("cluster.app.upstream_rq_retry").await,
        retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_endpoint() {
    let stack = steer_stack(&THREE_READY, "").await;
    // A client naming one pod (b, drained in mulligan's view) and an outside
    // address: mulligan's list replaces the header.
    client::post(
        stack.mulligan.admin,
        &format!("/v1/endpoints/{}/drain", stack.pod("b").addr),
    )
    .await
    .expect("drain");
    let outside = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let wanted = format!(
        "{},{}",
        outside.local_addr().expect("addr"),
        stack.pod("b").addr
    );
    let before = stack.pod("b").served();
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..50 {
        let r = http
            .send(
                Method::GET,
                stack.front,
                "/",
                &[("x-gateway-destination-endpoint", wanted.as_str())],
                client::empty(),
            )
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        stack.pod("b").served(),
        before,
        "the client's header steered a request"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(50), outside.accept()).await;
    assert!(accepted.is_err(), "Envoy connected to the client's address");
}
