//! Holding through real Envoy on the reference wiring: with no endpoint
//! that can serve, a failed request waits instead of failing, and arrives
//! whole once an endpoint can serve: one that appears, or becomes ready,
//! after the hold began, through each discovery source; held requests go
//! back to a pod that just became ready at `hold.release_per_endpoint`, not
//! all at once; a hold ends at its deadline with `Retry-After`, and none
//! begins when nothing can come back.
//!
//! Envoy must learn the endpoint too, and each test gives it the endpoint
//! the way production does for that source:
//! - static endpoints (`--endpoints`, `[endpoints]`): Envoy's own static
//!   list (`${APP_ENDPOINTS}`) names the same addresses from the start;
//!   only their readiness changes, which Envoy learns by trying them;
//! - Kubernetes: mulligan watches EndpointSlices itself, Envoy gets EDS
//!   from Envoy Gateway. Here an EDS file stands in for Envoy Gateway,
//!   written from the same slices by Envoy Gateway's rule (a pod that is
//!   not serving is not in EDS at all), and only after mulligan has seen
//!   the change: the control plane lags the API server. One test pushes
//!   EDS only once a request mulligan released early has come back to the
//!   hold, so that path is run every time.
//! - the EDS file source: mulligan and Envoy read one file.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::Method;
use rig::{
    arrivals::StampedPod,
    client::{self, HttpClient, Proto, Reply},
    eds::{gateway_health, EdsFile},
    envoy::Envoy,
    kube_api::{endpoint_slice, pending_pod, pod, service, KubeApi},
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
    render, Stack,
};

