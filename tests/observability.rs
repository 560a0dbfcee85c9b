//! What an operator watches (envoy-config/observability/), checked against
//! real parts: a real Prometheus (Debian's `prometheus`, `make prometheus`)
//! scrapes mulligan, its Extension Server and real Envoy on the reference
//! wiring while a rollout runs through them (a pod drains and goes, the
//! last one drains while a new one boots, the new one becomes ready), with
//! Kubernetes discovery against the rig's API server and EDS as Envoy
//! Gateway would push it. Then every query of the Grafana dashboard must
//! return data, the ones the rollout must move must show it, and every
//! alerting rule must load and evaluate without error.
//!
//! A missing Prometheus fails this test: it never skips.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::Method;
use mulligan::extension::api::{envoy_gateway_extension_client::EnvoyGatewayExtensionClient, raw};
use rig::{
    client::{self, HttpClient, Proto},
    eds::{gateway_health, EdsFile},
    envoy::Envoy,
    kube_api::{endpoint_slice, pending_pod, pod, service, KubeApi},
    mulligan::Mulligan,
    pods::{Pod, PodState},
};
use serde_json::Value;
use tokio::process::{Child, Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Query-string encoding of a PromQL expression.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scraping `targets` (job, address, metrics path) every
/// second and evaluating the shipped alerting rules.
struct Prometheus {
    _child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[(&str, SocketAddr, &str)], rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs: String = targets
            .iter()
            .map(|(job, addr, path)| {
                format!(
                    "- job_name: {job}\n  metrics_path: {path}\n  static_configs:\n  - targets: ['{addr}']\n"
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\nscrape_configs:\n{jobs}",
            rules.display()
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let addr = free_port();
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} is needed (Debian's prometheus package: `make prometheus`): {e}")
            });
        let p = Prometheus {
            _child: child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client::get(addr, "/-/ready").await;
            if ready.as_ref().is_ok_and(|r| r.status == 200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus at {addr} not ready within 60 s: {:?}",
                ready.map(|r| r.status)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str) -> Value {
        let r = client::get(self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "Prometheus {path}: {e}: {}",
                String::from_utf8_lossy(&r.body)
            )
        })
    }

    /// The result vector of an instant query; panics on a query error.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let v = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The largest sample of an instant query (0 with no data).
    async fn value(&self, expr: &str) -> f64 {
        self.query(expr)
            .await
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    }

    /// Waits until `expr` is above zero; when it gives up, says what
    /// mulligan had answered by then.
    async fn until_positive(&self, expr: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.value(expr).await;
            if v > 0.0 {
                return;
            }
            if Instant::now() >= deadline {
                let answers = self
                    .query("sum by (answer) (mulligan_answers_total) > 0")
                    .await;
                let decisions = self
                    .query("sum by (cause, decision) (mulligan_decisions_total) > 0")
                    .await;
                panic!(
                    "{expr} still {v} after {limit:?}; mulligan's answers: {answers:?}; decisions: {decisions:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Every `expr` in the dashboard (panels, rows' panels), with its panel's
/// title, as Grafana sends it: its variables at their defaults, and
/// `$__rate_interval` at four times the scrape interval (here 1 s) or more.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("envoy-config/observability/mulligan-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut vars = vec![("$__rate_interval".to_string(), "1m".to_string())];
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (v["name"].as_str(), v["current"]["value"].as_str()) {
            vars.push((format!("${name}"), value.to_string()));
        }
    }
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for (_, expr) in &mut out {
        for (name, value) in &vars {
            *expr = expr.replace(name.as_str(), value);
        }
        assert!(
            !expr.contains('$'),
            "a dashboard variable without a default in {expr}"
        );
    }
    out
}

/// Kubernetes as the rig fakes it, and Envoy Gateway's EDS for it.
struct Cluster {
    api: KubeApi,
    eds: EdsFile,
    /// (name, address, (ready, serving, terminating)) of every listed pod.
    pods: Vec<(String, SocketAddr, (bool, bool, bool))>,
}

const READY: (bool, bool, bool) = (true, true, false);
const DRAINING: (bool, bool, bool) = (false, true, true);

impl Cluster {
    /// The API server (so mulligan) and then Envoy Gateway's EDS learn it.
    fn set(&mut self, name: &str, addr: SocketAddr, cond: (bool, bool, bool)) {
        self.tell_api(name, addr, cond);
        self.push_eds();
    }

    /// Only the API server learns it: Envoy's EDS lags, as Envoy Gateway's
    /// push does in a real cluster, so the pod's own answers reach Envoy.
    fn tell_api(&mut self, name: &str, addr: SocketAddr, cond: (bool, bool, bool)) {
        let (ready, serving, terminating) = cond;
        self.api.apply(
            "endpointslices",
            endpoint_slice(
                "backend",
                &format!("backend-{name}"),
                addr.port(),
                &[("127.0.0.1", ready, serving, terminating)],
            ),
        );
        self.pods.retain(|(n, _, _)| n != name);
        self.pods.push((name.to_string(), addr, cond));
    }

    fn remove(&mut self, name: &str) {
        self.api
            .delete("endpointslices", &format!("backend-{name}"));
        self.pods.retain(|(n, _, _)| n != name);
        self.push_eds();
    }

    fn push_eds(&self) {
        let listed: Vec<_> = self
            .pods
            .iter()
            .filter_map(|(_, a, (_, s, t))| gateway_health(*s, *t).map(|h| (*a, h)))
            .collect();
        self.eds.write("app", &listed);
    }
}

/// Requests through `front` until `stop`: GETs and POSTs, two at a time.
fn load(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|lane| {
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                let http = HttpClient::new(Proto::Http1);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (method, path, body) = if (i + lane).is_multiple_of(2) {
                        (Method::GET, "/", Vec::new())
                    } else {
                        (Method::POST, "/echo", vec![b'x'; 512])
                    };
                    let _ = http
                        .send(method, front, path, &[], client::full(body))
                        .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_during_a_rollout_and_every_rule_evaluates() {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "only {} queries in the dashboard",
        queries.len()
    );

    let api = KubeApi::start().await;
    api.apply("services", service("backend", "backend"));
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("mulligan.toml");
    std::fs::write(
        &toml,
        format!(
            "[kubernetes]\nenabled = true\nnamespace = \"default\"\napi_server = \"{}\"\n[[kubernetes.services]]\nname = \"backend\"\ncluster = \"app\"\n",
            api.url()
        ),
    )
    .expect("write config");
    let mulligan = Mulligan::spawn(&[
        "serve",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--config",
        toml.to_str().expect("utf-8 path"),
    ])
    .await;
    let eds = EdsFile::new("app");
    let envoy = Envoy::start(&eds.bootstrap(mulligan.grpc.port())).await;
    let front = envoy.listener("mulligan").await;
    let mut k8s = Cluster {
        api,
        eds,
        pods: Vec::new(),
    };

    // The Extension Server, called once as Envoy Gateway would.
    let (_extension, line) = rig::mulligan::spawn_announced(&[
        "extension-server",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .await;
    let ext_admin = line.addr("admin");
    EnvoyGatewayExtensionClient::connect(format!("http://{}", line.addr("extension")))
        .await
        .expect("connect to the Extension Server")
        .post_translate_modify(raw::PostTranslateModifyRequest::default())
        .await
        .expect("PostTranslateModify");

    let rules = repo().join("envoy-config/observability/mulligan-alerts.yaml");
    let prom = Prometheus::start(
        &[
            ("mulligan", mulligan.admin, "/metrics"),
            ("mulligan-extension", ext_admin, "/metrics"),
            ("envoy", envoy.admin, "/stats/prometheus"),
        ],
        &rules,
    )
    .await;
    for job in ["mulligan", "mulligan-extension", "envoy"] {
        prom.until_positive(&format!("up{{job=\"{job}\"}}"), Duration::from_secs(30))
            .await;
    }

    // The rollout, under load.
    let a = Pod::start("a", PodState::Ready).await;
    let b = Pod::start("b", PodState::Ready).await;
    k8s.set("a", a.addr, READY);
    k8s.set("b", b.addr, READY);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let lanes = load(front, stop.clone(), sent.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // a breaks for a moment: plain 503s, the app's own answer, which
    // mulligan lets stand (retry.retry_plain_503 is off): clients see them.
    a.set_state(PodState::Failing).await;
    prom.until_positive(
        "sum(mulligan_answers_total{answer=\"stand\"})",
        Duration::from_secs(30),
    )
    .await;
    a.set_state(PodState::Ready).await;

    // a drains (preStop): 503 + close; mulligan sees it terminating first.
    a.set_state(PodState::Draining).await;
    k8s.tell_api("a", a.addr, DRAINING);
    prom.until_positive(
        "sum(mulligan_answers_total{answer=\"retry\"})",
        Duration::from_secs(30),
    )
    .await;
    k8s.push_eds();
    a.set_state(PodState::Gone).await;
    k8s.remove("a");

    // b drains while its replacement c is still Pending: requests wait.
    k8s.api.apply("pods", pending_pod("c", "backend"));
    mulligan
        .wait_metric(
            "mulligan_pods_coming_up{cluster=\"app\"}",
            1.0,
            Duration::from_secs(10),
            "pod c coming up",
        )
        .await;
    b.set_state(PodState::Draining).await;
    k8s.tell_api("b", b.addr, DRAINING);
    mulligan
        .wait_metric_above("mulligan_held", 0.0, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Its EndpointSlice before its Pod's address: the rig's pods all share
    // 127.0.0.1, so a running Pod whose address b's endpoint already has
    // would stop counting as coming up before c is listed.
    let c = Pod::start("c", PodState::Ready).await;
    k8s.set("c", c.addr, READY);
    k8s.api
        .apply("pods", pod("c", "backend", "127.0.0.1", false));
    prom.until_positive(
        "sum(mulligan_answers_total{answer=\"retry_after_hold\"})",
        Duration::from_secs(30),
    )
    .await;
    b.set_state(PodState::Gone).await;
    k8s.remove("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        l.await.expect("load lane");
    }
    // One more scrape after the load stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sent.load(Ordering::Relaxed) > 50,
        "the load sent too little"
    );

    let mut empty = Vec::new();
    for (title, expr) in &queries {
        if prom.query(expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    if !empty.is_empty() {
        let names = prom.api("/api/v1/label/__name__/values").await;
        panic!(
            "dashboard queries with no data:\n  {}\nmetric names Prometheus has: {names}",
            empty.join("\n  ")
        );
    }

    // What the rollout must have moved. Counters, not their increase: a
    // counter Envoy creates at its first event (upstream_rq_503) may have
    // its whole count in its first sample.
    for (what, expr) in [
        ("mulligan's retries", "sum(mulligan_answers_total{answer=~\"retry|retry_after_hold\"})"),
        ("held requests", "max_over_time(sum(mulligan_held)[5m:1s])"),
        ("hold durations", "sum(mulligan_hold_duration_seconds_count)"),
        ("Envoy's retries", "sum(envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"app\"})"),
        ("upstream 503s", "sum(envoy_cluster_upstream_rq{envoy_cluster_name=\"app\",envoy_response_code=\"503\"})"),
        ("failures clients saw", "sum(mulligan_answers_total{answer=\"stand\"})"),
        ("ext_proc streams", "sum(mulligan_ext_proc_streams_total)"),
        ("Envoy's ext_proc streams", "sum({__name__=~\"envoy_cluster_.*ext_proc_streams_started\"})"),
        ("EDS updates", "sum(envoy_cluster_update_success{envoy_cluster_name=\"app\"})"),
        ("pods coming up", "max_over_time(sum(mulligan_pods_coming_up)[5m:1s])"),
        ("Extension Server calls", "sum(mulligan_extension_hooks_total)"),
    ] {
        let v = prom.value(expr).await;
        assert!(v > 0.0, "{what}: {expr} = {v} after the rollout");
    }

    // Every alerting rule loaded and evaluates cleanly.
    let shipped: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&rules).expect("rules"))
        .expect("rules are YAML");
    let want: usize = shipped["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    let loaded = prom.api("/api/v1/rules").await;
    let rules: Vec<&Value> = loaded["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), want, "rules Prometheus loaded: {loaded}");
    for r in rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {r}",
            r["name"]
        );
    }
}
