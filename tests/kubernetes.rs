//! Kubernetes discovery against a stand-in API server speaking the list and
//! watch protocol with real Kubernetes JSON (`rig::kube_api`), then end
//! to end: API events drive the registry while real Envoy, on the reference
//! wiring, serves traffic.
#![cfg(feature = "kubernetes")]

use std::time::{Duration, Instant};

use rig::{
    client::{self, HttpClient, Proto},
    kube_api::{endpoint_slice, pod, service, KubeApi},
    mulligan::Mulligan,
    pods::{Pod, PodState},
    render,
};
use serde_json::Value;

const CLUSTER: &str = "httproute/default/backend/rule/0";

/// mulligan following Service `backend` into Envoy cluster `cluster`.
async fn mulligan_for(api: &KubeApi, extra: &str, cluster: &str) -> (Mulligan, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("mulligan.toml");
    std::fs::write(
        &cfg,
        format!(
            "{extra}[kubernetes]\nenabled = true\nnamespace = \"default\"\napi_server = \"{}\"\n[[kubernetes.services]]\nname = \"backend\"\ncluster = \"{cluster}\"\n",
            api.url()
        ),
    )
    .expect("config");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    (m, dir)
}

async fn endpoints(m: &Mulligan, cluster: &str) -> Vec<(String, String)> {
    let r = client::get(m.admin, &format!("/v1/endpoints?cluster={cluster}"))
        .await
        .expect("list");
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    v["endpoints"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_string(),
                e["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until mulligan's view of `cluster` is `want` (in any order).
async fn until_endpoints(m: &Mulligan, cluster: &str, want: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = endpoints(m, cluster).await;
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(m: &Mulligan) -> u16 {
    client::get(m.admin, "/readyz")
        .await
        .map_or(0, |r| r.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_add_update_to_terminating_delete_and_survive_a_410() {
    let api = KubeApi::start().await;
    api.apply("services", service("backend", "backend"));
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-a",
            8080,
            &[
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", true, true, false),
            ],
        ),
    );
    // Another Service's slice is ignored.
    api.apply(
        "endpointslices",
        endpoint_slice("other", "other-a", 9090, &[("10.9.9.9", true, true, false)]),
    );
    let (m, _dir) = mulligan_for(&api, "", CLUSTER).await;
    until_endpoints(
        &m,
        CLUSTER,
        &[("10.0.0.1:8080", "ready"), ("10.0.0.2:8080", "ready")],
    )
    .await;
    assert_eq!(readyz(&m).await, 200);

    // Update: 10.0.0.2 is terminating but still serving (its preStop runs).
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-a",
            8080,
            &[
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, true, true),
            ],
        ),
    );
    until_endpoints(
        &m,
        CLUSTER,
        &[("10.0.0.1:8080", "ready"), ("10.0.0.2:8080", "draining")],
    )
    .await;

    // The watch expires (410 Gone): mulligan lists again and sees what
    // changed meanwhile.
    api.expire_watches();
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-b",
            8080,
            &[("10.0.0.3", false, false, false)],
        ),
    );
    until_endpoints(
        &m,
        CLUSTER,
        &[
            ("10.0.0.1:8080", "ready"),
            ("10.0.0.2:8080", "draining"),
            ("10.0.0.3:8080", "not_ready"),
        ],
    )
    .await;

    // Delete.
    api.delete("endpointslices", "backend-a");
    until_endpoints(&m, CLUSTER, &[("10.0.0.3:8080", "not_ready")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_list_even_with_the_api_server_down() {
    let api = KubeApi::start().await;
    api.set_up(false);
    let (m, _dir) = mulligan_for(&api, "", CLUSTER).await;
    // mulligan serves its admin port, but is not ready.
    for _ in 0..10 {
        assert_eq!(readyz(&m).await, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.apply("services", service("backend", "backend"));
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-a",
            8080,
            &[("10.0.0.1", true, true, false)],
        ),
    );
    api.set_up(true);
    // Backoff retries reach the API server; the first list makes it ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&m).await != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_endpoints(&m, CLUSTER, &[("10.0.0.1:8080", "ready")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleting_pod_drains_before_its_slice_changes() {
    let api = KubeApi::start().await;
    api.apply("services", service("backend", "backend"));
    api.apply("pods", pod("backend-1", "backend", "10.0.0.1", false));
    api.apply("pods", pod("backend-2", "backend", "10.0.0.2", false));
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-a",
            8080,
            &[
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", true, true, false),
            ],
        ),
    );
    let (m, _dir) = mulligan_for(&api, "", CLUSTER).await;
    until_endpoints(
        &m,
        CLUSTER,
        &[("10.0.0.1:8080", "ready"), ("10.0.0.2:8080", "ready")],
    )
    .await;
    // kubectl delete pod backend-2: the API server sets deletionTimestamp;
    // the EndpointSlice has not caught up.
    api.apply("pods", pod("backend-2", "backend", "10.0.0.2", true));
    until_endpoints(
        &m,
        CLUSTER,
        &[("10.0.0.1:8080", "ready"), ("10.0.0.2:8080", "draining")],
    )
    .await;
}