/// mulligan started with `toml` as its config file (plus `args`).
async fn mulligan_with(toml: &str, args: &[&str]) -> Mulligan {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mulligan.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut all = vec!["--config", path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    // mulligan has read the file by the time it announces its ports.
    Mulligan::start(&all).await
}

/// One request through `front`: a GET for even `i`, a POST with a body
/// for odd `i`, each with its own `x-harness-id`.
async fn request(front: SocketAddr, i: usize) -> (String, Reply) {
    let id = format!("held-{i}");
    let (method, path, body) = if i.is_multiple_of(2) {
        (Method::GET, "/", Vec::new())
    } else {
        (Method::POST, "/echo", payload(1000 + i))
    };
    let r = HttpClient::new(Proto::Http1)
        .send(
            method,
            front,
            path,
            &[("x-harness-id", id.as_str())],
            client::full(body),
        )
        .await
        .expect("request through Envoy");
    (id, r)
}

/// Sends `n` requests (see [`request`]) to `envoy` and waits until
/// mulligan holds all of them.
async fn held(
    m: &Mulligan,
    envoy: &Envoy,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(String, Reply)>> {
    let front = envoy.listener("mulligan").await;
    let tasks = (0..n).map(|i| tokio::spawn(request(front, i))).collect();
    rig::wait_held(m, envoy, n).await;
    tasks
}

/// Every held request ends 200 from `pod`, and `pod` ran each exactly once
/// (a POST's body arriving whole).
async fn served_once_by(pod: &Pod, tasks: Vec<tokio::task::JoinHandle<(String, Reply)>>) {
    let n = tasks.len();
    for t in tasks {
        let (id, r) = t.await.expect("request task");
        assert_eq!(r.status, 200, "{id}: {:?}", r.body);
        assert_eq!(
            r.headers.get("x-pod").map(|v| v.as_bytes()),
            Some(pod.name().as_bytes()),
            "{id}"
        );
    }
    let ran = pod.executions();
    assert_eq!(ran.len(), n, "{ran:?}");
    assert!(
        ran.values().all(|c| *c == 1),
        "a request ran twice: {ran:?}"
    );
    for s in pod.seen().iter().filter(|s| s.method == "POST") {
        let i: usize = s
            .header("x-harness-id")
            .and_then(|id| id.strip_prefix("held-"))
            .and_then(|i| i.parse().ok())
            .expect("id");
        assert_eq!(s.body.as_ref(), payload(1000 + i).as_slice(), "held-{i}");
    }
}

/// Static endpoints with a readiness probe: the configured pod is booting
/// (the probe says not ready), so a request is held; once the probe sees the
/// pod ready, the held requests are served by it. Envoy lists the pod from
/// the start (its static `${APP_ENDPOINTS}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_a_held_request_is_served_once_the_probe_sees_the_pod_ready() {
    let pod = Pod::start("booted", PodState::Booting).await;
    let m = mulligan_with(
        &format!(
            "[endpoints]\nstatic = [\"{}\"]\n[probe]\npath = \"/ready\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\n",
            pod.addr
        ),
        &[],
    )
    .await;
    m.until_endpoint_state(pod.addr, "not_ready").await;
    let envoy = Envoy::start(&render::tolerant(&[pod.addr], m.grpc.port(), &[])).await;
    let tasks = held(&m, &envoy, 2).await;
    assert_eq!(pod.rejected(), 2, "each first attempt met the booting pod");
    pod.set_state(PodState::Ready).await;
    served_once_by(&pod, tasks).await;
}

/// Static endpoints and the lifecycle API: the pod is known but not ready
/// (its probe failed; the probe's healthy threshold is out of reach, so only
/// the lifecycle call can bring it back), a request is held, and the pod's
/// hook calls `ready` (the admin HTTP API, then the `mulligan.v1.Lifecycle`
/// gRPC service): the held requests are served by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_a_held_request_is_served_once_the_lifecycle_api_says_ready() {
    for via in ["admin", "grpc"] {
        let pod = Pod::start(via, PodState::Booting).await;
        let list = pod.addr.to_string();
        let m = mulligan_with(
            "[probe]\npath = \"/ready\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1000000\n",
            &["--endpoints", &list, "--control-listen", "127.0.0.1:0"],
        )
        .await;
        m.until_endpoint_state(pod.addr, "not_ready").await;
        let envoy = Envoy::start(&render::tolerant(&[pod.addr], m.grpc.port(), &[])).await;
        let tasks = held(&m, &envoy, 2).await;
        pod.set_state(PodState::Ready).await;
        if via == "admin" {
            let r = client::post(m.admin, &format!("/v1/endpoints/{}/ready", pod.addr))
                .await
                .expect("lifecycle ready");
            assert!(r.status.is_success(), "{:?}", r.body);
        } else {
            use mulligan::proto::{lifecycle_client::LifecycleClient, EndpointRef};
            let control = m.control.expect("control port");
            let mut c = LifecycleClient::connect(format!("http://{control}"))
                .await
                .expect("control");
            c.mark_ready(EndpointRef {
                address: list.clone(),
                cluster: "app".into(),
            })
            .await
            .expect("mark_ready");
        }
        served_once_by(&pod, tasks).await;
    }
}

/// mulligan following Service `backend` (Envoy cluster `app`) through a
/// stand-in API server, and Envoy on EDS from the file that stands in for
/// Envoy Gateway.
struct Kube {
    api: KubeApi,
    eds: EdsFile,
    mulligan: Mulligan,
    envoy: Envoy,
    front: SocketAddr,
    /// Each pod's conditions (ready, serving, terminating), by slice name:
    /// loopback pods share 127.0.0.1, so each has a slice for its port.
    pods: BTreeMap<String, (SocketAddr, (bool, bool, bool))>,
}

impl Kube {
    async fn start() -> Kube {
        let api = KubeApi::start().await;
        api.apply("services", service("backend", "backend"));
        let mulligan = mulligan_with(
            &format!(
                "[kubernetes]\nenabled = true\nnamespace = \"default\"\napi_server = \"{}\"\n[[kubernetes.services]]\nname = \"backend\"\ncluster = \"app\"\n",
                api.url()
            ),
            &[],
        )
        .await;
        let eds = EdsFile::new("app");
        let envoy = Envoy::start(&eds.bootstrap(mulligan.grpc.port())).await;
        let front = envoy.listener("mulligan").await;
        Kube {
            api,
            eds,
            mulligan,
            envoy,
            front,
            pods: BTreeMap::new(),
        }
    }

