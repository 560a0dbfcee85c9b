//! Faults, through real Envoy and real pods: mulligan killed under load and
//! restarted, Envoy killed or frozen with streams open, and replay targets
//! that hang, trickle or cut their response mid-body. A request mulligan
//! cannot help passes through as Envoy would have served it; nothing is
//! ever answered with a truncated success.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rig::{
    client,
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
    render, Stack,
};

const IN_FLIGHT: &str = "mulligan_ext_proc_streams_in_flight";
const HELD: &str = "mulligan_rescue_held";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_costs_no_request_and_a_restart_serves_within_a_second() {
    let stack = Stack::start(&[("a", PodState::Ready), ("b", PodState::Ready)], &[], &[]).await;
    let list = format!("{},{}", stack.pods[0].addr, stack.pods[1].addr);
    let grpc = format!("127.0.0.1:{}", stack.mulligan.grpc.port());
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, front) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
            stack.front,
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let ok = matches!(client::get(front, "/").await, Ok(r) if r.status == 200);
                sent.fetch_add(1, Ordering::AcqRel);
                if !ok {
                    failed.fetch_add(1, Ordering::AcqRel);
                }
            }
        }));
    }
    // Load is flowing through mulligan.
    stack
        .mulligan
        .wait_metric_above(
            r#"mulligan_ext_proc_phases_total{phase="request_headers"}"#,
            50.0,
            Duration::from_secs(10),
        )
        .await;
    let mut old = stack.mulligan;
    old.kill().await;
    let killed = Instant::now();
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
    new.wait_metric_above(
        r#"mulligan_ext_proc_phases_total{phase="request_headers"}"#,
        0.0,
        Duration::from_secs(5),
    )
    .await;
    let serving = killed.elapsed();
    // Some more load through the new process, then stop.
    let before = sent.load(Ordering::Acquire);
    while sent.load(Ordering::Acquire) < before + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.expect("worker");
    }
    let (sent, failed) = (sent.load(Ordering::Acquire), failed.load(Ordering::Acquire));
    println!(
        "SIGKILL: {sent} requests, {failed} failed; restarted and listening after {listening:?}, \
         serving Envoy's streams again after {serving:?}"
    );
    assert_eq!(failed, 0, "failure_mode_allow carries every request");
    assert!(
        serving < Duration::from_secs(1),
        "serving again {serving:?} after the kill"
    );
    assert!(
        stack
            .envoy
            .stat("http.mulligan.ext_proc.failure_mode_allowed")
            .await
            > 0,
        "Envoy saw mulligan gone (else the kill proved nothing)"
    );
}

/// Pods for the Envoy fault tests: `slow` serves (slowly, on `/delay`),
/// `drain` rejects with the drain header. mulligan treats `slow` as draining
/// (told over its lifecycle API), so a rejected request has nowhere to go
/// and is held.
async fn streams_and_holds(mulligan_toml: &str) -> Stack {
    // Holds that outlast the test: mulligan and Envoy agree on how long
    // Envoy waits for a held answer.
    let toml = format!("{mulligan_toml}\n[hold]\nenvoy_max_message_timeout = \"31s\"\n");
    let stack = Stack::with_config(
        &[("slow", PodState::Ready), ("drain", PodState::Draining)],
        &toml,
        &[("MAX_MESSAGE_TIMEOUT", "31s".into())],
    )
    .await;
    stack.pod("drain").set_drain_header(true);
    let slow = stack.pod("slow").addr;
    let r = client::post(stack.mulligan.admin, &format!("/v1/endpoints/{slow}/drain"))
        .await
        .expect("drain call");
    assert_eq!(r.status, 200);
    const REQUESTS: u64 = 20;
    for _ in 0..REQUESTS {
        let front = stack.front;
        tokio::spawn(async move {
            // The client's fate does not matter here: Envoy dies under it.
            let _ = client::get(front, "/delay/30000").await;
        });
    }
    stack
        .mulligan
        .wait_metric(
            IN_FLIGHT,
            REQUESTS as f64,
            Duration::from_secs(10),
            "streams open",
        )
        .await;
    stack
        .mulligan
        .wait_metric_above(HELD, 0.0, Duration::from_secs(10))
        .await;
    stack
}

