//! Fail-open and shutdown, through real Envoy on the reference wiring: with
//! mulligan down, stalled, killed under load or in the middle of a hold,
//! drained by SIGTERM, or over its stream limit, every request ends as
//! Envoy alone would have ended it (the pod's own answer, whole, or Envoy's
//! own 503), none runs twice and none is lost. And the other way round:
//! when Envoy dies, freezes or hot-restarts, mulligan frees every stream
//! and hold it had.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::Method;
use rig::{
    client::{self, HttpClient, Proto, Reply},
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
    render, Stack,
};

const IN_FLIGHT: &str = "mulligan_ext_proc_streams_in_flight";
const HELD: &str = "mulligan_held";

/// A bound for what a loaded 2-core machine does in moments (a process
/// starting, a request through Envoy).
const LOADED: Duration = Duration::from_secs(20);

async fn send(to: SocketAddr, method: Method, path: &str, id: &str, body: Vec<u8>) -> Reply {
    HttpClient::new(Proto::Http1)
        .send(
            method,
            to,
            path,
            &[("x-harness-id", id)],
            client::full(body),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// Envoy alone on a draining pod `a` and a ready pod `b`: `b`'s answer, or
/// `a`'s 503 exactly as `a` sent it. Anything else (a 500 from a filter, a
/// 504, a cut body) is worse than Envoy alone.
fn as_envoy_alone(what: &str, r: &Reply, sent: &[u8]) {
    match r.status.as_u16() {
        200 if sent.is_empty() => assert_eq!(r.body, "hello from b\n", "{what}"),
        200 => assert!(r.body == sent, "{what}: the echo is not the body sent"),
        503 => assert_eq!(r.body, "draining\n", "{what}: not the pod's own 503"),
        other => panic!("{what}: {other} {:?} is not what Envoy alone gives", r.body),
    }
}

/// GETs and POSTs through `front` to pods `a` (draining) and `b` (ready):
/// each as Envoy alone would end it, and no POST run twice.
async fn every_request_as_envoy_alone(front: SocketAddr, a: &Pod, b: &Pod, tag: &str) {
    let body = payload(10_000);
    for i in 0..20 {
        let id = format!("{tag}-get-{i}");
        let r = send(front, Method::GET, "/", &id, Vec::new()).await;
        as_envoy_alone(&id, &r, &[]);
        let id = format!("{tag}-post-{i}");
        let r = send(front, Method::POST, "/echo", &id, body.clone()).await;
        as_envoy_alone(&id, &r, &body);
    }
    assert!(a.rejected() > 0, "{tag}: the draining pod was never tried");
    let runs = b.executions();
    assert!(
        runs.values().all(|n| *n == 1),
        "{tag}: a request ran twice: {runs:?}"
    );
}

/// mulligan is not there at all (its port refuses connections): Envoy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mulligan_down_every_request_ends_as_envoy_alone() {
    let mut stack = Stack::start(
        &[("a", PodState::Draining), ("b", PodState::Ready)],
        &[],
        &[],
    )
    .await;
    stack.mulligan.kill().await;
    every_request_as_envoy_alone(stack.front, stack.pod("a"), stack.pod("b"), "down").await;
    assert!(
        stack.ext_proc_stat("failure_mode_allowed").await > 0,
        "Envoy never tried mulligan: the test proved nothing"
    );
}

/// A peer that accepts connections and never answers, in mulligan's place.
async fn stalled_peer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// mulligan's port accepts but never answers: Envoy's message timeout
/// (200 ms) ends each wait, and the request goes on as Envoy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mulligan_stalled_every_request_ends_as_envoy_alone_within_the_message_timeout() {
    let a = Pod::start("a", PodState::Draining).await;
    let b = Pod::start("b", PodState::Ready).await;
    let (stall, _peer) = stalled_peer().await;
    let envoy = Envoy::start(&render::standalone(&[a.addr, b.addr], stall.port(), &[])).await;
    let front = envoy.listener("mulligan").await;
    let started = Instant::now();
    every_request_as_envoy_alone(front, &a, &b, "stalled").await;
    let took = started.elapsed();
    assert!(
        envoy
            .stat("http.mulligan.ext_proc.failure_mode_allowed")
            .await
            > 0,
        "Envoy never waited for mulligan: the test proved nothing"
    );
    // 40 requests, the failed ones waiting up to 2 x 200 ms (the attempt
    // filter, then the final one): far below the 15 s route timeout each
    // would take if Envoy waited for the stalled peer.
    assert!(took < LOADED, "40 requests took {took:?}");
}

