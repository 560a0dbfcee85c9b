//! Passthrough overhead: the same requests through one Envoy, to the same
//! pod, via the listener with mulligan and the one without, interleaved so
//! both see the same machine noise. Prints figures; asserts nothing about
//! speed.
//!
//! `cargo bench --bench passthrough [-- --requests N --concurrency C --seconds S]`
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use support::{
    bench::{arg, header, histogram, row},
    client::{HttpClient, Proto},
    pods::PodState,
    Stack,
};

async fn closed_loop(addr: SocketAddr, concurrency: u64, seconds: u64) -> (Histogram<u64>, f64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let http = HttpClient::new(Proto::Http1);
            let mut h = histogram();
            while Instant::now() < until {
                let t = Instant::now();
                let r = http.get(addr, "/").await.expect("request");
                assert_eq!(r.status, 200);
                h.record(t.elapsed().as_micros() as u64).expect("record");
            }
            h
        }));
    }
    let mut all = histogram();
    for t in tasks {
        all.add(t.await.expect("worker")).expect("merge");
    }
    let rps = all.len() as f64 / seconds as f64;
    (all, rps)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests = arg("--requests", 5000);
    let concurrency = arg("--concurrency", 16);
    let seconds = arg("--seconds", 5);
    let stack = Stack::start(&[("a", PodState::Ready)], &[], &[]).await;
    let http = HttpClient::new(Proto::Http1);
    for addr in [stack.front, stack.baseline] {
        for _ in 0..200 {
            http.get(addr, "/").await.expect("warm-up");
        }
    }

    // Sequential, interleaved: latency of one request at a time.
    let mut with = histogram();
    let mut without = histogram();
    for i in 0..requests * 2 {
        let (addr, h) = if i % 2 == 0 {
            (stack.front, &mut with)
        } else {
            (stack.baseline, &mut without)
        };
        let t = Instant::now();
        let r = http.get(addr, "/").await.expect("request");
        assert_eq!(r.status, 200);
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }

    header("Passthrough through Envoy 1.40, with and without mulligan");
    row("sequential, Envoy alone", &without, None);
    row("sequential, Envoy + mulligan", &with, None);

    // Closed loop under concurrency: alternate short rounds so drift in
    // machine load hits both sides alike.
    let rounds = 2;
    let mut cw = histogram();
    let mut cwo = histogram();
    let (mut rw, mut rwo) = (0.0, 0.0);
    for _ in 0..rounds {
        let (h, r) = closed_loop(stack.baseline, concurrency, seconds).await;
        cwo.add(h).expect("merge");
        rwo += r / rounds as f64;
        let (h, r) = closed_loop(stack.front, concurrency, seconds).await;
        cw.add(h).expect("merge");
        rw += r / rounds as f64;
    }
    row(
        &format!("{concurrency} conns, Envoy alone"),
        &cwo,
        Some(rwo),
    );
    row(
        &format!("{concurrency} conns, Envoy + mulligan"),
        &cw,
        Some(rw),
    );
    println!(
        "\nthroughput with mulligan / without: {:.2}; p50 added (sequential): {} µs; p99 added: {} µs",
        rw / rwo,
        with.value_at_quantile(0.5) as i64 - without.value_at_quantile(0.5) as i64,
        with.value_at_quantile(0.99) as i64 - without.value_at_quantile(0.99) as i64,
    );
    let failed = stack.ext_proc_stat("failure_mode_allowed").await;
    println!("Envoy ext_proc fallbacks during the run (must be 0): {failed}");
}