/// End to end: Envoy lists three pods statically and never learns anything;
/// mulligan learns from the API server that `b` is terminating. When `b`
/// then turns requests away, every one is still served, by another pod, at
/// mulligan's word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_announced_terminating_has_its_503s_retried_on_another_pod() {
    let pods = [
        Pod::start("a", PodState::Ready).await,
        Pod::start("b", PodState::Ready).await,
        Pod::start("c", PodState::Ready).await,
    ];
    let api = KubeApi::start().await;
    api.apply("services", service("backend", "backend"));
    for (i, p) in pods.iter().enumerate() {
        // Loopback pods all share 127.0.0.1: one slice per port.
        api.apply(
            "endpointslices",
            endpoint_slice(
                "backend",
                &format!("backend-{i}"),
                p.addr.port(),
                &[("127.0.0.1", true, true, false)],
            ),
        );
    }
    // Envoy's cluster in envoy.yaml is "app": the Service maps to it.
    let (m, _dir) = mulligan_for(&api, "", "app").await;
    let want: Vec<(String, &str)> = pods.iter().map(|p| (p.addr.to_string(), "ready")).collect();
    let want_ref: Vec<(&str, &str)> = want.iter().map(|(a, s)| (a.as_str(), *s)).collect();
    until_endpoints(&m, "app", &want_ref).await;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let envoy = rig::envoy::Envoy::start(&render::tolerant(&addrs, m.grpc.port(), &[])).await;
    let front = envoy.listener("mulligan").await;
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..30 {
        assert_eq!(http.get(front, "/").await.expect("warm").status, 200);
    }
    // Pod b's Service slice says terminating (serving): draining.
    api.apply(
        "endpointslices",
        endpoint_slice(
            "backend",
            "backend-1",
            pods[1].addr.port(),
            &[("127.0.0.1", false, true, true)],
        ),
    );
    let mut want = want.clone();
    want[1].1 = "draining";
    let want_ref: Vec<(&str, &str)> = want.iter().map(|(a, s)| (a.as_str(), *s)).collect();
    until_endpoints(&m, "app", &want_ref).await;
    pods[1].set_drain_header(false);
    pods[1].set_state(PodState::Draining).await;
    let served_before = pods[1].served();
    for i in 0..60 {
        let r = http.get(front, "/").await.expect("request");
        assert_eq!(r.status, 200, "{i}: {:?}", r.body);
    }
    assert!(pods[1].rejected() > 0, "Envoy still sent requests to b");
    assert_eq!(pods[1].served(), served_before, "b ran a request");
    assert!(
        m.metric(r#"mulligan_decisions_total{cause="upstream_draining",decision="rescue"}"#)
            .await
            > 0.0,
        "b's 503s were judged as a draining pod's"
    );
}