/// Killed under load and restarted on the same port: every request in the
/// run ends as Envoy alone would (most retried at mulligan's word), and the
/// new process is answering Envoy again moments after the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_every_request_ends_as_envoy_alone_and_a_restart_serves_again() {
    let stack = Stack::start(
        &[("a", PodState::Draining), ("b", PodState::Ready)],
        &[],
        &[],
    )
    .await;
    let list = rig::endpoint_list(&[stack.pods[0].addr, stack.pods[1].addr]);
    let grpc = format!("127.0.0.1:{}", stack.mulligan.grpc.port());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, sent, front) = (Arc::clone(&stop), Arc::clone(&sent), stack.front);
        workers.push(tokio::spawn(async move {
            let mut worse = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match client::get(front, "/").await {
                    Ok(r) if r.status == 200 && r.body == "hello from b\n" => {}
                    Ok(r) if r.status == 503 && r.body == "draining\n" => {}
                    other => worse.push(format!("{other:?}")),
                }
                sent.fetch_add(1, Ordering::AcqRel);
            }
            worse
        }));
    }
    // Load is flowing through mulligan: the draining pod's 503s are judged.
    let attempts = r#"mulligan_ext_proc_phases_total{phase="response_headers"}"#;
    stack
        .mulligan
        .wait_metric_above(attempts, 20.0, LOADED)
        .await;
    let mut old = stack.mulligan;
    old.kill().await;
    let killed = Instant::now();
    // Envoy meets mulligan gone before it comes back (a restart faster
    // than the next failed attempt would prove nothing).
    let gone = "http.mulligan.ext_proc.failure_mode_allowed";
    stack.envoy.until_stat_above(gone, 0).await;
    let new = Mulligan::spawn(&[
        "serve",
        "--grpc-listen",
        &grpc,
        "--admin-listen",
        "127.0.0.1:0",
        "--endpoints",
        &list,
    ])
    .await;
    let listening = killed.elapsed();
    new.wait_metric_above(attempts, 0.0, LOADED).await;
    let serving = killed.elapsed();
    let before = sent.load(Ordering::Acquire);
    let until = Instant::now() + LOADED;
    while sent.load(Ordering::Acquire) < before + 100 {
        assert!(Instant::now() < until, "the load stalled after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    let mut worse = Vec::new();
    for w in workers {
        worse.extend(w.await.expect("worker"));
    }
    println!(
        "SIGKILL: {} requests; restarted and listening after {listening:?}, \
         judging Envoy's attempts again after {serving:?}",
        sent.load(Ordering::Acquire)
    );
    assert!(worse.is_empty(), "worse than Envoy alone: {worse:?}");
    assert!(new.answers("retry").await > 0.0, "the new process retries");
}

/// Requests held on the only pod being gone, with the hold (`deadline`)
/// and Envoy's wait for it (31 s) longer than any test: only what the test
/// does to mulligan ends them.
async fn holding(n: usize, mulligan_toml: &str) -> (Stack, Vec<tokio::task::JoinHandle<Reply>>) {
    let toml =
        format!("[hold]\nmax_hold = \"30s\"\nenvoy_max_message_timeout = \"31s\"\n{mulligan_toml}");
    let stack = Stack::with_config(
        &[("a", PodState::Gone)],
        &toml,
        &[("MAX_HOLD", "31s".into())],
    )
    .await;
    let body = payload(30_000);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (front, body) = (stack.front, body.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("held-{i}");
            if i % 2 == 0 {
                send(front, Method::GET, "/", &id, Vec::new()).await
            } else {
                send(front, Method::POST, "/echo", &id, body).await
            }
        }));
    }
    wait_held(&stack, n).await;
    (stack, tasks)
}