    /// The pod at `addr` now has these EndpointSlice conditions: the API
    /// server says so, mulligan sees it (`state` in its registry), and then
    /// Envoy Gateway's EDS follows.
    async fn set(&mut self, name: &str, addr: SocketAddr, cond: (bool, bool, bool), state: &str) {
        self.tell_api(name, addr, cond, state).await;
        self.push_eds().await;
    }

    /// The API server's part of [`Kube::set`]: mulligan sees it, Envoy not
    /// yet.
    async fn tell_api(
        &mut self,
        name: &str,
        addr: SocketAddr,
        cond: (bool, bool, bool),
        state: &str,
    ) {
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
        self.pods.insert(name.to_string(), (addr, cond));
        self.mulligan.until_endpoint_state(addr, state).await;
    }

    /// The pod `name` at `addr` is gone: its EndpointSlice is deleted,
    /// mulligan forgets the endpoint, then EDS follows.
    async fn remove(&mut self, name: &str, addr: SocketAddr) {
        self.api
            .delete("endpointslices", &format!("backend-{name}"));
        self.pods.remove(name);
        self.mulligan.until_endpoint_state(addr, "").await;
        self.push_eds().await;
    }

    /// Waits until mulligan counts `n` pods of cluster `app` coming up.
    async fn until_coming_up(&self, n: usize) {
        self.mulligan
            .wait_metric(
                r#"mulligan_pods_coming_up{cluster="app"}"#,
                n as f64,
                rig::LOADED,
                "pods coming up",
            )
            .await;
    }

    /// Envoy Gateway's part: EDS for every pod's current conditions,
    /// returning once Envoy has applied it (a request sent next meets
    /// Envoy's new list, not the old one).
    async fn push_eds(&self) {
        let listed: Vec<_> = self
            .pods
            .values()
            .filter_map(|(a, (_, s, t))| gateway_health(*s, *t).map(|h| (*a, h)))
            .collect();
        const APPLIED: &str = "cluster.app.update_success";
        let before = self.envoy.stat(APPLIED).await;
        self.eds.write("app", &listed);
        self.envoy.until_stat_above(APPLIED, before).await;
    }
}

const BOOTING: (bool, bool, bool) = (false, false, false);
const READY: (bool, bool, bool) = (true, true, false);

/// Kubernetes: the Service's only pod is booting (in its EndpointSlice, not
/// ready; so not in Envoy's EDS at all: Envoy sends the request to the hold
/// endpoint). The pod becomes ready, and mulligan learns it before Envoy
/// does: Envoy Gateway's push comes only after mulligan has released a
/// held request, which met the hold endpoint again and was held again. The
/// held requests are then served by the pod, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_a_held_request_is_served_by_a_pod_that_becomes_ready() {
    const N: usize = 2;
    let mut k = Kube::start().await;
    let pod = Pod::start("booted", PodState::Booting).await;
    k.set("booted", pod.addr, BOOTING, "not_ready").await;
    let tasks = held(&k.mulligan, &k.envoy, N).await;
    pod.set_state(PodState::Ready).await;
    k.tell_api("booted", pod.addr, READY, "ready").await;
    // More releases than requests: one came back to the hold.
    k.mulligan
        .wait_metric_above(
            r#"mulligan_answers_total{answer="retry_after_hold"}"#,
            N as f64,
            rig::LOADED,
        )
        .await;
    k.push_eds().await;
    served_once_by(&pod, tasks).await;
}

