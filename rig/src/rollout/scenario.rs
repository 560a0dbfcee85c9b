//! The named scenarios and the runner that plays one against every variant.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::mulligan::parse_metric;

use super::{
    cluster::{Cluster, DrainMode, Spec as ClusterSpec},
    load::{self, Spec as LoadSpec},
    proxies::{Proxy, Variant},
    report::{ProcStats, ScenarioResult, VariantResult},
    resources,
};

/// Scenarios: (name, what it shows).
pub const SCENARIOS: [(&str, &str); 9] = [
    (
        "rolling",
        "rolling updates, maxSurge 25%, maxUnavailable 0, pods reject while draining",
    ),
    (
        "aggressive",
        "rolling updates, maxSurge 0, maxUnavailable 50%",
    ),
    (
        "scale-from-one",
        "scale 1 → 4 → 1 with slow boot and readiness that reports before the app serves",
    ),
    (
        "eds-lag",
        "rolling updates with a 2 s EDS propagation lag (a slow control plane)",
    ),
    (
        "mass-drain",
        "8 replicas, 6 drained at once while Envoy still lists them (EDS lag 1.5 s), then replaced",
    ),
    (
        "outage",
        "every pod killed for 10 s, then new pods boot (amplification must stay in budget)",
    ),
    (
        "serving-drain",
        "rolling updates, pods keep serving with connection: close while draining",
    ),
    (
        "soak",
        "30 minutes at a fixed rate with a rolling update every minute; RSS and fds sampled throughout (mulligan)",
    ),
    (
        "demo",
        "the 60-second default: repeated mass drains as in `mass-drain`, where Envoy Gateway's retries leak",
    ),
];

/// Overrides from the command line (or a test).
#[derive(Clone, Debug)]
pub struct Options {
    pub duration_s: Option<f64>,
    pub rate: Option<f64>,
    pub post_fraction: Option<f64>,
    pub fresh_connections: bool,
    pub eds_lag_ms: Option<u64>,
    pub replicas: Option<usize>,
    /// Start a rolling update this often (scenarios that roll on a clock).
    pub roll_every_s: Option<f64>,
    /// How often to read RSS and open fds of mulligan and Envoy.
    pub sample_every_s: Option<f64>,
    pub variants: Vec<Variant>,
    /// Extra mulligan config (TOML) for the variants that run it.
    pub mulligan_toml: String,
    /// Placeholders of the reference bootstrap to fill otherwise than as
    /// shipped (a test on a loaded machine: `MESSAGE_TIMEOUT`).
    pub envoy_overrides: Vec<(&'static str, String)>,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration_s: None,
            rate: None,
            post_fraction: None,
            fresh_connections: false,
            eds_lag_ms: None,
            replicas: None,
            roll_every_s: None,
            sample_every_s: None,
            variants: Variant::available(),
            mulligan_toml: "[probe]\npath = \"/ready\"\ninterval = \"200ms\"\n".into(),
            envoy_overrides: Vec::new(),
            progress: true,
        }
    }
}

/// The defaults every scenario starts from.
pub fn base() -> (ClusterSpec, LoadSpec) {
    (
        ClusterSpec {
            replicas: 4,
            boot_ms: (1000, 2000),
            probe_period_ms: 500,
            warmup_ms: 0,
            drain: DrainMode::Reject,
            drain_window_ms: 2000,
            exit_grace_ms: 1000,
            eds_lag_ms: 200,
            cluster_name: "app".into(),
        },
        LoadSpec {
            rate: 200.0,
            duration_s: 30.0,
            post_fraction: 0.2,
            post_bytes: 512,
            fresh_connections: false,
            service_ms: (1, 5),
        },
    )
}

/// The cluster and load a scenario starts from.
pub fn spec(name: &str) -> Option<(ClusterSpec, LoadSpec)> {
    let (mut c, mut l) = base();
    match name {
        "rolling" | "aggressive" => {}
        "demo" => {
            l.duration_s = 60.0;
            c.replicas = 8;
            c.eds_lag_ms = 1500;
        }
        "scale-from-one" => {
            c.replicas = 1;
            c.boot_ms = (3000, 5000);
            c.probe_period_ms = 300;
            c.warmup_ms = 1300;
        }
        "eds-lag" => c.eds_lag_ms = 2000,
        "mass-drain" => {
            c.replicas = 8;
            c.eds_lag_ms = 1500;
        }
        "outage" => l.duration_s = 25.0,
        "soak" => l.duration_s = 1800.0,
        "serving-drain" => c.drain = DrainMode::KeepServing,
        _ => return None,
    }
    Some((c, l))
}

