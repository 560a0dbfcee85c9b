//! A gRPC client that misbehaves on purpose: it half-closes, resets,
//! stalls and floods. mulligan answers each with a clear gRPC status, frees
//! what the stream held, and other streams on the same connection carry on.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, processing_response::Response, ProcessingRequest,
};
use rig::{
    ext_proc::{body, connect, msg, open, open_on, request_headers, Conversation},
    mulligan::Mulligan,
};

const IN_FLIGHT: &str = "mulligan_ext_proc_streams_in_flight";

async fn start(toml: &str) -> Mulligan {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, toml).expect("write");
    Mulligan::start(&["--config", cfg.to_str().expect("path")]).await
}

/// A POST whose body mulligan captures for replay (known length, small).
fn post() -> ProcessingRequest {
    request_headers(
        &[
            (":method", "POST"),
            (":path", "/x"),
            ("content-length", "100"),
        ],
        false,
    )
}

fn half_body() -> ProcessingRequest {
    msg(Request::RequestBody(body(&[1u8; 50], false)))
}

/// A request-headers exchange on `c` is answered in its phase.
async fn still_answers(c: &mut Conversation) {
    c.send(request_headers(&[(":method", "GET")], true)).await;
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

#[tokio::test]
async fn a_half_closed_stream_gets_its_replies_then_ends_ok() {
    let m = start("").await;
    // Half-closed right after the request headers.
    let mut c = open(m.grpc).await;
    c.send(post()).await;
    c.half_close();
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    assert!(c.end(Duration::from_secs(5)).await.is_ok(), "a clean end");
    // Half-closed in the middle of a captured body.
    let mut c = open(m.grpc).await;
    c.send(post()).await;
    c.reply().await;
    c.send(half_body()).await;
    c.reply().await;
    c.half_close();
    assert!(c.end(Duration::from_secs(5)).await.is_ok(), "a clean end");
    // Half-closed before saying anything.
    let mut c = open(m.grpc).await;
    c.half_close();
    assert!(c.end(Duration::from_secs(5)).await.is_ok(), "a clean end");
    m.wait_metric(
        IN_FLIGHT,
        0.0,
        Duration::from_secs(5),
        "half-closed streams released",
    )
    .await;
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="transport"}"#)
            .await,
        0.0,
        "a half-close is a normal end, not an error"
    );
}

#[tokio::test]
async fn a_reset_stream_is_freed_and_its_neighbours_carry_on() {
    let m = start("").await;
    let mut client = connect(m.grpc).await;
    let mut neighbour = open_on(&mut client).await.expect("open");
    still_answers(&mut neighbour).await;
    for _ in 0..20 {
        let mut c = open_on(&mut client).await.expect("open");
        c.send(post()).await;
        c.reply().await;
        c.send(half_body()).await;
        c.reply().await;
        // Dropping both halves mid-body resets the stream (RST_STREAM).
        drop(c);
    }
    // Only the neighbour is left, on the same connection, still answering.
    m.wait_metric(
        IN_FLIGHT,
        1.0,
        Duration::from_secs(5),
        "reset streams released",
    )
    .await;
    still_answers(&mut neighbour).await;
    neighbour.half_close();
    assert!(neighbour.end(Duration::from_secs(5)).await.is_ok());
    m.wait_metric(IN_FLIGHT, 0.0, Duration::from_secs(5), "all released")
        .await;
}

