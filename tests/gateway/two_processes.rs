//! The EnvoyPatchPolicy path with two mulligan processes behind the
//! `mulligan` cluster, on a translation whose route carries Envoy Gateway's
//! BackendTrafficPolicy retry on 503: a failed attempt is judged by one
//! process, the retry's gate by either, and still no POST runs twice;
//! with the whole policy applied because Envoy never retries such a 503,
//! and with its retry policy patch left out because the gate stops the
//! retries Envoy then makes on its own.

use std::net::SocketAddr;

use http::Method;
use rig::{
    client::{full, HttpClient, Proto, Reply},
    envoy::Envoy,
    executions,
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
};
use serde_json::{json, Value};

use super::{
    bootstrap, patch_policy, snake, EnvoyGateway, Translation, CLUSTER, CLUSTER_TYPE, HOST,
    LISTENER, MULLIGAN_TOML, ROUTE_TYPE,
};

/// Envoy Gateway's translation for `pods` with a BackendTrafficPolicy
/// `retry` on 503 ([`rig::backend_traffic`]) on every route to
/// [`CLUSTER`], then `policy` applied as Envoy Gateway applies it (after
/// the BackendTrafficPolicy's translation); and what Envoy Gateway would
/// report.
fn with_backend_traffic_retry(pods: &[SocketAddr], policy: &Value) -> (Translation, Vec<String>) {
    let mut t = Translation::egctl().with_pods(pods);
    let btp = snake(rig::backend_traffic::retry_on_503());
    let routes = t
        .find_mut(ROUTE_TYPE, LISTENER)
        .expect("route configuration");
    let mut edited = 0;
    for vhost in routes["virtual_hosts"].as_array_mut().into_iter().flatten() {
        for route in vhost["routes"].as_array_mut().into_iter().flatten() {
            if route["route"]["cluster"] == CLUSTER {
                route["route"]["retry_policy"] = btp.clone();
                edited += 1;
            }
        }
    }
    assert!(edited > 0, "no route forwards to {CLUSTER}");
    let errors = EnvoyGateway::apply(policy, &mut t);
    (t, errors)
}

/// The shipped policy with its retry policy patch naming a route cluster
/// Envoy Gateway does not make (a renamed route): Envoy Gateway reports
/// that patch and applies the others, and the route keeps Envoy Gateway's
/// retry policy.
fn without_the_retry_policy_patch() -> Value {
    let mut policy = patch_policy();
    let patch = policy["spec"]["jsonPatches"]
        .as_array_mut()
        .expect("patches")
        .iter_mut()
        .find(|p| p["operation"]["path"] == "/retry_policy")
        .expect("the retry policy patch");
    let json_path = patch["operation"]["jsonPath"]
        .as_str()
        .expect("jsonPath")
        .replace(CLUSTER, "httproute/default/renamed/rule/0");
    patch["operation"]["jsonPath"] = json!(json_path);
    policy
}

/// mulligan's message timeout widened to the rig's loaded-machine value:
/// a starved gate answers in time instead of failing open (what this test
/// observes is mulligan's answers, not its speed).
fn tolerant(bootstrap: &str) -> String {
    let shipped = "\"message_timeout\":\"0.200s\"";
    assert!(
        bootstrap.contains(shipped),
        "the wiring's message timeout moved"
    );
    let loaded = format!(
        "\"message_timeout\":\"{}\"",
        rig::render::LOADED_MESSAGE_TIMEOUT
    );
    bootstrap.replace(shipped, &loaded)
}

/// Pods, `processes` mulligans (each knowing the pods as [`CLUSTER`]'s
/// endpoints) behind the `mulligan` cluster, and Envoy running the
/// translation patched by `policy`.
struct Replicas {
    mulligans: Vec<Mulligan>,
    envoy: Envoy,
    front: SocketAddr,
    _config: tempfile::TempDir,
}

impl Replicas {
    /// Panics unless Envoy Gateway would report `reported` patches.
    async fn start(
        pods: &[SocketAddr],
        processes: usize,
        policy: &Value,
        reported: usize,
    ) -> Replicas {
        let config = tempfile::tempdir().expect("tempdir");
        let toml = config.path().join("mulligan.toml");
        std::fs::write(&toml, MULLIGAN_TOML).expect("write config");
        let list = rig::endpoint_list(pods);
        let args = [
            "--config",
            toml.to_str().expect("utf-8 path"),
            "--endpoints",
            &list,
            "--static-cluster",
            CLUSTER,
        ];
        let mut mulligans = Vec::new();
        for _ in 0..processes {
            mulligans.push(Mulligan::start(&args).await);
        }
        let (mut t, errors) = with_backend_traffic_retry(pods, policy);
        assert_eq!(
            errors.len(),
            reported,
            "Envoy Gateway would report:\n{errors:#?}"
        );
        let m = t
            .find_mut(CLUSTER_TYPE, "mulligan")
            .expect("mulligan cluster");
        m["type"] = json!("STATIC");
        let endpoints = &mut m["load_assignment"]["endpoints"][0]["lb_endpoints"];
        let template = endpoints[0].clone();
        *endpoints = Value::Array(
            mulligans
                .iter()
                .map(|p| {
                    let mut ep = template.clone();
                    ep["endpoint"]["address"] = json!({"socket_address": {
                        "address": "127.0.0.1", "port_value": p.grpc.port()}});
                    ep
                })
                .collect(),
        );
        let envoy = Envoy::start(&tolerant(&bootstrap(&t).to_string())).await;
        let front = envoy.listener(LISTENER).await;
        Replicas {
            mulligans,
            envoy,
            front,
            _config: config,
        }
    }