/// Kubernetes: the Service's only pod is booting and stays so; a request is
/// held. A new pod appears, ready (a scale-up, or the rollout's next pod):
/// the held requests are served by it. Before holds read their cluster
/// afresh, they only ever saw the booting pod and ended with a 503 at the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_a_held_request_is_served_by_a_pod_that_appears_later() {
    let mut k = Kube::start().await;
    let stuck = Pod::start("stuck", PodState::Booting).await;
    k.set("stuck", stuck.addr, BOOTING, "not_ready").await;
    let tasks = held(&k.mulligan, &k.envoy, 2).await;
    let fresh = Pod::start("fresh", PodState::Ready).await;
    k.set("fresh", fresh.addr, READY, "ready").await;
    served_once_by(&fresh, tasks).await;
    assert_eq!(
        stuck.served() + stuck.rejected(),
        0,
        "the booting pod got a request"
    );
}

/// The cluster scaling up: the Service's only pod is gone (its
/// EndpointSlice deleted, EDS empty) and its replacement exists but is
/// Pending (no IP: scheduled, pulling its image), as in a scale from zero
/// or a Recreate rollout. No endpoint is known, but a pod is on its way, so
/// requests are held, not failed at once. The Pod then gets its IP (before
/// any EndpointSlice lists it, as in Kubernetes: it still counts as coming
/// up), is ready in its slice and then in EDS, and the held requests are
/// served by it, each once. (Were pods coming up not counted, the 503 would
/// come at once and no request would be held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_a_request_is_held_while_a_pending_pod_comes_up() {
    let mut k = Kube::start().await;
    let old = Pod::start("old", PodState::Ready).await;
    k.set("old", old.addr, READY, "ready").await;
    k.remove("old", old.addr).await;
    k.api.apply("pods", pending_pod("new", "backend"));
    k.until_coming_up(1).await;
    let tasks = held(&k.mulligan, &k.envoy, 2).await;
    let new = Pod::start("new", PodState::Ready).await;
    k.api
        .apply("pods", pod("new", "backend", "127.0.0.1", false));
    k.set("new", new.addr, READY, "ready").await;
    k.until_coming_up(0).await;
    served_once_by(&new, tasks).await;
    assert_eq!(
        old.served() + old.rejected(),
        0,
        "the gone pod got a request"
    );
    assert_eq!(k.mulligan.answers("nothing_coming").await, 0.0);
}

/// The converse: the only pod is gone and no pod is coming up (the one that
/// was Pending is deleted too: a scale to zero), so nothing is known and
/// nothing is on its way. The 503 comes with `Retry-After` at once: the
/// hold ends as "nothing coming", never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_with_no_pod_known_or_coming_up_the_503_is_not_held() {
    let mut k = Kube::start().await;
    let old = Pod::start("old", PodState::Ready).await;
    k.set("old", old.addr, READY, "ready").await;
    k.api.apply("pods", pending_pod("new", "backend"));
    k.until_coming_up(1).await;
    k.api.delete("pods", "new");
    k.until_coming_up(0).await;
    k.remove("old", old.addr).await;
    let (id, r) = request(k.front, 0).await;
    assert_eq!(r.status, 503, "{id}: {:?}", r.body);
    assert!(
        r.headers.contains_key("retry-after"),
        "{id}: {:?}",
        r.headers
    );
    assert!(k.mulligan.answers("nothing_coming").await >= 1.0);
    assert_eq!(k.mulligan.answers("held_too_long").await, 0.0);
    assert_eq!(
        old.served() + old.rejected(),
        0,
        "the gone pod got a request"
    );
}