/// Waits until every stream and every hold is released, within `limit`.
async fn all_released(m: &Mulligan, limit: Duration) {
    m.wait_metric(IN_FLIGHT, 0.0, limit, "streams released")
        .await;
    m.wait_metric(HELD, 0.0, limit, "holds released").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_with_streams_open_leaves_nothing_behind() {
    let mut stack = streams_and_holds("[rescue]\ndeadline = \"30s\"\n").await;
    let held = stack.mulligan.metric(HELD).await;
    stack.envoy.kill();
    let killed = Instant::now();
    // Long before any request's own timer (30 s) could have ended it.
    all_released(&stack.mulligan, Duration::from_secs(3)).await;
    println!(
        "Envoy SIGKILL: {held} held requests and every stream released after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_envoy_is_found_out_by_keepalive() {
    let stack = streams_and_holds(
        "[rescue]\ndeadline = \"30s\"\n[limits]\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"300ms\"\n",
    )
    .await;
    // SIGSTOP: Envoy's sockets stay open, but nothing answers.
    stack.envoy.signal("STOP");
    let frozen = Instant::now();
    all_released(&stack.mulligan, Duration::from_secs(5)).await;
    let took = frozen.elapsed();
    stack.envoy.signal("CONT");
    println!("frozen Envoy: streams released after {took:?} (PING every 300 ms, 300 ms to answer)");
    assert!(
        took >= Duration::from_millis(300),
        "released by the PING timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_hot_restart_releases_the_old_envoys_streams() {
    let slow = Pod::start("slow", PodState::Ready).await;
    let list = slow.addr.to_string();
    let m = Mulligan::start(&["--endpoints", &list]).await;
    let yaml = render::legacy_rescue(&[slow.addr], m.grpc.port(), &[]);
    // A family id of our own, so parallel tests never share shared memory.
    let base_id = 1000 + std::process::id() % 50_000;
    let mut parent = Envoy::start_hot(&yaml, base_id, 0, 1, 2).await;
    let old_front = parent.listener("mulligan").await;
    const REQUESTS: u64 = 10;
    for _ in 0..REQUESTS {
        tokio::spawn(async move {
            // Outlives the parent's shutdown: cut when the parent exits.
            let _ = client::get(old_front, "/delay/20000").await;
        });
    }
    m.wait_metric(
        IN_FLIGHT,
        REQUESTS as f64,
        Duration::from_secs(10),
        "streams open",
    )
    .await;
    let child = Envoy::start_hot(&yaml, base_id, 1, 1, 2).await;
    let restarted = Instant::now();
    // The parent drains, then its successor shuts it down (2 s); every
    // stream it had open with mulligan goes with it.
    m.wait_metric(
        IN_FLIGHT,
        0.0,
        Duration::from_secs(10),
        "old streams released",
    )
    .await;
    let released = restarted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !parent.exited() {
        assert!(Instant::now() < deadline, "the old Envoy never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new Envoy serves through mulligan.
    let front = child.listener("mulligan").await;
    let r = client::get(front, "/")
        .await
        .expect("through the new Envoy");
    assert_eq!(r.status, 200);
    assert!(
        m.metric(r#"mulligan_ext_proc_phases_total{phase="request_headers"}"#)
            .await
            > REQUESTS as f64
    );
    println!("hot restart: the old Envoy's {REQUESTS} streams released {released:?} after the new one was ready");
}

/// A draining pod (`a`, in Envoy's cluster) and one ready pod (`b`, the
/// only endpoint mulligan knows) that misbehaves on the path it is asked.
async fn replay_rig() -> (Arc<Pod>, Arc<Pod>, Mulligan, Envoy, std::net::SocketAddr) {
    let a = Pod::start("a", PodState::Draining).await;
    a.set_drain_header(true);
    let b = Pod::start("b", PodState::Ready).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[rescue]\nper_try_timeout = \"300ms\"\ndeadline = \"1500ms\"\nmax_attempts = 2\n",
    )
    .expect("write");
    let b_addr = b.addr.to_string();
    let m = Mulligan::start(&[
        "--endpoints",
        &b_addr,
        "--config",
        cfg.to_str().expect("path"),
    ])
    .await;
    let envoy = Envoy::start(&render::legacy_rescue(&[a.addr], m.grpc.port(), &[])).await;
    let front = envoy.listener("mulligan").await;
    (a, b, m, envoy, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_target_that_hangs_trickles_or_cuts_never_yields_a_truncated_success() {
    let (_a, b, m, _envoy, front) = replay_rig().await;
    // (path, the full body a success must carry, whether it can finish in
    // time: 20 bytes, one per 5 ms, fit in the 300 ms per-try timeout)
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("/trickle/20/5", payload(20), true),
        ("/delay/5000", Vec::new(), false),
        ("/trickle/50/100", payload(50), false),
        ("/cut/1000", payload(1000), false),
    ];
    for (path, full, completes) in cases {
        let started = Instant::now();
        let r = client::get(front, path).await.expect("a response");
        let took = started.elapsed();
        let status = r.status.as_u16();
        println!(
            "{path}: {status} after {took:?}, {} body bytes",
            r.body.len()
        );
        match status {
            200 => assert_eq!(r.body, full, "{path}: a success carries the whole body"),
            503 => {
                assert_eq!(
                    &r.body[..],
                    b"draining\n",
                    "{path}: the original response, whole"
                );
            }
            other => panic!("{path}: {other} is neither the rescue nor the original"),
        }
        assert_eq!(status == 200, completes, "{path}: {status}");
        // Bounded by the rescue deadline (1.5 s), not by the upstream.
        assert!(took < Duration::from_secs(3), "{path}: {took:?}");
    }
    assert!(b.served() >= 4, "every case reached the misbehaving pod");
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="rescued"}"#)
            .await,
        1.0,
        "only the trickle that finished in time was used"
    );
    // Each failed replay is counted by why: the hang and the slow trickle
    // ran out of time; the cut broke the exchange (before or after the
    // response headers, depending on when the reset is read).
    let failures = |why: &str| format!(r#"mulligan_replay_failures_total{{why="{why}"}}"#);
    assert!(m.metric(&failures("timeout")).await >= 2.0);
    let cut = m.metric(&failures("broken")).await + m.metric(&failures("body_cut")).await;
    assert!(cut >= 1.0, "the cut replay was not counted");
    m.wait_metric(IN_FLIGHT, 0.0, Duration::from_secs(5), "streams released")
        .await;
}
