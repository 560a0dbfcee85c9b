//! `make run`'s sandbox, driven as a newcomer drives it: the binary started
//! with a load, the printed curl commands sent to its control port, and
//! what its view prints read back. A drain and a kill leak failures
//! through Envoy Gateway's default retries and none through mulligan,
//! whose answers show the retries; a restart of every pod at once fails
//! what arrives meanwhile through Envoy Gateway's retries, while mulligan
//! holds it until the pods are ready.

use std::time::Duration;

use http::Method;
use rig::sandbox::driver::Driver;

/// Waits on a loaded 2-core machine: Envoy's start, a frame, a pod's boot.
const START: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_and_a_kill_leak_through_envoy_gateways_retries_and_not_through_mulligan() {
    let mut s = Driver::start(&["--ephemeral", "--load", "40", "--boot", "2"], START).await;
    for printed in ["/drain/b", "/kill/b", "/restart/all", "/scale/0", "/pods"] {
        assert!(
            s.intro.contains(&format!("{}{printed}", s.control)),
            "the sandbox prints the command {printed}:\n{}",
            s.intro
        );
    }
    s.wait_for("load through both listeners", SETTLE, |f| {
        f.gateway.ok > 0 && f.mulligan.ok > 0
    })
    .await;

    let drained = s.post("/drain/b").await;
    assert!(
        drained.contains("b: draining") && drained.contains("mulligan heard"),
        "{drained}"
    );
    s.wait_for(
        "mulligan retrying away from the draining pod",
        SETTLE,
        |f| f.pods.contains("b draining") && f.retried > 0,
    )
    .await;
    let killed = s.post("/kill/c").await;
    assert!(killed.contains("c: gone"), "{killed}");
    let (_, pods) = s.command(Method::GET, "/pods").await;
    assert!(
        pods.contains("b draining") && pods.contains("c gone"),
        "{pods}"
    );

    // One pod left of three: Envoy Gateway's three attempts (least request
    // favours the idle, failing pods) do not always find it.
    s.wait_for("Envoy Gateway's retries failing a request", SETTLE, |f| {
        f.gateway.failed_in_all > 0
    })
    .await;
    // Three more seconds under the same load.
    let mut after = s.wait_for("a second of the view", SETTLE, |_| true).await;
    for _ in 0..2 {
        after = s.wait_for("a second of the view", SETTLE, |_| true).await;
    }
    assert_eq!(
        after.mulligan.failed_in_all,
        0,
        "nothing fails through mulligan after a drain and a kill:\n{}",
        s.recent(10)
    );
    assert!(
        after.retried > 0 && after.stood == 0,
        "mulligan's answers count the retries, and none stood:\n{}",
        s.recent(10)
    );

    // Every pod restarts at once: nothing can serve for two seconds.
    // Envoy Gateway's retries fail what arrives meanwhile; mulligan holds
    // it until a pod is ready. A request at the edge (on a pod at the
    // moment it exits) may fail through either listener, so mulligan is
    // held to a tenth of Envoy Gateway's failures, not to none.
    let (gateway_before, mulligan_before) =
        (after.gateway.failed_in_all, after.mulligan.failed_in_all);
    let restarted = s.post("/restart/all").await;
    assert_eq!(restarted.matches("restarting").count(), 3, "{restarted}");
    let back = s
        .wait_for(
            "every pod ready again, held requests answered",
            SETTLE,
            |f| f.pods == "a ready, b ready, c ready" && f.held > 0 && f.mulligan.waiting < 10,
        )
        .await;
    let gateway_failed = back.gateway.failed_in_all - gateway_before;
    let mulligan_failed = back.mulligan.failed_in_all - mulligan_before;
    assert!(
        gateway_failed > 20,
        "Envoy Gateway's retries fail while no pod is ready:\n{}",
        s.recent(10)
    );
    assert!(
        mulligan_failed * 10 <= gateway_failed,
        "mulligan holds the requests until a pod is ready \
         ({mulligan_failed} failed, Envoy Gateway's retries {gateway_failed}):\n{}",
        s.recent(10)
    );

    let (status, text) = s.command(Method::POST, "/reboot/a").await;
    assert_eq!(status, 400, "an unknown command is refused: {text}");
    assert!(
        text.contains("POST /drain/T"),
        "with the list of commands: {text}"
    );
}
