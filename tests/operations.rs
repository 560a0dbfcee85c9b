//! The operations surface: admin HTTP, gRPC health, the lifecycle API, the
//! CLI contract (configs refused with their location), the runtime's size,
//! logs, and the NetworkPolicy shipped for Kubernetes.

use std::process::Command;

use mulligan::proto::{
    lifecycle_client::LifecycleClient, EndpointRef, EndpointState, ListEndpointsRequest,
};
use rig::{client, mulligan::Mulligan};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const BIN: &str = env!("CARGO_BIN_EXE_mulligan");

/// A lifecycle call's target, in every cluster that has it.
fn endpoint_ref(address: &str) -> EndpointRef {
    EndpointRef {
        address: address.into(),
        cluster: String::new(),
    }
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let m = Mulligan::start(&["--endpoints", "127.0.0.1:7001,127.0.0.1:7002"]).await;
    let health = client::get(m.admin, "/healthz").await.expect("healthz");
    assert_eq!(health.status, 200);
    let ready = client::get(m.admin, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200);

    let metrics = m.metrics().await;
    for name in [
        "mulligan_ext_proc_streams_total",
        "mulligan_ext_proc_streams_in_flight",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let list = client::get(m.admin, "/v1/endpoints").await.expect("list");
    assert_eq!(list.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&list.body).expect("json");
    let eps = v["endpoints"].as_array().expect("endpoints array");
    assert_eq!(eps.len(), 2, "{v}");
    assert!(eps.iter().all(|e| e["state"] == "ready"), "{v}");

    let drained = client::post(m.admin, "/v1/endpoints/127.0.0.1:7002/drain")
        .await
        .expect("drain");
    assert_eq!(drained.status, 200);
    let list = client::get(m.admin, "/v1/endpoints").await.expect("list");
    let v: serde_json::Value = serde_json::from_slice(&list.body).expect("json");
    let e = v["endpoints"]
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["address"] == "127.0.0.1:7002")
        .expect("drained endpoint listed")
        .clone();
    assert_eq!(e["state"], "draining");
    assert_eq!(e["reason"], "lifecycle: drain");

    // An address mulligan does not know is refused, never learned.
    let unknown = client::post(m.admin, "/v1/endpoints/10.1.2.3:80/drain")
        .await
        .expect("unknown");
    assert_eq!(unknown.status, 404);
    let bad = client::post(m.admin, "/v1/endpoints/not-an-address/ready")
        .await
        .expect("bad");
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn grpc_health_and_lifecycle() {
    let m = Mulligan::start(&[
        "--endpoints",
        "127.0.0.1:7001",
        "--control-listen",
        "127.0.0.1:0",
    ])
    .await;
    let channel = rig::mulligan::grpc_channel(m.grpc).await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "envoy.service.ext_proc.v3.ExternalProcessor"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }

    // The lifecycle API has a port of its own (never the ext_proc port).
    let mut lifecycle = LifecycleClient::new(m.control_channel().await);
    let e = lifecycle
        .mark_draining(endpoint_ref("127.0.0.1:7001"))
        .await
        .expect("mark draining")
        .into_inner();
    assert_eq!(e.state(), EndpointState::Draining);
    let list = lifecycle
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.endpoints.len(), 1);
    assert_eq!(list.endpoints[0].state(), EndpointState::Draining);
    let ready = lifecycle
        .mark_ready(endpoint_ref("127.0.0.1:7001"))
        .await
        .expect("mark ready")
        .into_inner();
    assert_eq!(ready.state(), EndpointState::Ready);
    let unknown = lifecycle
        .mark_ready(endpoint_ref("10.0.0.9:80"))
        .await
        .expect_err("unknown endpoint");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("mulligan {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_valid_and_locates_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[listen]\ngrpc = \"0.0.0.0:50051\"\n").expect("write");
    rig::mulligan::assert_success(&rig::mulligan::check_config(&good));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[listen]\ngrpc = \"0.0.0.0:50051\"\n\n[shutdown]\ndrain_timeout = \"soon\"\n",
    )
    .expect("write");
    let out = rig::mulligan::check_config(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:5:17: ", bad.display())),
        "error must name file:line:column, got {err:?}"
    );

    let missing = Command::new(BIN)
        .args(["check-config", "/nonexistent/mulligan.toml"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
}

#[test]
fn broken_config_stops_serve_with_the_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\ngrcp = \"127.0.0.1:1\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:1: ") && err.contains("grcp"), "{err}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("a log line within 20 s")
        .expect("read")
        .expect("a line");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "mulligan serving", "{v}");
    assert!(
        v["grpc"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
}

#[tokio::test]
async fn lifecycle_calls_need_loopback_or_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let cfg = dir.path().join("m.toml");
    // As if every caller were remote: loopback is not trusted here.
    std::fs::write(
        &cfg,
        format!(
            "[admin]\ntoken_file = {:?}\ntrust_loopback = false\nopen_reads = false\n",
            token.display().to_string()
        ),
    )
    .expect("config");
    let m = Mulligan::start(&[
        "--config",
        cfg.to_str().expect("path"),
        "--endpoints",
        "127.0.0.1:7001",
        "--control-listen",
        "127.0.0.1:0",
    ])
    .await;
    let http = client::HttpClient::new(client::Proto::Http1);
    let drain = "/v1/endpoints/127.0.0.1:7001/drain";
    let call = |path: &'static str, method: http::Method, auth: Option<&'static str>| {
        let http = http.clone();
        let admin = m.admin;
        async move {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            http.send(method, admin, path, &headers, client::empty())
                .await
                .expect("admin call")
                .status
                .as_u16()
        }
    };
    use http::Method;
    assert_eq!(call(drain, Method::POST, None).await, 403);
    assert_eq!(call(drain, Method::POST, Some("Bearer wrong")).await, 403);
    assert_eq!(call("/v1/endpoints", Method::GET, None).await, 403);
    assert_eq!(call("/metrics", Method::GET, None).await, 403);
    // Health stays open: the kubelet has no token.
    assert_eq!(call("/healthz", Method::GET, None).await, 200);
    assert_eq!(call("/readyz", Method::GET, None).await, 200);
    assert_eq!(
        call(drain, Method::POST, Some("Bearer s3cret-token")).await,
        200
    );
    assert_eq!(
        call("/v1/endpoints", Method::GET, Some("Bearer s3cret-token")).await,
        200
    );

    // The same rule on the gRPC lifecycle API.
    let mut lifecycle = LifecycleClient::new(m.control_channel().await);
    let r = endpoint_ref("127.0.0.1:7001");
    let denied = lifecycle.mark_ready(r.clone()).await.expect_err("no token");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut with_token = tonic::Request::new(r);
    with_token.metadata_mut().insert(
        "authorization",
        "Bearer s3cret-token".parse().expect("metadata"),
    );
    let ok = lifecycle
        .mark_ready(with_token)
        .await
        .expect("with the token")
        .into_inner();
    assert_eq!(ok.state(), EndpointState::Ready);
}

