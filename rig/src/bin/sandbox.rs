//! `make run`: Envoy + mulligan + two sample pods on loopback, on the
//! default ports, until Ctrl-C. Built from the test rig so that what a
//! visitor pokes at is exactly what the tests prove.
use rig::{
    envoy::Envoy,
    mulligan::Mulligan,
    pods::{Pod, PodState},
    render,
};

#[tokio::main]
async fn main() {
    let a = Pod::start("pod-a", PodState::Ready).await;
    let b = Pod::start("pod-b", PodState::Ready).await;
    let endpoints = format!("{},{}", a.addr, b.addr);
    // mulligan on its built-in defaults (gRPC 127.0.0.1:50051, admin :9902).
    let mulligan = Mulligan::spawn(&["serve", "--endpoints", &endpoints]).await;
    let yaml = render::standalone(
        &[a.addr, b.addr],
        mulligan.grpc.port(),
        &[
            ("ADMIN_PORT", "9901".into()),
            ("LISTEN_PORT", "10000".into()),
            ("BASELINE_PORT", "10001".into()),
        ],
    );
    let envoy = Envoy::start(&yaml).await;
    let front = envoy.listener("mulligan").await;
    println!(
        "\nmulligan sandbox is up: Envoy + mulligan + pods {} ({}) and {} ({})\n\n  \
         curl http://{front}/                      # through Envoy with mulligan\n  \
         curl http://{}/                      # the same route without mulligan\n  \
         curl http://{}/metrics | grep mulligan_answers   # failed attempts judged (healthy ones never reach mulligan)\n  \
         curl http://{}/v1/endpoints               # the endpoint registry\n  \
         curl -X POST http://{}/v1/endpoints/{}/drain   # preStop for pod-b\n  \
         Envoy admin: http://{}/\n\nCtrl-C stops everything.",
        a.name(),
        a.addr,
        b.name(),
        b.addr,
        envoy.listener("baseline").await,
        mulligan.admin,
        mulligan.admin,
        mulligan.admin,
        b.addr,
        envoy.admin,
    );
    // Ctrl-C or SIGTERM: dropping Envoy and mulligan stops them too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping");
}
