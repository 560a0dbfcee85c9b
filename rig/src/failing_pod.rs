//! A pod that runs each request and then answers a plain 503 (no drain
//! signal), beside a ready pod: a POST the failing pod ran must not run
//! again, whoever would retry it, and its 503 stands, as with Envoy alone;
//! a GET (safe to run twice) still reaches the ready pod. The tests run it
//! with several mulligan processes behind the `mulligan` cluster
//! ([`Mulligans`]), so a failed attempt and its retry's gate may be judged
//! by different processes.

use std::{net::SocketAddr, sync::Arc};

use http::Method;

use crate::{
    envoy::Envoy,
    executions,
    mulligan::Mulligans,
    pods::{Pod, PodState},
};

/// The failing pod, then the ready one.
pub async fn pods() -> Vec<Arc<Pod>> {
    vec![
        Pod::start("failing", PodState::Failing).await,
        Pod::start("ready", PodState::Ready).await,
    ]
}

/// What [`run`] saw, beyond what it asserts.
pub struct Outcome {
    /// POSTs the failing pod ran (each answered 503).
    pub failing: usize,
    /// Retries mulligan's gate stopped, over all processes.
    pub gate_stops: f64,
}

/// POSTs the test sends.
const POSTS: usize = 40;

/// 40 POSTs, then 20 GETs, each with its own id ([`executions::send`]), to
/// Envoy's listener at `front` with `headers`, behind [`pods`] and
/// `mulligans`. Panics unless every GET is served, every POST is answered
/// 200 or 503, some POST reached the failing pod (else the run proves
/// nothing), every process judged some attempt, no POST ran twice, and the
/// POSTs answered 503 are exactly those the failing pod ran.
pub async fn run(
    front: SocketAddr,
    headers: &[(&str, &str)],
    pods: &[Arc<Pod>],
    mulligans: &Mulligans,
    envoy: &Envoy,
) -> Outcome {
    let (mut refused, mut served) = (0, 0);
    for i in 0..POSTS {
        let r = executions::send(front, headers, Method::POST, "/echo", &format!("post-{i}")).await;
        match r.status.as_u16() {
            503 => refused += 1,
            200 => served += 1,
            s => panic!("POST {i}: status {s}: {:?}", r.body),
        }
    }
    for i in 0..20 {
        let r = executions::send(front, headers, Method::GET, "/", &format!("get-{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {:?}", r.body);
    }
    let twice = executions::run_twice(pods, "post-");
    let failing = executions::ran(&pods[0], "post-");
    let streams = mulligans.streams().await;
    let gate_stops = mulligans.answers("stopped").await;
    eprintln!(
        "POSTs run by the failing pod: {failing} of {POSTS}; run twice: {}; \
         503 {refused}, 200 {served}; streams per mulligan: {streams:?}; \
         gate stops: {gate_stops}",
        twice.len()
    );
    assert!(
        failing > 0,
        "no POST reached the failing pod: the test proves nothing"
    );
    assert!(
        streams.iter().all(|s| *s > 0.0),
        "every mulligan process judged some attempt: {streams:?}"
    );
    assert_eq!(
        twice,
        Vec::<(String, u32)>::new(),
        "POSTs run twice (of {failing} the failing pod ran)\n{}",
        envoy.stats("retry").await
    );
    assert_eq!(
        refused, failing,
        "every POST the failing pod ran got its 503, no other did"
    );
    Outcome {
        failing,
        gate_stops,
    }
}
