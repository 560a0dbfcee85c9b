//! What mulligan knows of a request's earlier attempts travels with the
//! request, in Envoy's dynamic metadata, not in the memory of the mulligan
//! process that judged them: through real Envoy, with the reference
//! bootstrap's `mulligan` cluster holding two mulligan processes, a retry
//! whose gate stream reaches the other process still knows what the
//! failed attempt did.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::Method;
use rig::{
    client::Reply,
    envoy::Envoy,
    executions, failing_pod,
    mulligan::{Mulligan, Mulligans},
    payload,
    pods::{Pod, PodState},
    render,
};
use serde_yaml_ng::Value;

/// Pods, mulligan processes behind one `mulligan` cluster, and Envoy on the
/// reference bootstrap, edited by `edit`.
struct Rig {
    pods: Vec<Arc<Pod>>,
    mulligans: Mulligans,
    envoy: Envoy,
    front: SocketAddr,
}

impl Rig {
    async fn start(
        pods: Vec<Arc<Pod>>,
        processes: usize,
        overrides: &[(&'static str, String)],
        edit: impl FnOnce(&mut Value),
    ) -> Rig {
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
        let list = rig::endpoint_list(&addrs);
        let mulligans = Mulligans::start(processes, &["--endpoints", &list]).await;
        let yaml = render::standalone(&addrs, mulligans[0].grpc.port(), overrides);
        let mut v: Value = serde_yaml_ng::from_str(&yaml).expect("bootstrap is YAML");
        render::cluster(&mut v, "mulligan")["load_assignment"]["endpoints"][0]["lb_endpoints"] =
            render::yaml(&render::lb_endpoints(&mulligans.grpc()));
        edit(&mut v);
        let envoy = Envoy::start(&serde_yaml_ng::to_string(&v).expect("YAML")).await;
        let front = envoy.listener("mulligan").await;
        Rig {
            pods,
            mulligans,
            envoy,
            front,
        }
    }

    /// `method` `path` with its own `id` ([`executions::send`]).
    async fn send(&self, method: Method, path: &str, id: &str) -> Reply {
        executions::send(self.front, &[], method, path, id).await
    }
}

/// A 503 trigger added to the route's retry policy by hand, as a user (or
/// Envoy Gateway's BackendTrafficPolicy) would.
fn retry_503(v: &mut Value) {
    let policy = &mut render::route(v)["route"]["retry_policy"];
    let on = policy["retry_on"].as_str().expect("retry_on").to_string();
    policy["retry_on"] = Value::from(format!("{on},retriable-status-codes"));
    policy["retriable_status_codes"] = render::yaml("[503]");
}

/// A pod that runs a POST and answers a plain 503 beside a ready pod, the
/// route retrying 503s on its own, two mulligan processes: the failed
/// attempt is judged by one, the retry's gate by either. No POST runs
/// twice (every POST the failing pod ran gets the gate's 503), and the
/// GETs (safe to run twice) still reach the ready pod.
#[tokio::test]
async fn a_retry_judged_by_another_mulligan_never_runs_a_post_twice() {
    let rig = Rig::start(failing_pod::pods().await, 2, &[], retry_503).await;
    failing_pod::run(rig.front, &[], &rig.pods, &rig.mulligans, &rig.envoy).await;
}

/// A GET (safe to run twice) that fails on the failing pod is retried to
/// the ready one, whichever process sees the retry: the state carried
/// with the request never stops a retry that is safe.
#[tokio::test]
async fn a_safe_retry_judged_by_another_mulligan_still_leaves() {
    let rig = Rig::start(failing_pod::pods().await, 2, &[], retry_503).await;
    for i in 0..20 {
        let r = rig.send(Method::GET, "/", &format!("get-{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {:?}", r.body);
    }
    assert!(
        !rig.pods[0].executions().is_empty(),
        "the failing pod was tried"
    );
    let stopped = rig.mulligans.answers("stopped").await;
    assert_eq!(stopped, 0.0, "a safe retry was stopped");
}

/// The hold budget a bootstrap (or a policy's `maxHold`) gives: Envoy's
/// `max_message_timeout` and mulligan's hold are one value.
const MAX_HOLD: Duration = Duration::from_secs(3);

/// The held-requests gauge reads `want` within 10 s.
async fn wait_held(m: &Mulligan, want: f64) {
    m.wait_metric(HELD, want, Duration::from_secs(10), "requests held")
        .await;
}

/// mulligan's gauge of requests held right now.
const HELD: &str = "mulligan_held";

/// A budget of 3 s (shorter than mulligan's own default of 10 s): a
/// request with nothing to serve it is held about 3 s, then gets its 503
/// with `Retry-After`; not at once, as when mulligan asked Envoy for more
/// time than Envoy granted.
#[tokio::test]
async fn a_shorter_budget_holds_for_that_long() {
    let pods = vec![Pod::start("a", PodState::Gone).await];
    let budget = [("MAX_HOLD", "3s".to_string())];
    let rig = Rig::start(pods, 1, &budget, |_| {}).await;
    let started = Instant::now();
    let r = rig.send(Method::GET, "/", "held").await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(
        took >= MAX_HOLD - Duration::from_millis(500) && took < MAX_HOLD + Duration::from_secs(5),
        "held {took:?}, the budget is {MAX_HOLD:?} (the default is 10 s)"
    );
    assert_eq!(rig.mulligans[0].answers("held_too_long").await, 1.0);
}

/// The same budget, and the pod becomes ready within it: the held request
/// is served.
#[tokio::test]
async fn a_shorter_budget_serves_a_request_once_a_pod_is_ready() {
    let pods = vec![Pod::start("a", PodState::Gone).await];
    let budget = [("MAX_HOLD", "3s".to_string())];
    let rig = Rig::start(pods, 1, &budget, |_| {}).await;
    let front = rig.front;
    let started = Instant::now();
    let held =
        tokio::spawn(
            async move { executions::send(front, &[], Method::POST, "/echo", "held").await },
        );
    wait_held(&rig.mulligans[0], 1.0).await;
    rig.pods[0].set_state(PodState::Ready).await;
    let r = held.await.expect("request");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, payload(100), "the held POST arrived whole");
    assert!(started.elapsed() < MAX_HOLD, "served within the budget");
    assert_eq!(rig.pods[0].executions().get("held"), Some(&1));
}

/// The third-failure rule counts every failed attempt of a request, each
/// judged by whichever process its stream reaches: three draining pods
/// (each answers 503 with the drain header) and one ready pod; a request
/// whose first three attempts meet the draining pods is held before its
/// fourth (Envoy's view lags), then served.
#[tokio::test]
async fn the_third_failure_is_counted_across_processes() {
    let mut pods = Vec::new();
    for name in ["a", "b", "c"] {
        let p = Pod::start(name, PodState::Draining).await;
        p.set_drain_header(true);
        pods.push(p);
    }
    pods.push(Pod::start("d", PodState::Ready).await);
    let rig = Rig::start(pods, 2, &[], |_| {}).await;
    for i in 0..16 {
        let r = rig.send(Method::GET, "/", &format!("get-{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {:?}", r.body);
    }
    let mut held = 0.0;
    for m in &rig.mulligans {
        assert!(m.streams().await > 0.0, "both processes judged attempts");
        held += m.answers("retry_after_hold").await;
    }
    assert!(held > 0.0, "no third failure was held");
}