/// What the controller does during the run, until `until`. `roll_every`
/// paces the scenarios that roll on a clock (the soak).
pub async fn script(name: &str, cluster: Arc<Cluster>, until: Instant, roll_every: Duration) {
    let n = cluster.spec.replicas;
    let settle = Duration::from_secs(2);
    tokio::time::sleep(settle).await;
    match name {
        "soak" => {
            let mut next = Instant::now();
            while next + Duration::from_secs(4) < until {
                cluster.rolling_update(n.div_ceil(4), 0).await;
                next += roll_every;
                tokio::time::sleep_until(next).await;
            }
        }
        "scale-from-one" => {
            while Instant::now() + Duration::from_secs(8) < until {
                cluster.scale_to(4).await;
                cluster.wait_ready(4, Duration::from_secs(10)).await;
                tokio::time::sleep(settle).await;
                cluster.scale_to(1).await;
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        }
        "outage" => {
            cluster.outage(Duration::from_secs(10)).await;
        }
        "mass-drain" | "demo" => {
            // Six of eight drain at once (maxUnavailable 75%, no surge),
            // while Envoy's endpoint list still shows them for the lag.
            while Instant::now() + Duration::from_secs(6) < until {
                cluster.rolling_update(0, n * 3 / 4).await;
                tokio::time::sleep(settle).await;
            }
        }
        _ => {
            let (surge, unavailable) = if name == "aggressive" {
                (0, n / 2)
            } else {
                (n.div_ceil(4), 0)
            };
            while Instant::now() + Duration::from_secs(4) < until {
                cluster.rolling_update(surge, unavailable).await;
                tokio::time::sleep(settle).await;
            }
        }
    }
}

/// Of the requests tagged `tag`: how many some app ran more than once,
/// and how many runs the apps made in all.
fn executions(cluster: &Cluster, tag: &str) -> (u64, u64) {
    let prefix = format!("{tag}-");
    let mut runs: std::collections::HashMap<String, u32> = Default::default();
    for pod in cluster.all_pods() {
        for (id, n) in pod.executions() {
            if id.starts_with(&prefix) {
                *runs.entry(id).or_default() += n;
            }
        }
    }
    let twice = runs.values().filter(|n| **n > 1).count() as u64;
    (twice, runs.values().map(|n| u64::from(*n)).sum())
}

/// The sum of every sample in `text` whose labels contain `labels`.
fn sum_matching(text: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Runs scenario `name` against every variant in `opts`.
pub async fn run(name: &str, opts: &Options) -> ScenarioResult {
    let (mut cspec, mut lspec) = spec(name).unwrap_or_else(|| panic!("no scenario {name}"));
    if let Some(d) = opts.duration_s {
        lspec.duration_s = d;
    }
    if let Some(r) = opts.rate {
        lspec.rate = r;
    }
    if let Some(p) = opts.post_fraction {
        lspec.post_fraction = p;
    }
    if let Some(l) = opts.eds_lag_ms {
        cspec.eds_lag_ms = l;
    }
    if let Some(r) = opts.replicas {
        cspec.replicas = r;
    }
    lspec.fresh_connections |= opts.fresh_connections;

    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::new(cspec.clone(), dir.path()).await;
    let mut proxies = Vec::new();
    for v in &opts.variants {
        let p = Proxy::start(
            *v,
            cluster.envoy_eds(),
            cluster.mulligan_eds(),
            &opts.mulligan_toml,
            &opts.envoy_overrides,
        )
        .await;
        if let Some(m) = &p.mulligan {
            cluster.add_mulligan(m.admin);
        }
        proxies.push(p);
    }
    // Every proxy serves before the clock starts.
    for p in &proxies {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let r = crate::client::get(p.front, "/").await;
            if matches!(&r, Ok(r) if r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{:?} never served: {r:?}",
                p.variant
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let arrivals_before: Vec<u64> = (0..Variant::ALL.len())
        .map(|i| cluster.all_pods().iter().map(|p| p.arrivals(i)).sum())
        .collect();

    let start = Instant::now() + Duration::from_millis(100);
    let until = start + Duration::from_secs_f64(lspec.duration_s);
    let controller = {
        let cluster = Arc::clone(&cluster);
        let name = name.to_string();
        let roll_every = Duration::from_secs_f64(opts.roll_every_s.unwrap_or(60.0));
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            script(&name, cluster, until, roll_every).await;
        })
    };
    let watched: Vec<(String, u32)> = proxies
        .iter()
        .flat_map(|p| {
            let l = p.variant.name();
            let m = p
                .mulligan
                .as_ref()
                .map(|m| (format!("mulligan ({l})"), m.pid()));
            m.into_iter()
                .chain(std::iter::once((format!("envoy ({l})"), p.envoy.pid())))
        })
        .collect();
    let sampler = {
        let every = opts
            .sample_every_s
            .unwrap_or(if name == "soak" { 10.0 } else { 1.0 });
        tokio::spawn(resources::sample(
            watched.clone(),
            start,
            until,
            Duration::from_secs_f64(every),
        ))
    };
    let progress = Arc::new(Mutex::new(vec![0u64; proxies.len()]));
    let reporter = opts.progress.then(|| {
        let progress = Arc::clone(&progress);
        let names: Vec<&str> = proxies.iter().map(|p| p.variant.name()).collect();
        let total = lspec.duration_s;
        let mulligans: Vec<(String, u32)> = watched
            .iter()
            .filter(|(n, _)| n.starts_with("mulligan"))
            .cloned()
            .collect();
        // Long runs report less often.
        let every = Duration::from_secs(if total > 300.0 { 30 } else { 5 });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let done = progress.lock().unwrap().clone();
                let parts: Vec<String> = names
                    .iter()
                    .zip(done)
                    .map(|(l, n)| format!("{l} {n}"))
                    .collect();
                let t = start.elapsed().as_secs_f64();
                let mem: Vec<String> = mulligans
                    .iter()
                    .map(|(n, pid)| {
                        let r = resources::Reading::of(*pid, t);
                        format!("{n} {:.1} MiB {} fds", r.rss_mib, r.fds)
                    })
                    .collect();
                eprintln!(
                    "  [{t:>4.0}/{total:.0} s] requests done: {}; {}",
                    parts.join(", "),
                    mem.join(", ")
                );
            }
        })
    });
    let loads = proxies.iter().enumerate().map(|(i, p)| {
        load::run(
            p.front,
            p.variant.tag(),
            &lspec,
            start,
            Arc::clone(&progress),
            i,
        )
    });
    let samples = futures::future::join_all(loads).await;
    controller.abort();
    if let Some(r) = reporter {
        r.abort();
    }
    let resources = sampler.await.unwrap_or_default();

    let mut variants = Vec::new();
    for (p, s) in proxies.iter().zip(samples) {
        let i = p.variant.index();
        let arrivals: u64 = cluster
            .all_pods()
            .iter()
            .map(|pod| pod.arrivals(i))
            .sum::<u64>()
            - arrivals_before[i];
        let mut v = VariantResult::new(
            p.variant.name(),
            p.variant.label(),
            &s,
            arrivals,
            lspec.duration_s,
        );
        let (twice, runs) = executions(&cluster, p.variant.tag());
        v.ran_twice = twice;
        v.processed = runs as f64 / v.requests.max(1) as f64;
        if let Some(m) = &p.mulligan {
            v.mulligan = Some(ProcStats::of(m.pid()));
            let text = m.metrics().await;
            let retried = parse_metric(&text, r#"mulligan_answers_total{answer="retry"}"#)
                + parse_metric(
                    &text,
                    r#"mulligan_answers_total{answer="retry_after_hold"}"#,
                );
            let budget = sum_matching(&text, r#"decision="budget_spent""#);
            v.retried = Some(retried);
            v.budget_exhausted = Some(budget);
        }
        variants.push(v);
    }
    let events = cluster
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(t, e)| (t.saturating_duration_since(start).as_secs_f64(), e.clone()))
        .collect();
    ScenarioResult {
        scenario: name.to_string(),
        description: SCENARIOS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(String::new(), |(_, d)| d.to_string()),
        cluster: cspec,
        load: lspec,
        events,
        variants,
        resources,
    }
}
