//! A short run of the rollout harness (`rig/src/rollout`): the correctness
//! claims behind the benchmark figures, asserted. The harness must see the
//! 503s a rollout leaks through Envoy alone, and mulligan must leave none of
//! them, and run no request twice.

use rig::rollout::{
    proxies::Variant,
    scenario::{self, Options},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_with_eds_lag_leaks_nothing_through_mulligan() {
    // Every variant side by side on the same pods and the same rollout.
    let opts = Options {
        duration_s: Some(8.0),
        rate: Some(100.0),
        progress: false,
        // The harness's figures use the shipped values; this test is about
        // mulligan's answers on a loaded machine (see render::tolerant).
        envoy_overrides: vec![(
            "MESSAGE_TIMEOUT",
            rig::render::LOADED_MESSAGE_TIMEOUT.to_string(),
        )],
        ..Options::default()
    };
    let result = scenario::run("eds-lag", &opts).await;
    println!("{}", result.markdown());
    let by = |v: Variant| {
        result
            .variants
            .iter()
            .find(|r| r.variant == v.name())
            .unwrap_or_else(|| panic!("variant {} ran", v.name()))
    };
    let (alone, gateway, m) = (
        by(Variant::EnvoyAlone),
        by(Variant::GatewayRetries),
        by(Variant::Mulligan),
    );
    assert!(
        alone.requests >= 790 && m.requests >= 790,
        "the load ran: {alone:?}"
    );
    assert!(
        alone.rollout_errors > 0,
        "the harness must see the 503s Envoy alone leaks during a rollout"
    );
    assert!(gateway.requests >= 790, "the load ran: {gateway:?}");
    // Through mulligan, no rollout 503 reaches a client, with one exception
    // the first law demands: a POST whose connection broke after it was
    // sent (the app may have run it) is never sent again, so its 503
    // stands, as through Envoy alone. A loaded machine makes that race (a
    // pod closing a connection as Envoy reuses it) show up now and then.
    let unsafe_resets = m.post_errors_by_cause.get("reset").copied().unwrap_or(0);
    assert_eq!(
        m.errors, unsafe_resets,
        "mulligan must leave no 5xx but a POST cut after it was sent: all {:?}, POSTs {:?}",
        m.errors_by_cause, m.post_errors_by_cause
    );
    assert!(
        unsafe_resets <= 2,
        "more than a race: {:?}",
        m.errors_by_cause
    );
    assert!(m.amplification < 1.5, "amplification {}", m.amplification);
    assert_eq!(m.ran_twice, 0, "mulligan ran a request twice");
    // The rollout really happened while the load ran.
    assert!(result
        .events
        .iter()
        .any(|(_, e)| e.contains("rolling update")));
    // And the timeline plot renders.
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("eds-lag.svg");
    result.plot(&svg).expect("plot");
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.starts_with("<svg") && text.contains(Variant::Mulligan.label()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_mode_rolls_on_a_clock_and_samples_memory_and_fds() {
    // The 30-minute soak in miniature: the same code path, a shorter clock.
    let opts = Options {
        duration_s: Some(12.0),
        rate: Some(100.0),
        roll_every_s: Some(5.0),
        sample_every_s: Some(0.5),
        variants: vec![Variant::Mulligan],
        progress: false,
        // The harness's figures use the shipped values; this test is about
        // mulligan's answers on a loaded machine (see render::tolerant).
        envoy_overrides: vec![(
            "MESSAGE_TIMEOUT",
            rig::render::LOADED_MESSAGE_TIMEOUT.to_string(),
        )],
        ..Options::default()
    };
    let result = scenario::run("soak", &opts).await;
    println!("{}", result.markdown());
    let m = &result.variants[0];
    assert_eq!(
        m.errors, 0,
        "no 5xx through mulligan: {:?}",
        m.errors_by_cause
    );
    let rollouts = result
        .events
        .iter()
        .filter(|(_, e)| e.contains("rolling update") && e.contains("surge"))
        .count();
    assert!(rollouts >= 2, "a rollout every 5 s: {:?}", result.events);
    let mulligan = result
        .resources
        .iter()
        .find(|s| s.name == "mulligan (mulligan)")
        .expect("mulligan sampled");
    assert!(mulligan.readings.len() >= 20, "{:?}", mulligan.readings);
    assert!(mulligan
        .readings
        .iter()
        .all(|r| r.rss_mib > 1.0 && r.fds > 3));
    let table = result.resources_markdown();
    assert!(table.contains("| mulligan (mulligan) |") && table.contains("| envoy (mulligan) |"));
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("soak-resources.svg");
    result.plot_resources(&svg).expect("plot");
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.contains("RSS MiB") && text.contains("open fds"));
}