#[tokio::test]
async fn a_stalled_stream_ends_with_deadline_exceeded_and_others_carry_on() {
    let m = start("[limits]\nstream_idle_timeout = \"400ms\"\n").await;
    let mut client = connect(m.grpc).await;
    // Stalls before its first message.
    let mut silent = open_on(&mut client).await.expect("open");
    // Stalls in the middle of a captured body.
    let mut midway = open_on(&mut client).await.expect("open");
    midway.send(post()).await;
    midway.reply().await;
    midway.send(half_body()).await;
    midway.reply().await;
    // Talks every 100 ms for longer than the idle timeout.
    let mut chatty = open_on(&mut client).await.expect("open");
    let chatter = tokio::spawn(async move {
        for _ in 0..10 {
            chatty
                .send(msg(Request::RequestBody(body(b"x", false))))
                .await;
            let r = chatty.reply().await;
            assert!(matches!(r.response, Some(Response::RequestBody(_))));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        chatty
    });
    let started = Instant::now();
    for c in [&mut silent, &mut midway] {
        let status = c
            .end(Duration::from_secs(5))
            .await
            .expect_err("a stalled stream must end in an error status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
        assert!(
            status.message().contains("stream_idle_timeout"),
            "the status says why: {status}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "ended by the 400 ms idle timeout, not later: {waited:?}"
    );
    let mut chatty = chatter.await.expect("the chatty stream was never cut");
    still_answers(&mut chatty).await;
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="idle"}"#)
            .await,
        2.0
    );
    drop(chatty);
    m.wait_metric(IN_FLIGHT, 0.0, Duration::from_secs(5), "all released")
        .await;
}

/// Opens `n` streams over `connections` connections, each saying its
/// request headers; returns (answered, refused) and keeps the answered open.
async fn flood(m: &Mulligan, n: usize, connections: usize) -> (Vec<Conversation>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let grpc = m.grpc;
        let share = n / connections + usize::from(i < n % connections);
        tasks.spawn(async move {
            let client = connect(grpc).await;
            let mut opened = Vec::new();
            let mut refused = 0;
            let mut pending = tokio::task::JoinSet::new();
            for _ in 0..share {
                let mut client = client.clone();
                pending.spawn(async move {
                    match open_on(&mut client).await {
                        Ok(mut c) => {
                            c.send(post()).await;
                            match tokio::time::timeout(Duration::from_secs(30), c.rx.message())
                                .await
                                .expect("every stream is answered")
                            {
                                Ok(Some(r)) => {
                                    assert!(matches!(
                                        r.response,
                                        Some(Response::RequestHeaders(_))
                                    ));
                                    Ok(c)
                                }
                                Ok(None) => panic!("closed without a status"),
                                Err(status) => Err(status),
                            }
                        }
                        Err(status) => Err(status),
                    }
                });
            }
            while let Some(r) = pending.join_next().await {
                match r.expect("stream task") {
                    Ok(c) => opened.push(c),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                        refused += 1;
                    }
                }
            }
            (opened, refused)
        });
    }
    let mut opened = Vec::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        let (o, f) = r.expect("connection task");
        opened.extend(o);
        refused += f;
    }
    (opened, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_get_clear_answers_and_leave_nothing_behind() {
    const STREAMS: usize = 10_000;
    const LIMIT: usize = 4_000;
    let m = start(&format!("[limits]\nmax_streams = {LIMIT}\n")).await;
    // A stream opened before the flood, on its own connection.
    let mut canary = open(m.grpc).await;
    still_answers(&mut canary).await;
    let before = rss_mib(m.pid());
    let mut peaks = Vec::new();
    let mut after = Vec::new();
    for round in 0..4 {
        let (opened, refused) = flood(&m, STREAMS, 10).await;
        // Every stream got an answer: a reply, or RESOURCE_EXHAUSTED past
        // the limit (the canary holds one place).
        assert_eq!(opened.len() + refused, STREAMS);
        assert_eq!(opened.len(), LIMIT - 1, "round {round}");
        // The canary is unaffected while the flood holds every place.
        let t = Instant::now();
        still_answers(&mut canary).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        peaks.push(rss_mib(m.pid()));
        drop(opened);
        m.wait_metric(IN_FLIGHT, 1.0, Duration::from_secs(30), "flood released")
            .await;
        after.push(rss_mib(m.pid()));
    }
    println!(
        "mulligan RSS MiB: before {before:.1}, peaks {peaks:.1?}, after each flood {after:.1?}"
    );
    // Memory a flood took is reused, not leaked. RSS does not fall back
    // after a flood (the allocator keeps freed pages, spread over its
    // per-thread arenas), so the test looks at the trend: a leak would add
    // the whole flood's footprint every round; reuse makes the growth
    // shrink towards nothing.
    let footprint = after[0] - before;
    let last_growth = after[3] - after[2];
    assert!(
        last_growth < footprint * 0.25,
        "RSS still grows flood over flood (a leak?): before {before:.1}, after each {after:.1?}"
    );
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
            .await,
        (4 * (STREAMS - LIMIT + 1)) as f64
    );
    still_answers(&mut canary).await;
}
