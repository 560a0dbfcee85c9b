//! The Extension Server's output with two mulligan processes behind the
//! `mulligan` cluster, and Envoy Gateway's BackendTrafficPolicy retry on
//! 503 on the route before the Extension Server wires it: a failed
//! attempt is judged by one process, the retry's gate by either, and still
//! no POST runs twice.

use serde_json::json;

use rig::failing_pod;

use super::{
    live::HOST,
    replicas::{backend_traffic_retry_on_503, Replicas},
};

/// A pod that runs a POST and answers a plain 503 beside a ready pod. No
/// POST the failing pod ran runs again: each gets its 503, as with Envoy
/// alone and no retry policy; the GETs (safe to run twice) still reach the
/// ready pod. The Extension Server replaced the route's retry policy, so
/// Envoy never retries a 503 on its own: the gate has nothing to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_traffic_policy_retry_on_503_runs_no_post_twice_across_two_mulligans() {
    let pods = failing_pod::pods().await;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2, json!({}), backend_traffic_retry_on_503).await;
    let out = failing_pod::run(gw.front, &HOST, &pods, &gw.mulligans, &gw.envoy).await;
    assert_eq!(
        out.gate_stops, 0.0,
        "Envoy retried a 503 on its own: the wiring left Envoy Gateway's retry trigger on the route"
    );
}
