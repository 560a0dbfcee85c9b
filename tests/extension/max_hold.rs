//! A MulliganPolicy's `maxHold` is the hold's one budget: the Extension
//! Server writes it into the wiring (Envoy's `max_message_timeout`, and the
//! value each stream tells mulligan), and a request with nothing to serve
//! it is held that long, through the Extension Server's output run live.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use rig::{
    payload,
    pods::{Pod, PodState},
};

use super::replicas::Replicas;

/// The policy's budget: shorter than mulligan's own default (10 s).
const MAX_HOLD: Duration = Duration::from_secs(3);

/// The spec that sets it.
fn budget() -> Value {
    json!({ "budget": { "maxHold": "3s" } })
}

/// The only pod is gone (nothing ready): the request is held about 3 s,
/// then gets its 503 with `Retry-After`; not at once (mulligan asking Envoy
/// for more time than the policy's `max_message_timeout`, which Envoy
/// refuses), nor after mulligan's default 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_max_hold_of_3s_holds_a_request_about_3s() {
    let only = Pod::start("only", PodState::Gone).await;
    let gw = Replicas::start(&[only.addr], 1, budget(), |_| {}).await;
    let started = Instant::now();
    let r = gw.send(Method::GET, "/", "held").await;
    let took = started.elapsed();
    eprintln!("held {took:?}, then {}", r.status);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(
        took >= MAX_HOLD - Duration::from_millis(500) && took < MAX_HOLD + Duration::from_secs(3),
        "held {took:?}, the policy's budget is {MAX_HOLD:?} (mulligan's default is 10 s)\n{}",
        gw.envoy.stats("ext_proc").await
    );
    assert_eq!(gw.mulligans.answers("held_too_long").await, 1.0);
}

/// The same budget, and the pod becomes ready about 1 s into the hold: the
/// held POST is served, whole and once, within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_max_hold_of_3s_serves_a_request_once_a_pod_is_ready() {
    let only = Pod::start("only", PodState::Gone).await;
    let gw = Replicas::start(&[only.addr], 1, budget(), |_| {}).await;
    let started = Instant::now();
    let held = {
        let gw = &gw;
        let request = gw.send(Method::POST, "/echo", "held");
        let ready = async {
            gw.mulligans[0]
                .wait_metric("mulligan_held", 1.0, rig::LOADED, "the request held")
                .await;
            // The pod's readiness at a chosen point of the hold (the
            // scenario's timing, not a wait for a signal).
            tokio::time::sleep_until((started + Duration::from_secs(1)).into()).await;
            only.set_state(PodState::Ready).await;
        };
        tokio::join!(request, ready).0
    };
    let took = started.elapsed();
    eprintln!("served after {took:?}");
    assert_eq!(held.status, 200, "{:?}", held.body);
    assert_eq!(held.body, payload(100), "the held POST arrived whole");
    assert_eq!(only.executions().get("held"), Some(&1));
    assert!(
        took >= Duration::from_secs(1) && took < MAX_HOLD,
        "served after {took:?}: held until the pod was ready, within {MAX_HOLD:?}"
    );
    assert!(gw.mulligans.answers("retry_after_hold").await >= 1.0);
}