/// Waits until `n` requests are held, saying what Envoy saw if they are not.
async fn wait_held(stack: &Stack, n: usize) {
    let until = Instant::now() + LOADED;
    loop {
        let held = stack.mulligan.metric(HELD).await;
        if held == n as f64 {
            return;
        }
        if Instant::now() > until {
            panic!(
                "{n} requests held: {HELD} is {held} after {LOADED:?}; Envoy's ext_proc: {}",
                stack.envoy.stats("ext_proc").await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What Envoy alone answers when the only pod is gone: a 503.
async fn envoy_alone_with_the_pod_gone(stack: &Stack) -> u16 {
    let r = client::get(stack.baseline, "/").await.expect("baseline");
    r.status.as_u16()
}

/// Held requests end, once mulligan is gone, as Envoy alone ends them, and
/// at once: not at the hold's deadline, nor the route's timeout.
async fn held_requests_end_as_envoy_alone(
    stack: &Stack,
    tasks: Vec<tokio::task::JoinHandle<Reply>>,
    gone: Instant,
) {
    let alone = envoy_alone_with_the_pod_gone(stack).await;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request");
        assert_eq!(r.status, alone, "held-{i}: {:?}", r.body);
    }
    let took = gone.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "held requests ended {took:?} after mulligan went: they waited for a timer"
    );
    assert_eq!(stack.pod("a").served(), 0);
}

/// SIGKILL in the middle of a hold: Envoy's stream breaks, and
/// `failure_mode_allow` passes on the hold's 503, as Envoy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_hold_the_held_requests_end_as_envoy_alone() {
    let (mut stack, tasks) = holding(4, "").await;
    stack.mulligan.kill().await;
    held_requests_end_as_envoy_alone(&stack, tasks, Instant::now()).await;
}

/// SIGTERM with requests held and their streams open: mulligan stops
/// being ready at once and keeps its holds; once a pod comes up it lets
/// them go, and each ends served, whole, or (when Envoy still sees no
/// endpoint and the drain refuses it another hold) with Envoy alone's 503.
/// Then it exits 0. No request is lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_holds_it_has_then_exits_zero() {
    let (mut stack, tasks) = holding(4, "").await;
    let streams = stack.mulligan.metric(IN_FLIGHT).await;
    assert!(
        streams >= 4.0,
        "held requests keep their streams: {streams}"
    );
    stack.mulligan.terminate();
    let started = Instant::now();
    loop {
        match client::get(stack.mulligan.admin, "/readyz").await {
            Ok(r) if r.status == 503 => break,
            Ok(_) => {}
            Err(e) => panic!("admin went away before the drain finished: {e}"),
        }
        assert!(started.elapsed() < LOADED, "readyz never failed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        stack.mulligan.metric(HELD).await,
        4.0,
        "the drain let go of its holds"
    );
    stack.pod("a").set_state(PodState::Ready).await;
    let body = payload(30_000);
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request");
        match r.status.as_u16() {
            200 if i % 2 == 1 => assert!(r.body == body, "held-{i}: the POST arrived whole"),
            200 => assert_eq!(r.body, "hello from a\n"),
            503 => assert_eq!(r.body, "no healthy upstream", "held-{i}: not Envoy's 503"),
            other => panic!("held-{i}: {other} {:?} is worse than Envoy alone", r.body),
        }
    }
    let code = stack.mulligan.wait(LOADED).await;
    assert_eq!(code, Some(0), "mulligan must exit 0 after draining");
    let runs = stack.pod("a").executions();
    assert!(runs.values().all(|n| *n == 1), "one ran twice: {runs:?}");
}

/// `shutdown.drain_timeout` bounds the drain: mulligan exits with holds
/// still open, and they end as Envoy alone ends them, at once; a request
/// arriving during the drain is carried on by Envoy alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_a_sigterm_and_abandoned_holds_end_as_envoy_alone() {
    let (mut stack, tasks) = holding(2, "[shutdown]\ndrain_timeout = \"2s\"\n").await;
    stack.mulligan.terminate();
    let started = Instant::now();
    let alone = envoy_alone_with_the_pod_gone(&stack).await;
    let r = client::get(stack.front, "/")
        .await
        .expect("during the drain");
    assert_eq!(r.status, alone, "{:?}", r.body);
    let code = stack.mulligan.wait(LOADED).await;
    let exited = started.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        exited < Duration::from_secs(10),
        "exit took {exited:?} with a 2 s drain timeout"
    );
    held_requests_end_as_envoy_alone(&stack, tasks, started).await;
}

