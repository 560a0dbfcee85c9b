//! The EnvoyPatchPolicy path with two mulligan processes behind the
//! `mulligan` cluster, on a translation whose route carries Envoy Gateway's
//! BackendTrafficPolicy retry on 503: a failed attempt is judged by one
//! process, the retry's gate by either, and still no POST runs twice.

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
/// [`CLUSTER`], as Envoy Gateway patches it: the shipped policy applied
/// after the BackendTrafficPolicy's translation.
fn with_backend_traffic_retry(pods: &[SocketAddr]) -> Translation {
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
    let errors = EnvoyGateway::apply(&patch_policy(), &mut t);
    assert!(
        errors.is_empty(),
        "Envoy Gateway would report:\n{errors:#?}"
    );
    t
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
/// endpoints) behind the `mulligan` cluster, and Envoy running the patched
/// translation.
struct Replicas {
    mulligans: Vec<Mulligan>,
    envoy: Envoy,
    front: SocketAddr,
    _config: tempfile::TempDir,
}

impl Replicas {
    async fn start(pods: &[SocketAddr], processes: usize) -> Replicas {
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
        let mut t = with_backend_traffic_retry(pods);
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

/// A pod that runs a POST and answers a plain 503 beside a ready pod. No
/// POST the failing pod ran runs again: each gets its 503, as with Envoy
/// alone and no retry policy; the GETs (safe to run twice) still reach the
/// ready pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_traffic_policy_retry_on_503_runs_no_post_twice_across_two_mulligans() {
    let pods = vec![
        Pod::start("failing", PodState::Failing).await,
        Pod::start("ready", PodState::Ready).await,
    ];
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2).await;
    let (mut stopped, mut served) = (0, 0);
    let n = 40;
    for i in 0..n {
        let r = gw.send(Method::POST, "/echo", &format!("post-{i}")).await;
        match r.status.as_u16() {
            503 => stopped += 1,
            200 => served += 1,
            s => panic!("POST {i}: status {s}: {:?}", r.body),
        }
    }
    for i in 0..20 {
        let r = gw.send(Method::GET, "/", &format!("get-{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {:?}", r.body);
    }
    let twice = executions::run_twice(&pods, "post-");
    let failing = executions::ran(&pods[0], "post-");
    let mut streams = Vec::new();
    let mut gate_stops = 0.0;
    for m in &gw.mulligans {
        streams.push(m.streams().await);
        gate_stops += m.answers("stopped").await;
    }
    eprintln!(
        "POSTs run by the failing pod: {failing} of {n}; run twice: {}; \
         503 {stopped}, 200 {served}; streams per mulligan: {streams:?}; \
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
        stopped, failing,
        "every POST the failing pod ran got its 503, no other did"
    );
}
