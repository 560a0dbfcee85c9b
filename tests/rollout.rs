//! A short run of the rollout harness (`rig/src/rollout`): the correctness
//! claims behind the benchmark figures, asserted. The harness must see the
//! 503s a rollout leaks through Envoy alone (A), and mulligan (C, D and the
//! default decide wiring E) must leave none of them, and run no request twice.

use rig::rollout::scenario::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_with_eds_lag_leaks_nothing_through_mulligan() {
    // A, B, C and D side by side on the same pods and the same rollout.
    let opts = Options {
        duration_s: Some(8.0),
        rate: Some(100.0),
        progress: false,
        ..Options::default()
    };
    let result = scenario::run("eds-lag", &opts).await;
    println!("{}", result.markdown());
    let by = |letter: &str| {
        result
            .variants
            .iter()
            .find(|v| v.variant == letter)
            .unwrap_or_else(|| panic!("variant {letter} ran"))
    };
    let (a, c, d, e) = (by("A"), by("C"), by("D"), by("E"));
    assert!(
        a.requests >= 790 && c.requests >= 790,
        "the load ran: {a:?}"
    );
    assert!(
        a.rollout_errors > 0,
        "the harness must see the 503s Envoy alone leaks during a rollout"
    );
    assert_eq!(
        c.rollout_errors, 0,
        "mulligan must leave no rollout 503: {:?}",
        c.errors_by_cause
    );
    assert!(
        c.errors == 0,
        "no 5xx at all through mulligan: {:?}",
        c.errors_by_cause
    );
    assert!(c.amplification < 1.5, "amplification {}", c.amplification);
    // Steer (D) avoids the failures instead of retrying them.
    assert_eq!(d.errors, 0, "steer + rescue: {:?}", d.errors_by_cause);
    assert!(
        d.amplification <= c.amplification,
        "steer should need fewer upstream attempts than rescue: D {} vs C {}",
        d.amplification,
        c.amplification
    );
    // The decide wiring (the default): nothing leaks, nothing runs twice.
    assert_eq!(e.errors, 0, "decide: {:?}", e.errors_by_cause);
    for v in [c, d, e] {
        assert_eq!(v.ran_twice, 0, "{} ran a request twice", v.variant);
    }
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
    assert!(text.starts_with("<svg") && text.contains("C: B + mulligan rescue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_mode_rolls_on_a_clock_and_samples_memory_and_fds() {
    // The 30-minute soak in miniature: the same code path, a shorter clock.
    let opts = Options {
        duration_s: Some(12.0),
        rate: Some(100.0),
        roll_every_s: Some(5.0),
        sample_every_s: Some(0.5),
        variants: vec![rig::rollout::proxies::Variant::C],
        progress: false,
        ..Options::default()
    };
    let result = scenario::run("soak", &opts).await;
    println!("{}", result.markdown());
    let c = &result.variants[0];
    assert_eq!(
        c.errors, 0,
        "no 5xx through mulligan: {:?}",
        c.errors_by_cause
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
        .find(|s| s.name == "C mulligan")
        .expect("mulligan sampled");
    assert!(mulligan.readings.len() >= 20, "{:?}", mulligan.readings);
    assert!(mulligan
        .readings
        .iter()
        .all(|r| r.rss_mib > 1.0 && r.fds > 3));
    let table = result.resources_markdown();
    assert!(table.contains("| C mulligan |") && table.contains("| C envoy |"));
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("soak-resources.svg");
    result.plot_resources(&svg).expect("plot");
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.contains("RSS MiB") && text.contains("open fds"));
}
