//! The Extension Server's output with two mulligan processes behind the
//! `mulligan` cluster, and Envoy Gateway's BackendTrafficPolicy retry on
//! 503 on the route before the Extension Server wires it: a failed
//! attempt is judged by one process, the retry's gate by either, and still
//! no POST runs twice.

use http::Method;
use serde_json::json;

use rig::{
    executions,
    pods::{Pod, PodState},
};

use super::replicas::{backend_traffic_retry_on_503, Replicas};

/// A pod that runs a POST and answers a plain 503 beside a ready pod. No
/// POST the failing pod ran runs again: each gets its 503, as with Envoy
/// alone and no retry policy; the GETs (safe to run twice) still reach the
/// ready pod. The Extension Server replaced the route's retry policy, so
/// Envoy never retries a 503 on its own: the gate has nothing to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_traffic_policy_retry_on_503_runs_no_post_twice_across_two_mulligans() {
    let pods = vec![
        Pod::start("failing", PodState::Failing).await,
        Pod::start("ready", PodState::Ready).await,
    ];
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let gw = Replicas::start(&addrs, 2, json!({}), backend_traffic_retry_on_503).await;
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
    let streams = gw.streams().await;
    let gate_stops = gw.answers("stopped").await;
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
    assert_eq!(
        gate_stops, 0.0,
        "Envoy retried a 503 on its own: the wiring left Envoy Gateway's retry trigger on the route"
    );
}
