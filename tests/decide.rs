//! The decide wiring (`envoy-config/standalone/envoy.yaml`) through real
//! Envoy: Envoy makes every attempt, mulligan only judges the failed ones.
//! Healthy requests open no stream; a retried request reaches the pod as a
//! first attempt does; no request runs twice; nothing Envoy alone serves is
//! cut, refused or changed; and with nothing to serve, requests wait and
//! then arrive whole.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::Method;
use rig::{
    client::{self, HttpClient, Proto, Reply},
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
    render, Stack,
};
use serde_yaml_ng::Value;

/// Pods, mulligan and Envoy on the reference bootstrap, edited by `edit`.
struct Rig {
    pods: Vec<Arc<Pod>>,
    mulligan: Mulligan,
    envoy: Envoy,
    front: SocketAddr,
    baseline: SocketAddr,
}

impl Rig {
    async fn start(pods: Vec<Arc<Pod>>, edit: impl FnOnce(&mut Value)) -> Rig {
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
        let list = rig::endpoint_list(&addrs);
        let mulligan = Mulligan::start(&["--endpoints", &list]).await;
        let yaml = render::standalone(&addrs, mulligan.grpc.port(), &[]);
        let mut v: Value = serde_yaml_ng::from_str(&yaml).expect("bootstrap is YAML");
        edit(&mut v);
        let envoy = Envoy::start(&serde_yaml_ng::to_string(&v).expect("YAML")).await;
        let front = envoy.listener("mulligan").await;
        let baseline = envoy.listener("baseline").await;
        Rig {
            pods,
            mulligan,
            envoy,
            front,
            baseline,
        }
    }
}

/// The mulligan route of a rendered bootstrap.
fn route(v: &mut Value) -> &mut Value {
    &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0]
}

/// The cluster named `name`.
fn cluster<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .iter_mut()
        .find(|c| c["name"] == name)
        .expect("cluster")
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("YAML literal")
}

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
async fn healthy_requests_open_no_stream_and_match_the_baseline() {
    let stack = Stack::start(&[("a", PodState::Ready), ("b", PodState::Ready)], &[], &[]).await;
    let body = payload(4096);
    for i in 0..50 {
        let (method, path) = if i % 2 == 0 {
            (Method::GET, "/")
        } else {
            (Method::POST, "/echo")
        };
        let with = send(stack.front, method.clone(), path, &[], body.clone()).await;
        let without = send(stack.baseline, method, path, &[], body.clone()).await;
        assert_eq!(with.status, 200);
        assert_eq!(with.status, without.status);
        // Round robin may pick the other pod: the greeting names it.
        assert_eq!(with.body.len(), without.body.len());
    }
    assert_eq!(
        stack.mulligan.streams().await,
        0.0,
        "a healthy request opened an ext_proc stream"
    );
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
    let rig = Rig::start(pods, |v| {
        let policy = &mut route(v)["route"]["retry_policy"];
        let on = policy["retry_on"].as_str().expect("retry_on").to_string();
        policy["retry_on"] = Value::from(format!("{on},retriable-status-codes"));
        policy["retriable_status_codes"] = yaml("[503]");
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

/// Nothing can serve: the only pod is gone. Held GETs and POSTs wait, and
/// arrive whole once it starts.
#[tokio::test]
async fn held_requests_arrive_whole_once_a_pod_starts() {
    let stack = Stack::start(&[("a", PodState::Gone)], &[], &[]).await;
    let body = payload(30_000);
    let front = stack.front;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (method, path, b) = if i % 2 == 0 {
                (Method::GET, "/", Vec::new())
            } else {
                (Method::POST, "/echo", body)
            };
            send(front, method, path, &[], b).await
        }));
    }
    stack
        .mulligan
        .wait_metric(
            "mulligan_rescue_held",
            4.0,
            Duration::from_secs(5),
            "four requests held",
        )
        .await;
    stack.pod("a").set_state(PodState::Ready).await;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request");
        assert_eq!(r.status, 200, "{i}: {:?}", r.body);
        if i % 2 == 1 {
            assert_eq!(r.body, body, "the held POST's body arrived whole");
        }
    }
    let seen = stack.pod("a").seen();
    assert_eq!(seen.len(), 4);
    for s in seen.iter().filter(|s| s.method == "POST") {
        assert_eq!(s.body.as_ref(), body.as_slice());
        assert_eq!(s.header("content-length"), Some("30000"));
    }
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
    let rig = Rig::start(pods, |v| {
        let r = route(v);
        r["match"] = yaml("{prefix: /api/}");
        r["route"]["prefix_rewrite"] = Value::from("/v2/");
        r["request_headers_to_add"] = yaml(
            "[{header: {key: x-user, value: gateway}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]",
        );
        let mut tls = yaml(
            "{name: envoy.transport_sockets.tls, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: localhost, common_tls_context: {validation_context: {trusted_ca: {inline_string: ''}}}}}",
        );
        tls["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]
            ["inline_string"] = Value::from(ca);
        cluster(v, "app")["transport_socket"] = tls;
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

/// Under Envoy Gateway's buffer limit, POSTs of 33-63 KiB with a
/// content-length get exactly what they get without mulligan.
#[tokio::test]
async fn bodies_over_the_buffer_limit_behave_as_without_mulligan() {
    let pods = vec![
        Pod::start("a", PodState::Ready).await,
        Pod::start("b", PodState::Ready).await,
    ];
    let rig = Rig::start(pods, |v| {
        for l in v["static_resources"]["listeners"]
            .as_sequence_mut()
            .expect("listeners")
        {
            if l.get("address").is_some() {
                l["per_connection_buffer_limit_bytes"] = Value::from(32768);
            }
        }
    })
    .await;
    for kib in 33..64 {
        let body = payload(kib * 1024);
        let with = send(rig.front, Method::POST, "/echo", &[], body.clone()).await;
        let without = send(rig.baseline, Method::POST, "/echo", &[], body.clone()).await;
        assert_eq!(with.status, without.status, "{kib} KiB");
        assert_eq!(with.status, 200, "{kib} KiB");
        assert_eq!(with.body, without.body, "{kib} KiB");
    }
    assert_eq!(rig.mulligan.streams().await, 0.0);
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
    let rig = Rig::start(pods, |v| {
        route(v)["response_headers_to_add"] =
            yaml("[{header: {key: strict-transport-security, value: max-age=31536000}}]");
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

/// Nothing comes back: a held request ends at `rescue.deadline` with the 503
/// and `Retry-After`, never later.
#[tokio::test]
async fn a_hold_that_finds_nothing_ends_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[rescue]\ndeadline = \"1s\"\n").expect("config");
    let stack = Stack::start(
        &[("a", PodState::Gone)],
        &["--config", cfg.to_str().expect("path")],
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let r = client::get(stack.front, "/").await.expect("GET");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    assert!(
        stack
            .mulligan
            .metric("mulligan_answers_total{answer=\"held_too_long\"}")
            .await
            >= 1.0
    );
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

/// A total outage does not make clients wait for nothing: with every
/// endpoint draining, no hold begins; the 503 comes at once, with
/// `Retry-After` (before, it came at `rescue.deadline`, 10 s later).
#[tokio::test]
async fn with_nothing_coming_back_the_503_is_not_held() {
    let stack = Stack::start(&[("a", PodState::Draining)], &[], &[]).await;
    let addr = stack.pod("a").addr;
    let r = client::post(stack.mulligan.admin, &format!("/v1/endpoints/{addr}/drain"))
        .await
        .expect("lifecycle drain");
    assert!(r.status.is_success());
    let started = std::time::Instant::now();
    let r = client::get(stack.front, "/").await.expect("GET");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert!(took < Duration::from_secs(2), "held for {took:?}");
    assert!(
        stack
            .mulligan
            .metric("mulligan_answers_total{answer=\"nothing_coming\"}")
            .await
            >= 1.0
    );
}

/// EDS for Envoy and mulligan alike, from one file (the hold endpoint in it
/// too, as an internal address mulligan skips).
fn eds_file(path: &std::path::Path, pods: &[SocketAddr]) {
    let lb: Vec<serde_json::Value> = pods
        .iter()
        .map(|a| serde_json::json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    let doc = serde_json::json!({
        "version_info": format!("{}", fastrand::u64(..)),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "app",
            "policy": {"overprovisioning_factor": 100000},
            "endpoints": [
                {"lb_endpoints": lb},
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "mulligan_hold"}}}}]},
            ],
        }],
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).expect("write eds");
    std::fs::rename(&tmp, path).expect("rename eds");
}

