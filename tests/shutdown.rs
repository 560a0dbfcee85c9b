//! mulligan leaving the path: killed outright, or drained on SIGTERM. Either
//! way no client request through Envoy fails.

use std::time::{Duration, Instant};

use rig::{client, pods::PodState, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_costs_no_client_request() {
    let mut stack = Stack::start(&[("a", PodState::Ready)], &[], &[]).await;
    let front = stack.front;
    let load = tokio::spawn(async move {
        let http = client::HttpClient::new(client::Proto::Http1);
        let mut statuses = Vec::new();
        for _ in 0..600 {
            let r = http
                .get(front, "/delay/1")
                .await
                .expect("request through Envoy");
            statuses.push(r.status.as_u16());
        }
        statuses
    });
    // Kill once the load is demonstrably flowing through mulligan.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.mulligan.streams().await < 100.0 {
        assert!(Instant::now() < deadline, "load never reached mulligan");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.mulligan.kill().await;
    let statuses = load.await.expect("load task");
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed, 0,
        "requests failed after mulligan died: {statuses:?}"
    );
    // And mulligan really was gone for part of the run.
    assert!(stack.ext_proc_stat("failure_mode_allowed").await > 0);
}

/// Waits until mulligan has a stream open (the slow request reached it).
async fn until_in_flight(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack
        .mulligan
        .metric("mulligan_ext_proc_streams_in_flight")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "slow request never reached mulligan"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_streams_then_exits_zero() {
    let mut stack = Stack::start(&[("a", PodState::Ready)], &[], &[]).await;
    let front = stack.front;
    // A request whose ext_proc stream stays open for 1.5 s (the pod is slow).
    let slow = tokio::spawn(async move { client::get(front, "/delay/1500").await });
    until_in_flight(&stack).await;
    let replies_before = stack.ext_proc_stat("stream_msgs_received").await;
    stack.mulligan.terminate();
    let started = Instant::now();

    // Readiness fails at once.
    loop {
        let r = client::get(stack.mulligan.admin, "/readyz").await;
        match r {
            Ok(r) if r.status == 503 => break,
            Ok(_) => {}
            Err(e) => panic!("admin went away before the drain finished: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "readyz never failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // New requests still succeed (Envoy passes them through).
    for _ in 0..20 {
        let r = client::get(stack.front, "/")
            .await
            .expect("request during drain");
        assert_eq!(r.status, 200);
    }
    // The in-flight request completes, answered by mulligan in its drain.
    let r = slow.await.expect("slow task").expect("slow request");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from a after 1500 ms\n");
    let code = stack.mulligan.wait(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "mulligan must exit 0 after draining");
    assert!(
        stack.ext_proc_stat("stream_msgs_received").await > replies_before,
        "mulligan did not answer the in-flight stream's response phase"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[shutdown]\ndrain_timeout = \"500ms\"\n").expect("write");
    let mut stack = Stack::start(
        &[("a", PodState::Ready)],
        &["--config", cfg.to_str().expect("utf-8 path")],
        &[],
    )
    .await;
    let front = stack.front;
    let slow = tokio::spawn(async move { client::get(front, "/delay/6000").await });
    until_in_flight(&stack).await;
    stack.mulligan.terminate();
    let started = Instant::now();
    let code = stack.mulligan.wait(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exit took {:?} with a 500 ms drain timeout",
        started.elapsed()
    );
    // The abandoned request still gets its answer (Envoy fails open).
    let r = slow.await.expect("slow task").expect("slow request");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_pass_through_envoy_untouched() {
    // A limit of zero: every stream is over it.
    let stack = Stack::with_config(
        &[("a", PodState::Ready)],
        "[limits]\nmax_streams = 0\n",
        &[],
    )
    .await;
    for _ in 0..20 {
        let r = client::get(stack.front, "/").await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello from a\n");
    }
    assert_eq!(
        stack
            .mulligan
            .metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
            .await,
        20.0
    );
    assert_eq!(stack.ext_proc_stat("failure_mode_allowed").await, 20);
}
