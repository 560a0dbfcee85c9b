//! Rescue through real Envoy (no Envoy retries configured): the 503s of
//! draining, gone and not-yet-ready pods never reach the client, no request
//! is executed twice unsafely, and every bound holds.

use std::time::{Duration, Instant};

use http::Method;
use rig::{
    client::{self, HttpClient, Proto},
    mulligan::parse_metric,
    payload,
    pods::PodState,
    Stack,
};

/// Sends `n` requests from `workers` concurrent clients; returns (status, body-ok).
async fn load(
    stack: &Stack,
    n: usize,
    workers: usize,
    method: Method,
    body: Vec<u8>,
    chunked: bool,
) -> Vec<(u16, bool)> {
    let front = stack.front;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (method, body) = (method.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let http = HttpClient::new(Proto::Http1);
            let mut out = Vec::new();
            for _ in (w..n).step_by(workers) {
                let req_body = if chunked {
                    client::chunked(body.clone(), 512)
                } else {
                    client::full(body.clone())
                };
                let path = if method == Method::POST { "/echo" } else { "/" };
                let r = http
                    .send(method.clone(), front, path, &[], req_body)
                    .await
                    .expect("request through Envoy");
                let ok = if method == Method::POST {
                    r.body == body
                } else {
                    r.body.starts_with(b"hello from ")
                };
                out.push((r.status.as_u16(), ok));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

fn count(results: &[(u16, bool)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_and_gone_pods_cost_no_client_request() {
    // Two of three pods broken and Envoy unaware: two replays per three
    // requests, far over the default budget (20% + 10/s), which has a test of
    // its own below. Here the budget is opened to test rescue itself.
    let stack = Stack::with_config(
        &[
            ("ready", PodState::Ready),
            ("draining", PodState::Draining),
            ("gone", PodState::Gone),
        ],
        "[budget]\nratio = 1.0\n",
        &[],
    )
    .await;
    let gets = load(&stack, 1000, 4, Method::GET, vec![], false).await;
    let posts = load(&stack, 100, 4, Method::POST, payload(1000), false).await;
    let chunked = load(&stack, 100, 4, Method::POST, payload(3000), true).await;
    for (label, r) in [("GET", &gets), ("POST", &posts), ("chunked POST", &chunked)] {
        let bad: Vec<_> = r.iter().filter(|(s, ok)| *s != 200 || !ok).collect();
        assert!(
            bad.is_empty(),
            "{label}: {} of {} failed: {:?}",
            bad.len(),
            r.len(),
            &bad[..bad.len().min(5)]
        );
    }
    // Every request was executed exactly once, and only by the ready pod.
    assert_eq!(stack.served(), 1200);
    assert_eq!(stack.pod("ready").served(), 1200);
    assert_eq!(stack.pod("draining").served(), 0);

    let m = stack.mulligan.metrics().await;
    let metric = |s: &str| parse_metric(&m, s);
    let rescued = metric(r#"mulligan_rescues_total{outcome="rescued"}"#);
    assert!(rescued >= 1.0, "{m}");
    // The draining pod's 503s and the gone pod's refusals were both seen.
    assert!(
        metric(r#"mulligan_decisions_total{cause="upstream_rejected",decision="rescue"}"#) >= 1.0,
        "{m}"
    );
    assert!(
        metric(r#"mulligan_decisions_total{cause="connect_failure",decision="rescue"}"#) >= 1.0,
        "{m}"
    );
    // Envoy never fell back to failure_mode_allow.
    assert_eq!(stack.ext_proc_stat("failure_mode_allowed").await, 0);
    assert_eq!(stack.ext_proc_stat("message_timeouts").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_can_speak_http2() {
    let stack = Stack::with_config(
        &[("ready", PodState::Ready), ("gone", PodState::Gone)],
        "[rescue]\nreplay_http2 = true\n[budget]\nratio = 1.0\n",
        &[],
    )
    .await;
    let r = load(&stack, 20, 1, Method::POST, payload(2000), false).await;
    assert_eq!(count(&r, 200), 20);
    assert!(r.iter().all(|(_, ok)| *ok));
    let rescued = stack
        .mulligan
        .metric(r#"mulligan_rescues_total{outcome="rescued"}"#)
        .await;
    assert!(
        rescued >= 5.0,
        "round robin sends half to the gone pod: {rescued}"
    );
    assert_eq!(
        stack.pod("ready").http2_requests() as f64,
        rescued,
        "every replay, and only replays, arrived over HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_app_may_have_processed_is_not_replayed() {
    let stack = Stack::start(
        &[("ready", PodState::Ready), ("draining", PodState::Draining)],
        &[],
        &[],
    )
    .await;
    // This draining pod does not say it rejected without processing.
    stack.pod("draining").set_drain_header(false);
    let posts = load(&stack, 40, 2, Method::POST, payload(100), false).await;
    let gets = load(&stack, 40, 2, Method::GET, vec![], false).await;
    assert!(
        count(&posts, 503) > 0,
        "some POSTs must land on the draining pod and stay 503"
    );
    assert_eq!(count(&posts, 503) + count(&posts, 200), 40);
    assert_eq!(count(&gets, 200), 40, "GETs are idempotent: all rescued");

    // With an Idempotency-Key, the same POST is safe to replay.
    let http = HttpClient::new(Proto::Http1);
    for i in 0..20 {
        let key = format!("key-{i}");
        let r = http
            .send(
                Method::POST,
                stack.front,
                "/echo",
                &[("idempotency-key", key.as_str())],
                client::full(payload(100)),
            )
            .await
            .expect("keyed POST");
        assert_eq!(r.status, 200);
    }
    let unsafe_posts = stack
        .mulligan
        .metric(r#"mulligan_decisions_total{cause="upstream_draining",decision="unsafe"}"#)
        .await;
    assert_eq!(unsafe_posts as usize, count(&posts, 503));
}

/// Waits until mulligan reports `n` held requests; if they never are, says
/// whether Envoy gave up on mulligan (its message timeout) or mulligan let
/// the 503s through, and why.
async fn until_held(stack: &Stack, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.mulligan.metric("mulligan_rescue_held").await < n {
        if Instant::now() >= deadline {
            let outcomes: Vec<String> = stack
                .mulligan
                .metrics()
                .await
                .lines()
                .filter(|l| l.starts_with("mulligan_rescues_total"))
                .map(str::to_string)
                .collect();
            panic!(
                "requests were not held: Envoy message timeouts {}, fallbacks {}; {outcomes:?}",
                stack.ext_proc_stat("message_timeouts").await,
                stack.ext_proc_stat("failure_mode_allowed").await,
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_go_out_when_a_pod_comes_up() {
    let stack = Stack::start(&[("a", PodState::Gone), ("b", PodState::Gone)], &[], &[]).await;
    let front = stack.front;
    let started = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { (client::get(front, "/").await, Instant::now()) }))
        .collect();
    until_held(&stack, 5.0).await;
    // Pod a boots 2 s after the requests started, and its postStart hook
    // tells mulligan.
    tokio::time::sleep_until((started + Duration::from_secs(2)).into()).await;
    stack.pod("a").set_state(PodState::Ready).await;
    let r = client::post(
        stack.mulligan.admin,
        &format!("/v1/endpoints/{}/ready", stack.pod("a").addr),
    )
    .await
    .expect("lifecycle ready");
    assert_eq!(r.status, 200);
    let ready_at = Instant::now();
    let mut worst = Duration::ZERO;
    for t in requests {
        let (reply, done) = t.await.expect("task");
        let reply = reply.expect("held request");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "hello from a\n");
        worst = worst.max(done.saturating_duration_since(ready_at));
    }
    println!("held requests answered at most {worst:?} after the pod was marked ready");
    assert!(
        worst < Duration::from_millis(100),
        "took {worst:?} after readiness"
    );
    assert_eq!(stack.mulligan.metric("mulligan_rescue_held").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_success_wakes_held_requests() {
    let stack = Stack::with_config(
        &[("a", PodState::Gone), ("b", PodState::Gone)],
        "[probe]\npath = \"/ready\"\ninterval = \"50ms\"\ntimeout = \"100ms\"\n",
        &[],
    )
    .await;
    let front = stack.front;
    let held = tokio::spawn(async move { client::get(front, "/").await });
    until_held(&stack, 1.0).await;
    stack.pod("b").set_state(PodState::Ready).await;
    let ready_at = Instant::now();
    let r = held.await.expect("task").expect("held request");
    let after = ready_at.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from b\n");
    println!("probe-woken request answered {after:?} after the pod came up");
    // One probe interval (50 ms) plus the replay.
    assert!(after < Duration::from_millis(500), "took {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_comes_up_503_with_retry_after_at_the_deadline() {
    let stack = Stack::with_config(
        &[("a", PodState::Gone)],
        "[rescue]\ndeadline = \"1s\"\nretry_after_seconds = 3\n",
        &[],
    )
    .await;
    let started = Instant::now();
    let r = client::get(stack.front, "/").await.expect("request");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "3");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}, deadline 1 s"
    );
    assert_eq!(
        stack
            .mulligan
            .metric(r#"mulligan_rescues_total{outcome="held_too_long"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_budget_lets_the_503_through_and_counts_it() {
    let stack = Stack::with_config(
        &[("ready", PodState::Ready), ("gone", PodState::Gone)],
        "[budget]\nratio = 0.0\nmin_per_second = 0\n",
        &[],
    )
    .await;
    let r = load(&stack, 20, 1, Method::GET, vec![], false).await;
    let failed = count(&r, 503);
    assert!(
        failed > 0,
        "round robin must send some requests to the gone pod"
    );
    assert_eq!(failed + count(&r, 200), 20);
    let exhausted = stack
        .mulligan
        .metric(r#"mulligan_rescues_total{outcome="budget_exhausted"}"#)
        .await;
    assert_eq!(exhausted as usize, failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_cap_is_neither_buffered_nor_replayed() {
    let stack = Stack::with_config(
        &[("ready", PodState::Ready), ("gone", PodState::Gone)],
        "[rescue]\nmax_request_body_bytes = 4096\n",
        &[],
    )
    .await;
    let big = load(&stack, 20, 1, Method::POST, payload(8192), false).await;
    let failed = count(&big, 503);
    assert!(failed > 0, "some must land on the gone pod");
    assert!(big.iter().all(|(s, ok)| *s == 503 || (*s == 200 && *ok)));
    let not_captured = stack
        .mulligan
        .metric(r#"mulligan_decisions_total{cause="connect_failure",decision="body_not_captured"}"#)
        .await;
    assert_eq!(not_captured as usize, failed);
    // mulligan did not ask for those bodies.
    assert_eq!(
        stack
            .mulligan
            .metric(r#"mulligan_ext_proc_phases_total{phase="request_body"}"#)
            .await,
        0.0
    );
    // A body under the cap is replayed.
    let small = load(&stack, 10, 1, Method::POST, payload(1000), false).await;
    assert_eq!(count(&small, 200), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_response_over_the_cap_gives_the_original() {
    let stack = Stack::with_config(
        &[("ready", PodState::Ready), ("gone", PodState::Gone)],
        "[rescue]\nmax_response_body_bytes = 1024\n",
        &[],
    )
    .await;
    let http = HttpClient::new(Proto::Http1);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = http.get(stack.front, "/bytes/4096").await.expect("request");
        if r.status == 200 {
            assert_eq!(r.body, payload(4096));
        } else {
            // Envoy's own reply, untouched.
            assert_eq!(r.status, 503);
            assert!(
                r.body.starts_with(b"upstream connect error"),
                "{:?}",
                r.body
            );
        }
        statuses.push(r.status.as_u16());
    }
    let too_large = stack
        .mulligan
        .metric(r#"mulligan_rescues_total{outcome="response_too_large"}"#)
        .await;
    assert!(too_large >= 1.0);
    assert_eq!(
        too_large as usize,
        statuses.iter().filter(|s| **s == 503).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_is_rescued_to_an_endpoint_mulligan_knows() {
    // Envoy's cluster is empty (EDS has not caught up with a scale-up), while
    // mulligan already knows the new pod.
    let stack = Stack::start(
        &[("new", PodState::Ready)],
        &[],
        &[("APP_ENDPOINTS", "[]".into())],
    )
    .await;
    let baseline = client::get(stack.baseline, "/").await.expect("baseline");
    assert_eq!(
        baseline.status, 503,
        "without mulligan the client sees Envoy's 503"
    );
    let get = client::get(stack.front, "/").await.expect("GET");
    assert_eq!(get.status, 200);
    assert_eq!(get.body, "hello from new\n");
    // Nothing was sent before: even a POST is safe.
    let post = HttpClient::new(Proto::Http1)
        .send(
            Method::POST,
            stack.front,
            "/echo",
            &[],
            client::full(payload(10)),
        )
        .await
        .expect("POST");
    assert_eq!(post.status, 200);
    assert_eq!(post.body, payload(10));
    assert_eq!(
        stack
            .mulligan
            .metric(r#"mulligan_decisions_total{cause="no_healthy_upstream",decision="rescue"}"#)
            .await,
        2.0
    );
}

/// A listener standing for an address an attacker would like mulligan to
/// call; counts the connections it gets.
async fn bait() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind bait");
    let addr = l.local_addr().expect("addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_a_request_can_point_a_replay_elsewhere() {
    let stack = Stack::with_config(
        &[("ready", PodState::Ready), ("gone", PodState::Gone)],
        "[budget]\nratio = 1.0\n",
        &[],
    )
    .await;
    let (bait, hits) = bait().await;
    let evil = bait.to_string();
    let http = HttpClient::new(Proto::Http1);
    for _ in 0..20 {
        let r = http
            .send(
                Method::GET,
                stack.front,
                "/",
                &[
                    ("host", evil.as_str()),
                    ("x-forwarded-host", evil.as_str()),
                    ("x-gateway-destination-endpoint", evil.as_str()),
                    ("x-envoy-original-dst-host", evil.as_str()),
                ],
                client::empty(),
            )
            .await
            .expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello from ready\n");
    }
    assert!(
        stack
            .mulligan
            .metric(r#"mulligan_rescues_total{outcome="rescued"}"#)
            .await
            >= 5.0,
        "half the requests went to the gone pod and were replayed"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a replay went to an address taken from the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_held_the_original_response_passes_at_once() {
    let stack = Stack::with_config(
        &[("a", PodState::Gone)],
        "[rescue]\nmax_held = 1\ndeadline = \"3s\"\n",
        &[],
    )
    .await;
    let front = stack.front;
    let held = tokio::spawn(async move { client::get(front, "/").await });
    until_held(&stack, 1.0).await;
    // A second request finds the hold full: Envoy's own 503, without waiting.
    let started = Instant::now();
    let r = client::get(stack.front, "/").await.expect("request");
    assert_eq!(r.status, 503);
    assert!(r.headers.get("retry-after").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited: {:?}",
        started.elapsed()
    );
    assert_eq!(
        stack
            .mulligan
            .metric(r#"mulligan_rescues_total{outcome="held_limit"}"#)
            .await,
        1.0
    );
    // The first one is still held, and ends at its deadline.
    let first = held.await.expect("task").expect("held request");
    assert_eq!(first.status, 503);
    assert_eq!(first.headers["retry-after"], "1");
}
