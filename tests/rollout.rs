//! A short run of the rollout harness (`rig/src/rollout`): the correctness
//! claims behind the benchmark figures, asserted. The harness must see the
//! 503s a rollout leaks through Envoy alone, and mulligan must leave none of
//! them, and run no request twice.

use rig::rollout::{
    own::OwnBootstrap,
    proxies::Variant,
    report::VariantResult,
    scenario::{self, Options},
};

/// Through mulligan, no rollout 503 reaches a client but one: a connection
/// cut after the request went out (a pod closing a connection as Envoy
/// reuses it, which a loaded machine makes show up now and then). No filter
/// sees a reset, so Envoy's 503 stands, as through Envoy alone
/// (docs/decide.md, Limits).
fn leaks_nothing_but_cut_connections(m: &VariantResult) {
    let resets = m.errors_by_cause.get("reset").copied().unwrap_or(0);
    assert_eq!(
        m.errors, resets,
        "mulligan must leave no 5xx but a connection cut mid-request: all {:?}, POSTs {:?}, seen {:?}",
        m.errors_by_cause, m.post_errors_by_cause, m.seen_by_cause
    );
    assert!(resets <= 2, "more than a race: {:?}", m.seen_by_cause);
}

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
    leaks_nothing_but_cut_connections(m);
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
    leaks_nothing_but_cut_connections(m);
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

/// The example of a user's bootstrap: the reference one without mulligan.
fn envoy_alone_example() -> std::path::PathBuf {
    rig::repo_root().join("envoy-config/standalone/examples/envoy-alone.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_of_the_users_runs_as_one_more_variant() {
    // The reference bootstrap without mulligan's filters, as a user would
    // pass it: `--bootstrap mine=envoy-alone.yaml`.
    let arg = format!("mine={}", envoy_alone_example().display());
    let own = OwnBootstrap::parse(&arg).expect("the example has every placeholder");
    own.validate().expect("Envoy accepts the rendered example");
    let opts = Options {
        duration_s: Some(8.0),
        rate: Some(100.0),
        progress: false,
        variants: vec![Variant::EnvoyAlone],
        bootstraps: vec![own],
        ..Options::default()
    };
    let result = scenario::run("eds-lag", &opts).await;
    let table = result.markdown();
    println!("{table}");
    let by = |name: &str| {
        result
            .variants
            .iter()
            .find(|r| r.variant == name)
            .unwrap_or_else(|| panic!("variant {name} ran: {table}"))
    };
    let (alone, mine) = (by(Variant::EnvoyAlone.name()), by("mine"));
    assert!(
        mine.label.starts_with("mine (") && table.contains(&format!("| {} |", mine.label)),
        "the table names the user's variant: {table}"
    );
    assert!(mine.requests >= 790, "the load ran through it: {mine:?}");
    // Its requests reached the pods under its own tag, once each.
    assert!(
        mine.amplification >= 0.9 && mine.amplification < 1.5,
        "the pods counted its requests: {mine:?}"
    );
    assert_eq!(mine.ran_twice, 0, "no retries: nothing ran twice");
    // The same configuration as Envoy alone leaks as Envoy alone does.
    assert!(
        alone.rollout_errors > 0 && mine.rollout_errors > 0,
        "both leak the rollout's 503s: alone {:?}, mine {:?}",
        alone.errors_by_cause,
        mine.errors_by_cause
    );
    // Within noise: the two loads are independent, the rollout and the EDS
    // lag the same (about 100 each in this run; a factor of two is far
    // outside what timing alone moves).
    let (a, m) = (alone.rollout_errors, mine.rollout_errors);
    assert!(
        m <= 2 * a && a <= 2 * m,
        "the user's copy of Envoy alone leaks as Envoy alone does: alone {a}, mine {m}"
    );
    assert_eq!(mine.errors_per_second.iter().sum::<u64>(), mine.errors);
    assert!(mine.mulligan.is_none(), "no mulligan runs beside it");
}

#[test]
fn a_bootstrap_the_harness_cannot_run_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let example = std::fs::read_to_string(envoy_alone_example()).expect("example");

    let no_listen = write("no-listen.yaml", &example.replace("${LISTEN_PORT}", "8080"));
    let e = OwnBootstrap::parse(&no_listen).expect_err("no ${LISTEN_PORT}");
    assert!(e.contains("${LISTEN_PORT}"), "{e}");

    // The reference bootstrap as shipped lists its endpoints statically:
    // a rollout replaces every pod, so the harness asks for EDS.
    let reference = rig::repo_root().join("envoy-config/standalone/envoy.yaml");
    let e = OwnBootstrap::parse(&reference.display().to_string()).expect_err("static endpoints");
    assert!(
        e.contains("${APP_ENDPOINTS}") && e.contains("${EDS_FILE}"),
        "{e}"
    );

    // Every placeholder present, but Envoy would refuse the result.
    let broken = write(
        "broken.yaml",
        &example.replace(
            "connect_timeout: 1s",
            "connect_timeout: 1s\n    no_such_field: 1",
        ),
    );
    let own = OwnBootstrap::parse(&format!("broken={broken}")).expect("placeholders are there");
    assert_eq!(own.name, "broken");
    let e = own
        .validate()
        .expect_err("envoy --mode validate refuses it");
    assert!(e.contains("no_such_field"), "{e}");

    // A placeholder with neither a value nor a default.
    let hole = write(
        "hole.yaml",
        &example.replace("timeout: 15s", "timeout: ${TIMEOUT}"),
    );
    let e = OwnBootstrap::parse(&hole)
        .expect("placeholders are there")
        .validate()
        .expect_err("a hole");
    assert!(e.contains("${TIMEOUT}"), "{e}");
}