#[test]
fn a_missing_token_file_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[admin]\ntoken_file = \"/nonexistent/token\"\n").expect("write");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token_file /nonexistent/token"), "{err}");
}

/// Configs that would panic, fail later or silently do nothing are
/// refused by `check-config` with FILE:LINE:COL, and `serve` refuses them
/// the same way instead of starting.
#[test]
fn check_config_and_serve_refuse_what_would_fail_at_run_time() {
    let cases: &[(&str, &str)] = &[
        // tokio's interval panics on a zero period.
        (
            "[probe]\npath = \"/ready\"\ninterval = \"0s\"\n",
            ":3:12: probe.interval",
        ),
        ("[probe]\npath = \"ready\"\n", ":2:8: probe.path"),
        (
            "[rescue]\ndrain_header = \"connection\"\n",
            ":2:16: rescue.drain_header",
        ),
        // In milliseconds it does not fit the registry's u64 clock: the
        // first failure would get a truncated, meaningless penalty.
        (
            "[health]\npenalty_base = \"500000000000years\"\n",
            ":2:16: health.penalty_base",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_mulligan"))
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("check-config");
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{text:?} accepted");
        let at = format!("{}{want}", file.display());
        assert!(err.starts_with(&at), "{text:?}: want {at:?}, got {err:?}");
        let serve = std::process::Command::new(env!("CARGO_BIN_EXE_mulligan"))
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("serve");
        assert_eq!(
            serve.status.code(),
            Some(2),
            "{text:?}: serve must refuse it"
        );
        assert!(String::from_utf8_lossy(&serve.stderr).starts_with(&at));
    }
}

/// tokio's worker threads of a process (`tokio-rt-worker`; older tokio
/// named them `tokio-runtime-worker`, which the kernel cuts to 15 bytes).
fn tokio_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| matches!(comm.trim_end(), "tokio-rt-worker" | "tokio-runtime-w"))
        .count()
}

