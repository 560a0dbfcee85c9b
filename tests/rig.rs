//! Smoke test of the rig itself: Envoy starts, a pod answers through it.

use rig::{
    client,
    envoy::Envoy,
    pods::{Pod, PodState},
    render,
};

#[tokio::test]
async fn envoy_baseline_listener_reaches_a_pod() {
    let pod = Pod::start("a", PodState::Ready).await;
    // mulligan is not running: the baseline listener does not need it.
    let envoy = Envoy::start(&render::standalone(&[pod.addr], 1, &[])).await;
    let addr = envoy.listener("baseline").await;
    let r = client::get(addr, "/").await.expect("GET through Envoy");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from a\n");
    assert_eq!(r.headers["x-pod"], "a");
}
