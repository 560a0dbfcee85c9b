//! What a rescued request costs the client: the same requests, interleaved,
//! (1) straight to a pod (the upstream's own latency), (2) through Envoy +
//! mulligan to a ready pod, (3) through Envoy + mulligan to a gone pod,
//! rescued by a replay to the ready one. Prints figures; asserts only that
//! every request succeeded.
//!
//! `cargo bench --bench rescue [-- --requests N --service-ms MS]`

use std::time::Instant;

use rig::{
    bench::{arg, header, histogram, row},
    client::{HttpClient, Proto},
    pods::PodState,
    Stack,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests = arg("--requests", 2000);
    let service_ms = arg("--service-ms", 0);
    let path = if service_ms == 0 {
        "/".to_string()
    } else {
        format!("/delay/{service_ms}")
    };
    // Healthy: Envoy and mulligan both see the ready pod.
    let healthy = Stack::start(&[("ready", PodState::Ready)], &[], &[]).await;
    // Rescued: Envoy only knows an endpoint where nothing listens (every
    // request is refused there); mulligan knows the ready pod and replays.
    // Every request here needs a replay, far past the default budget (20% +
    // 10/s), which exists to stop exactly that in an outage: opened here.
    let rescued = Stack::with_config(
        &[("ready", PodState::Ready)],
        "[budget]\nratio = 2.0\n",
        &[(
            "APP_ENDPOINTS",
            "[{endpoint: {address: {socket_address: {address: \"127.0.0.1\", port_value: 1}}}}]"
                .into(),
        )],
    )
    .await;
    let pod = healthy.pod("ready").addr;
    let http = HttpClient::new(Proto::Http1);
    let targets = [pod, healthy.front, rescued.front];
    for t in targets {
        for _ in 0..100 {
            let r = http.get(t, &path).await.expect("warm-up");
            assert_eq!(r.status, 200);
        }
    }
    let mut hs = [histogram(), histogram(), histogram()];
    for i in 0..requests as usize * 3 {
        let k = i % 3;
        let t = Instant::now();
        let r = http.get(targets[k], &path).await.expect("request");
        assert_eq!(r.status, 200, "target {k}");
        hs[k]
            .record(t.elapsed().as_micros() as u64)
            .expect("record");
    }
    header(&format!(
        "Rescue latency (service time {service_ms} ms, sequential, interleaved)"
    ));
    row("pod directly", &hs[0], None);
    row("Envoy + mulligan, healthy", &hs[1], None);
    row("Envoy + mulligan, rescued", &hs[2], None);
    let p = |h: &hdrhistogram::Histogram<u64>, q| h.value_at_quantile(q) as i64;
    println!(
        "\nrescued vs healthy through Envoy: +{} µs at p50, +{} µs at p99; rescued vs the pod alone: +{} µs at p50",
        p(&hs[2], 0.5) - p(&hs[1], 0.5),
        p(&hs[2], 0.99) - p(&hs[1], 0.99),
        p(&hs[2], 0.5) - p(&hs[0], 0.5),
    );
    let rescues = rescued
        .mulligan
        .metric(r#"mulligan_rescues_total{outcome="rescued"}"#)
        .await;
    println!(
        "rescues counted by mulligan: {rescues} (expected {})",
        requests + 100
    );
}