/// `runtime.worker_threads` sizes the runtime. The machine has
/// fewer cores than 5 and more than 1, so neither count is tokio's default.
#[tokio::test]
async fn runtime_worker_threads_is_applied() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1usize, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("m.toml");
        std::fs::write(&cfg, format!("[runtime]\nworker_threads = {threads}\n")).expect("write");
        let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
        // Workers may still be starting when the ports are announced: the
        // count settles within moments (and never exceeds the setting).
        let mut seen = tokio_workers(m.pid());
        let until = std::time::Instant::now() + rig::LOADED;
        while seen < threads && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            seen = tokio_workers(m.pid());
        }
        assert_eq!(seen, threads, "worker_threads = {threads} on {cores} cores");
    }
}

/// The shipped NetworkPolicy (listed in the kustomization) admits
/// only Envoy Gateway's proxy pods to ext_proc, and only the admin port to
/// the application's namespace (the lifecycle hooks). It is read as the
/// Kubernetes API type, so a misspelt field fails here, not at apply time.
#[test]
fn the_network_policy_admits_only_envoy_gateway_to_ext_proc() {
    use k8s_openapi::{
        api::{apps::v1::Deployment, networking::v1::NetworkPolicy},
        apimachinery::pkg::util::intstr::IntOrString,
    };
    let dir = rig::repo_root().join("envoy-config/gateway/kubernetes");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let kz: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("kustomization.yaml")).unwrap();
    assert!(
        kz["resources"]
            .as_sequence()
            .expect("resources")
            .iter()
            .any(|r| r.as_str() == Some("networkpolicy.yaml")),
        "the kustomization must apply networkpolicy.yaml"
    );
    let np: NetworkPolicy =
        serde_yaml_ng::from_str(&read("networkpolicy.yaml")).expect("a NetworkPolicy");
    let deploy: Deployment = serde_yaml_ng::from_str(&read("deployment.yaml")).expect("Deployment");
    let spec = np.spec.expect("spec");
    // It selects mulligan's pods.
    let pod_labels = deploy
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .expect("pod labels");
    let selector = spec.pod_selector.clone().and_then(|s| s.match_labels);
    for (k, v) in selector.expect("matchLabels") {
        assert_eq!(pod_labels.get(&k), Some(&v), "podSelector {k}");
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let rules = spec.ingress.expect("ingress rules");
    let port = |name: &str| IntOrString::String(name.to_string());
    for rule in &rules {
        let ports: Vec<_> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone().expect("port"))
            .collect();
        assert!(!ports.is_empty(), "a rule without ports opens every port");
        let peers = rule
            .from
            .as_ref()
            .expect("a rule without peers admits anyone");
        if ports.contains(&port("grpc")) {
            assert_eq!(ports, vec![port("grpc")], "ext_proc shares no rule");
            for peer in peers {
                let ns = peer.namespace_selector.as_ref().expect("namespace");
                let pods = peer.pod_selector.as_ref().expect("proxy pods only");
                let ns = ns.match_labels.as_ref().expect("labels");
                assert_eq!(ns["kubernetes.io/metadata.name"], "envoy-gateway-system");
                let pods = pods.match_labels.as_ref().expect("labels");
                assert_eq!(pods["app.kubernetes.io/component"], "proxy");
                assert_eq!(pods["app.kubernetes.io/managed-by"], "envoy-gateway");
                assert!(peer.ip_block.is_none());
            }
        } else {
            assert_eq!(ports, vec![port("admin")], "only admin besides ext_proc");
            assert!(peers.iter().all(|p| p.ip_block.is_none()));
        }
    }
    assert!(rules.iter().any(|r| r
        .ports
        .iter()
        .flatten()
        .any(|p| p.port == Some(port("grpc")))));
}
