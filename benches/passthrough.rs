//! Healthy-traffic overhead: the same requests to the same three pods,
//! through Envoy alone (the reference bootstrap's baseline listener) and
//! Envoy with mulligan (`envoy.yaml`: mulligan is asked only about failed
//! attempts), interleaved so both see the same machine noise. Prints
//! figures, and the ext_proc streams opened per 1,000 healthy requests;
//! asserts nothing about speed.
//!
//! `cargo bench --bench passthrough [-- --requests N --concurrency C --seconds S --rounds R]`

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rig::{
    bench::{arg, cpu_seconds, header, histogram, row},
    client::{HttpClient, Proto},
    pods::PodState,
    Stack,
};

/// Open loop: `rate` requests per second for `seconds`, latency measured
/// from each request's intended send time.
async fn open_loop(addr: SocketAddr, rate: u64, seconds: u64) -> Histogram<u64> {
    let http = HttpClient::new(Proto::Http1);
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..rate * seconds {
        let intended = start + every * i as u32;
        tokio::time::sleep_until(intended).await;
        let http = http.clone();
        tasks.spawn(async move {
            let r = http.get(addr, "/").await.expect("request");
            assert_eq!(r.status, 200);
            intended.elapsed().as_micros() as u64
        });
    }
    let mut h = histogram();
    while let Some(us) = tasks.join_next().await {
        h.record(us.expect("task")).expect("record");
    }
    h
}

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
    let rounds = arg("--rounds", 2);
    let rate = arg("--rate", 1500);
    let pods = [
        ("a", PodState::Ready),
        ("b", PodState::Ready),
        ("c", PodState::Ready),
    ];
    let stack = Stack::start(&pods, &[], &[]).await;
    let targets = [
        ("Envoy alone", stack.baseline),
        ("Envoy + mulligan", stack.front),
    ];
    let mut sent = [0u64; 2];
    let http = HttpClient::new(Proto::Http1);
    for (_, addr) in targets {
        for _ in 0..300 {
            http.get(addr, "/").await.expect("warm-up");
        }
    }

    // Sequential, interleaved: the latency of one request at a time.
    let mut seq = [histogram(), histogram()];
    for i in 0..requests as usize * 2 {
        let k = i % 2;
        let t = Instant::now();
        let r = http.get(targets[k].1, "/").await.expect("request");
        assert_eq!(r.status, 200);
        sent[k] += 1;
        seq[k]
            .record(t.elapsed().as_micros() as u64)
            .expect("record");
    }

    // The Envoy (and mulligan) serving each target, for CPU per request.
    let procs = [
        (stack.envoy.pid(), None),
        (stack.envoy.pid(), Some(stack.mulligan.pid())),
    ];
    let cpu = |k: usize| {
        let (envoy, mulligan) = procs[k];
        (cpu_seconds(envoy), mulligan.map_or(0.0, cpu_seconds))
    };

    // Open loop at a fixed rate: the same load for every target.
    let mut fixed = [histogram(), histogram()];
    let mut cpu_us = [(0.0f64, 0.0f64); 2];
    for _ in 0..rounds {
        for (k, (_, addr)) in targets.iter().enumerate() {
            let before = cpu(k);
            fixed[k]
                .add(open_loop(*addr, rate, seconds).await)
                .expect("merge");
            sent[k] += rate * seconds;
            let after = cpu(k);
            let n = (rate * seconds * rounds) as f64;
            cpu_us[k].0 += (after.0 - before.0) * 1e6 / n;
            cpu_us[k].1 += (after.1 - before.1) * 1e6 / n;
        }
    }

    // Closed loop under concurrency, in alternating rounds so drift in the
    // machine's load hits every target alike.
    // Envoy's CPU per request there too: on a shared machine the client
    // and other processes compete for the cores, so throughput may not be
    // bound by Envoy's worker; its CPU per request is what saturation
    // throughput is when it is.
    let mut conc = [histogram(), histogram()];
    let mut rps = [0.0f64; 2];
    let mut busy = [(0.0f64, 0u64); 2];
    for _ in 0..rounds {
        for (k, (_, addr)) in targets.iter().enumerate() {
            let before = cpu(k).0;
            let (h, r) = closed_loop(*addr, concurrency, seconds).await;
            busy[k].0 += cpu(k).0 - before;
            busy[k].1 += h.len();
            sent[k] += h.len();
            conc[k].add(h).expect("merge");
            rps[k] += r / rounds as f64;
        }
    }

    header("Healthy traffic through Envoy 1.40 (3 pods)");
    for (k, (label, _)) in targets.iter().enumerate() {
        row(&format!("sequential, {label}"), &seq[k], None);
    }
    for (k, (label, _)) in targets.iter().enumerate() {
        row(&format!("{rate}/s fixed, {label}"), &fixed[k], None);
    }
    for (k, (label, _)) in targets.iter().enumerate() {
        row(
            &format!("{concurrency} conns, {label}"),
            &conc[k],
            Some(rps[k]),
        );
    }
    println!(
        "\nCPU per request at {rate}/s (µs): Envoy alone {:.0}; with mulligan: Envoy {:.0} + mulligan {:.0}",
        cpu_us[0].0, cpu_us[1].0, cpu_us[1].1
    );
    let p = |h: &Histogram<u64>, q| h.value_at_quantile(q) as i64;
    println!(
        "throughput vs Envoy alone at saturation: {:.2}",
        rps[1] / rps[0]
    );
    let per_request = |k: usize| busy[k].0 * 1e6 / busy[k].1.max(1) as f64;
    println!(
        "Envoy CPU per request at saturation (µs): Envoy alone {:.1}, with mulligan {:.1}; \
         Envoy alone / with mulligan: {:.2}",
        per_request(0),
        per_request(1),
        per_request(0) / per_request(1),
    );
    println!(
        "added latency, sequential p50/p99: {:+}/{:+} µs",
        p(&seq[1], 0.5) - p(&seq[0], 0.5),
        p(&seq[1], 0.99) - p(&seq[0], 0.99),
    );
    let streams = stack
        .mulligan
        .metric("mulligan_ext_proc_streams_total")
        .await;
    println!(
        "ext_proc streams per 1,000 healthy requests: {:.1} ({streams} in {})",
        1000.0 * streams / sent[1].max(1) as f64,
        sent[1],
    );
}