/// Held requests go back to a pod that just became ready at
/// `hold.release_per_endpoint` per second, not all at once. With rate `r`
/// and one endpoint, release slots are `1/r` apart and none is before the
/// pod became ready, so the k-th request (from 0) to reach the pod arrives
/// at least `k/r` after that moment: by any time `t` after it, at most
/// `1 + t·r` have arrived. That is a lower bound a slow machine only makes
/// easier to meet; unpaced, every request arrives within a few
/// milliseconds of the first. Every held request is then served exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_released_at_the_configured_pace() {
    const N: usize = 6;
    const RATE: u32 = 4;
    let pod = StampedPod::start(false).await;
    let list = pod.addr.to_string();
    let m = mulligan_with(
        &format!("[probe]\npath = \"/ready\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1000000\n[hold]\nrelease_per_endpoint = {RATE}\n"),
        &["--endpoints", &list],
    )
    .await;
    m.until_endpoint_state(pod.addr, "not_ready").await;
    let envoy = Envoy::start(&render::tolerant(&[pod.addr], m.grpc.port(), &[])).await;
    let tasks = held(&m, &envoy, N).await;
    let became_ready = Instant::now();
    pod.set_ready(true);
    let r = client::post(m.admin, &format!("/v1/endpoints/{}/ready", pod.addr))
        .await
        .expect("lifecycle ready");
    assert!(r.status.is_success());
    for t in tasks {
        let (id, r) = t.await.expect("request task");
        assert_eq!(r.status, 200, "{id}: {:?}", r.body);
    }
    let arrivals = pod.arrivals();
    let mut ids: Vec<_> = arrivals.iter().map(|a| a.id.clone().expect("id")).collect();
    ids.sort();
    let want: Vec<_> = (0..N).map(|i| format!("held-{i}")).collect();
    assert_eq!(ids, want, "each held request reached the pod exactly once");
    for a in arrivals.iter().filter(|a| a.method == "POST") {
        let i: usize =
            a.id.as_deref()
                .and_then(|id| id.strip_prefix("held-"))
                .and_then(|i| i.parse().ok())
                .expect("id");
        assert_eq!(a.body.as_ref(), payload(1000 + i).as_slice());
    }
    let gap = Duration::from_secs(1) / RATE;
    let mut after: Vec<Duration> = arrivals
        .iter()
        .map(|a| a.at.duration_since(became_ready))
        .collect();
    after.sort();
    for (k, t) in after.iter().enumerate() {
        // 1 ms for the timer's rounding of each slot.
        let floor = (gap * k as u32).saturating_sub(Duration::from_millis(1));
        assert!(
            *t >= floor,
            "request {k} arrived {t:?} after the pod became ready, before its slot at {floor:?}: releases are not paced (all: {after:?})"
        );
    }
}

/// EDS for Envoy and mulligan alike, from one file (the hold endpoint in it
/// too, as an internal address mulligan skips).
fn eds_file(path: &std::path::Path, pods: &[SocketAddr]) {
    let lb: Vec<serde_json::Value> = pods
        .iter()
        .map(|a| serde_json::json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    let doc = serde_json::json!({
        "version_info": format!("{}", fastrand::u64(..)),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "app",
            "policy": {"overprovisioning_factor": 100000},
            "endpoints": [
                {"lb_endpoints": lb},
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "mulligan_hold"}}}}]},
            ],
        }],
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).expect("write eds");
    std::fs::rename(&tmp, path).expect("rename eds");
}

/// Nothing can serve: the only pod is gone. Held GETs and POSTs wait, and
/// arrive whole once it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_arrive_whole_once_a_pod_starts() {
    let stack = Stack::start(&[("a", PodState::Gone)], &[], &[]).await;
    let body = payload(30_000);
    let front = stack.front;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (method, path, b) = if i % 2 == 0 {
                (Method::GET, "/", Vec::new())
            } else {
                (Method::POST, "/echo", body)
            };
            HttpClient::new(Proto::Http1)
                .send(method, front, path, &[], client::full(b))
                .await
                .expect("request through Envoy")
        }));
    }
    stack.wait_held(4).await;
    stack.pod("a").set_state(PodState::Ready).await;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request");
        assert_eq!(r.status, 200, "{i}: {:?}", r.body);
        if i % 2 == 1 {
            assert_eq!(r.body, body, "the held POST's body arrived whole");
        }
    }
    let seen = stack.pod("a").seen();
    assert_eq!(seen.len(), 4);
    for s in seen.iter().filter(|s| s.method == "POST") {
        assert_eq!(s.body.as_ref(), body.as_slice());
        assert_eq!(s.header("content-length"), Some("30000"));
    }
}

