//! The EnvoyPatchPolicy path with two mulligan processes behind the
//! `mulligan` cluster, on a translation whose route carries Envoy Gateway's
//! BackendTrafficPolicy retry on 503: a failed attempt is judged by one
//! process, the retry's gate by either, and still no POST runs twice;
//! with the whole policy applied because Envoy never retries such a 503,
//! and with its retry policy patch left out because the gate stops the
//! retries Envoy then makes on its own.

use std::net::SocketAddr;

use rig::{envoy::Envoy, failing_pod, mulligan::Mulligans};
use serde_json::{json, Value};

use super::{
    bootstrap, patch_policy, snake, EnvoyGateway, Translation, CLUSTER, CLUSTER_TYPE, HOST,
    LISTENER, ROUTE_TYPE,
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

/// Pods, `processes` mulligans (each knowing the pods as [`CLUSTER`]'s
/// endpoints) behind the `mulligan` cluster, and Envoy running the
/// translation patched by `policy`.
struct Replicas {
    mulligans: Mulligans,
    envoy: Envoy,
    front: SocketAddr,
}

impl Replicas {
    /// Panics unless Envoy Gateway would report `reported` patches.
    async fn start(
        pods: &[SocketAddr],
        processes: usize,
        policy: &Value,
        reported: usize,
    ) -> Replicas {
        let mulligans = Mulligans::beside_gateway(processes, pods, CLUSTER).await;
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
                .grpc()
                .iter()
                .map(|grpc| {
                    let mut ep = template.clone();
                    ep["endpoint"]["address"] = json!({"socket_address": {
                        "address": grpc.ip().to_string(), "port_value": grpc.port()}});
                    ep
                })
                .collect(),
        );
        let envoy = Envoy::start(&rig::render::tolerant_json(&bootstrap(&t).to_string())).await;
        let front = envoy.listener(LISTENER).await;
        Replicas {
            mulligans,
            envoy,
            front,
        }
    }
}

/// The POSTs and GETs of [`failing_pod::run`] through two mulligans
/// ([`Replicas`]) and the translation patched by `policy`, of which Envoy
/// Gateway reports `reported` patches.
async fn two_mulligans_behind_a_failing_pod(
    policy: &Value,
    reported: usize,
) -> failing_pod::Outcome {
    let pods = failing_pod::pods().await;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2, policy, reported).await;
    failing_pod::run(gw.front, &HOST, &pods, &gw.mulligans, &gw.envoy).await
}

/// The shipped policy replaces the route's retry policy: Envoy never
/// retries a 503 on its own (the gate has nothing to stop), and no POST
/// runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_traffic_policy_retry_on_503_runs_no_post_twice_across_two_mulligans() {
    let out = two_mulligans_behind_a_failing_pod(&patch_policy(), 0).await;
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
    let out = two_mulligans_behind_a_failing_pod(&without_the_retry_policy_patch(), 1).await;
    assert_eq!(
        out.gate_stops, out.failing as f64,
        "every retry of a POST the failing pod ran reached the gate and was stopped"
    );
}