    async fn send(&self, method: Method, path: &str, id: &str) -> Reply {
        HttpClient::new(Proto::Http1)
            .send(
                method,
                self.front,
                path,
                &[HOST[0], ("x-harness-id", id)],
                full(payload(100)),
            )
            .await
            .expect("request through Envoy Gateway's listener")
    }
}

/// What 40 POSTs and 20 GETs did, behind a pod that runs each request and
/// answers a plain 503 (`pods[0]`) beside a ready pod.
struct Outcome {
    /// POSTs the failing pod ran.
    failing: usize,
    /// POSTs run more than once, over both pods.
    twice: Vec<(String, u32)>,
    /// POSTs answered 503.
    refused: usize,
    /// Retries mulligan's gate stopped, over both processes.
    gate_stops: f64,
}

async fn run(gw: &Replicas, pods: &[std::sync::Arc<Pod>]) -> Outcome {
    let (mut refused, mut served) = (0, 0);
    let n = 40;
    for i in 0..n {
        let r = gw.send(Method::POST, "/echo", &format!("post-{i}")).await;
        match r.status.as_u16() {
            503 => refused += 1,
            200 => served += 1,
            s => panic!("POST {i}: status {s}: {:?}", r.body),
        }
    }
    for i in 0..20 {
        let r = gw.send(Method::GET, "/", &format!("get-{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {:?}", r.body);
    }
    let twice = executions::run_twice(pods, "post-");
    let failing = executions::ran(&pods[0], "post-");
    let mut streams = Vec::new();
    let mut gate_stops = 0.0;
    for m in &gw.mulligans {
        streams.push(m.streams().await);
        gate_stops += m.answers("stopped").await;
    }
    eprintln!(
        "POSTs run by the failing pod: {failing} of {n}; run twice: {}; \
         503 {refused}, 200 {served}; streams per mulligan: {streams:?}; \
         gate stops: {gate_stops}",
        twice.len()
    );
    assert!(
        failing > 0,
        "no POST reached the failing pod: the test proves nothing"
    );
    assert!(
        streams.iter().all(|s| *s > 0.0),
        "every mulligan process judged some attempt: {streams:?}"
    );
    assert_eq!(
        twice,
        Vec::<(String, u32)>::new(),
        "POSTs run twice (of {failing} the failing pod ran)\n{}",
        gw.envoy.stats("retry").await
    );
    assert_eq!(
        refused, failing,
        "every POST the failing pod ran got its 503, no other did"
    );
    Outcome {
        failing,
        twice,
        refused,
        gate_stops,
    }
}

async fn failing_and_ready() -> Vec<std::sync::Arc<Pod>> {
    vec![
        Pod::start("failing", PodState::Failing).await,
        Pod::start("ready", PodState::Ready).await,
    ]
}

/// The shipped policy replaces the route's retry policy: Envoy never
/// retries a 503 on its own (the gate has nothing to stop), and no POST
/// runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_traffic_policy_retry_on_503_runs_no_post_twice_across_two_mulligans() {
    let pods = failing_and_ready().await;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2, &patch_policy(), 0).await;
    let out = run(&gw, &pods).await;
    assert!(out.twice.is_empty() && out.refused == out.failing);
    assert_eq!(
        out.gate_stops, 0.0,
        "Envoy retried a 503 on its own: the policy left Envoy Gateway's retry trigger on the route"
    );
}

/// Where the retry policy patch does not apply (reported; the others
/// did), the route keeps Envoy Gateway's 503 trigger and Envoy retries
/// every POST the failing pod ran: the gate stops each of those retries,
/// whichever process it reaches, from what the failed attempt's stream
/// left in the request's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_route_patch_not_applied_the_gate_stops_every_retry_of_a_post_that_ran() {
    let pods = failing_and_ready().await;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2, &without_the_retry_policy_patch(), 1).await;
    let out = run(&gw, &pods).await;
    assert_eq!(
        out.gate_stops, out.failing as f64,
        "every retry of a POST the failing pod ran reached the gate and was stopped"
    );
}
