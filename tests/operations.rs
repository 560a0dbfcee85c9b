//! The operations surface: admin HTTP, gRPC health, the lifecycle API, the
//! CLI contract and logs.

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