/// Nothing comes back: a held request ends at `hold.max_hold` with the 503
/// and `Retry-After`, never later.
#[tokio::test]
async fn a_hold_that_finds_nothing_ends_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[hold]\nmax_hold = \"1s\"\n").expect("config");
    let stack = Stack::start(
        &[("a", PodState::Gone)],
        &["--config", cfg.to_str().expect("path")],
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let r = client::get(stack.front, "/").await.expect("GET");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // Well before the route's own timeout (15 s): the hold's deadline ended it.
    assert!(took < Duration::from_secs(10), "held for {took:?}");
    assert!(
        stack
            .mulligan
            .metric("mulligan_answers_total{answer=\"held_too_long\"}")
            .await
            >= 1.0
    );
}

/// A total outage does not make clients wait for nothing: with every
/// endpoint draining, no hold begins; the 503 comes at once, with
/// `Retry-After`, not at the hold's deadline.
#[tokio::test]
async fn with_nothing_coming_back_the_503_is_not_held() {
    let stack = Stack::start(&[("a", PodState::Draining)], &[], &[]).await;
    let addr = stack.pod("a").addr;
    let r = client::post(stack.mulligan.admin, &format!("/v1/endpoints/{addr}/drain"))
        .await
        .expect("lifecycle drain");
    assert!(r.status.is_success());
    let started = std::time::Instant::now();
    let r = client::get(stack.front, "/").await.expect("GET");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    // Well before the hold's deadline (10 s): no hold began.
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    assert!(
        stack
            .mulligan
            .metric("mulligan_answers_total{answer=\"nothing_coming\"}")
            .await
            >= 1.0
    );
}

/// A held request is served by an endpoint discovered after the hold began
/// (from an EDS file mulligan and Envoy both read), not only by the
/// endpoints known when it began.
#[tokio::test]
async fn a_held_request_is_served_by_an_endpoint_discovered_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eds = dir.path().join("eds").join("eds.json");
    std::fs::create_dir_all(eds.parent().expect("dir")).expect("eds dir");
    let gone = Pod::start("gone", PodState::Gone).await;
    eds_file(&eds, &[gone.addr]);
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[endpoints]\neds_file = {:?}\neds_file_poll = \"20ms\"\n",
            eds.display().to_string()
        ),
    )
    .expect("config");
    let mulligan = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let text = render::tolerant(&[], mulligan.grpc.port(), &[]);
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("bootstrap is YAML");
    let app = render::cluster(&mut v, "app");
    let obj = app.as_mapping_mut().expect("cluster");
    obj.remove("load_assignment");
    obj.insert("type".into(), serde_yaml_ng::Value::from("EDS"));
    obj.insert(
        "eds_cluster_config".into(),
        render::yaml(&format!(
            "{{eds_config: {{resource_api_version: V3, path_config_source: {{path: '{}', watched_directory: {{path: '{}'}}}}}}}}",
            eds.display(),
            eds.parent().expect("dir").display()
        )),
    );
    let mut bootstrap = v;
    bootstrap["node"] = render::yaml("{id: hold-test, cluster: hold-test}");
    let envoy = Envoy::start(&serde_yaml_ng::to_string(&bootstrap).expect("YAML")).await;
    let front = envoy.listener("mulligan").await;
    let held = tokio::spawn(async move { client::get(front, "/").await });
    rig::wait_held(&mulligan, &envoy, 1).await;
    let fresh = Pod::start("fresh", PodState::Ready).await;
    eds_file(&eds, &[fresh.addr]);
    let r = held.await.expect("task").expect("GET");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "hello from fresh\n");
}