/// Over `limits.max_streams` (zero here: every stream is over it), Envoy is
/// refused a stream and carries the request on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_end_as_envoy_alone() {
    let stack = Stack::with_config(
        &[("a", PodState::Draining), ("b", PodState::Ready)],
        "[limits]\nmax_streams = 0\n",
        &[],
    )
    .await;
    every_request_as_envoy_alone(stack.front, stack.pod("a"), stack.pod("b"), "limit").await;
    // Each of the draining pod's 503s was to be judged (the attempt filter)
    // and seen on its way out (the final filter): every one was refused.
    let refused = stack
        .mulligan
        .metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
        .await;
    let failed = stack.pod("a").rejected() as f64;
    assert!(refused >= failed, "{refused} refused for {failed} failures");
    assert!(
        stack.ext_proc_stat("failure_mode_allowed").await > 0,
        "Envoy carried the refused streams on"
    );
}

/// Waits until every stream and every hold is released, within `limit`.
async fn all_released(m: &Mulligan, limit: Duration) {
    m.wait_metric(IN_FLIGHT, 0.0, limit, "streams released")
        .await;
    m.wait_metric(HELD, 0.0, limit, "holds released").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_with_holds_open_leaves_nothing_behind() {
    let (mut stack, _tasks) = holding(6, "").await;
    stack.envoy.kill();
    let killed = Instant::now();
    // Long before any hold's own deadline (30 s) could have ended it.
    all_released(&stack.mulligan, Duration::from_secs(10)).await;
    println!(
        "Envoy SIGKILL: 6 holds and their streams released after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_envoy_is_found_out_by_keepalive() {
    let (stack, _tasks) = holding(
        6,
        "[limits]\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"300ms\"\n",
    )
    .await;
    // SIGSTOP: Envoy's sockets stay open, but nothing answers.
    stack.envoy.signal("STOP");
    let frozen = Instant::now();
    all_released(&stack.mulligan, Duration::from_secs(10)).await;
    let took = frozen.elapsed();
    stack.envoy.signal("CONT");
    println!("frozen Envoy: holds released after {took:?} (PING every 300 ms, 300 ms to answer)");
    assert!(
        took >= Duration::from_millis(300),
        "released by the PING timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_hot_restart_releases_the_old_envoys_holds() {
    let gone = Pod::start("gone", PodState::Gone).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[hold]\nmax_hold = \"30s\"\nenvoy_max_message_timeout = \"31s\"\n\
             [endpoints]\nstatic = [\"{}\"]\n",
            gone.addr
        ),
    )
    .expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let yaml = render::tolerant(&[gone.addr], m.grpc.port(), &[("MAX_HOLD", "31s".into())]);
    // A family id of our own, so parallel tests never share shared memory.
    let base_id = 1000 + std::process::id() % 50_000;
    let mut parent = Envoy::start_hot(&yaml, base_id, 0, 1, 2).await;
    let old_front = parent.listener("mulligan").await;
    const REQUESTS: u64 = 6;
    for _ in 0..REQUESTS {
        tokio::spawn(async move {
            // Outlives the parent's shutdown: cut when the parent exits.
            let _ = client::get(old_front, "/").await;
        });
    }
    m.wait_metric(HELD, REQUESTS as f64, LOADED, "requests held")
        .await;
    let child = Envoy::start_hot(&yaml, base_id, 1, 1, 2).await;
    let restarted = Instant::now();
    // The parent drains, then its successor shuts it down (2 s); every
    // stream and hold it had with mulligan goes with it.
    all_released(&m, LOADED).await;
    let released = restarted.elapsed();
    let deadline = Instant::now() + LOADED;
    while !parent.exited() {
        assert!(Instant::now() < deadline, "the old Envoy never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new Envoy reaches mulligan: its request is held in turn.
    let front = child.listener("mulligan").await;
    tokio::spawn(async move {
        let _ = client::get(front, "/").await;
    });
    m.wait_metric(HELD, 1.0, LOADED, "the new Envoy's request held")
        .await;
    println!("hot restart: the old Envoy's {REQUESTS} holds released {released:?} after the new one was ready");
}