/// A held request is served by an endpoint discovered after the hold began
/// (before, a hold only ever looked at the endpoints it started with, and
/// this request waited out its deadline).
#[tokio::test]
async fn a_held_request_is_served_by_an_endpoint_discovered_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eds = dir.path().join("eds").join("eds.json");
    std::fs::create_dir_all(eds.parent().expect("dir")).expect("eds dir");
    let gone = Pod::start("gone", PodState::Gone).await;
    eds_file(&eds, &[gone.addr]);
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[endpoints]\neds_file = {:?}\neds_file_poll = \"20ms\"\n",
            eds.display().to_string()
        ),
    )
    .expect("config");
    let mulligan = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let text = render::standalone(&[], mulligan.grpc.port(), &[]);
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("bootstrap is YAML");
    let app = cluster(&mut v, "app");
    let obj = app.as_mapping_mut().expect("cluster");
    obj.remove("load_assignment");
    obj.insert("type".into(), Value::from("EDS"));
    obj.insert(
        "eds_cluster_config".into(),
        yaml(&format!(
            "{{eds_config: {{resource_api_version: V3, path_config_source: {{path: '{}', watched_directory: {{path: '{}'}}}}}}}}",
            eds.display(),
            eds.parent().expect("dir").display()
        )),
    );
    let mut bootstrap = v;
    bootstrap["node"] = yaml("{id: decide-test, cluster: decide-test}");
    let envoy = Envoy::start(&serde_yaml_ng::to_string(&bootstrap).expect("YAML")).await;
    let front = envoy.listener("mulligan").await;
    let held = tokio::spawn(async move { client::get(front, "/").await });
    mulligan
        .wait_metric(
            "mulligan_rescue_held",
            1.0,
            Duration::from_secs(5),
            "one request held",
        )
        .await;
    let fresh = Pod::start("fresh", PodState::Ready).await;
    eds_file(&eds, &[fresh.addr]);
    let r = held.await.expect("task").expect("GET");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "hello from fresh\n");
}
