//! How soon held requests are served once an endpoint can serve them, on
//! the reference wiring with no probe path: mulligan learns the pod from an
//! EDS file of its own (polled every 5 ms, so it knows at once), Envoy's
//! `app` cluster from another EDS file (the stand-in for Envoy Gateway's
//! control plane). 10 GETs and 5 POSTs (1 KiB and more, each with its own
//! `x-harness-id`) are held at zero ready pods; the only pod is booting
//! (listening, 503 to everything, as [`rig::pods`]' booting pod answers),
//! and mulligan lists it not ready, so a hold is plausible.
//! - **EDS behind**: Envoy does not list the booting pod (Envoy Gateway
//!   leaves a pod that is not serving out of EDS: [`rig::eds::gateway_health`]).
//!   The pod becomes ready, mulligan is told at once, and Envoy's EDS file is
//!   written 500 ms after mulligan saw it. The figure: the last request
//!   served after the moment Envoy's admin shows the pod (its
//!   `cluster.app.membership_healthy` counts it; polled every 2 ms, so a
//!   request may reach the pod a moment before that).
//! - **Envoy already lists it**: Envoy's EDS lists the pod from the start
//!   (so the first attempts meet its 503), mulligan's lists it not ready.
//!   The pod becomes ready and mulligan's EDS marks it healthy at once. The
//!   figure: the last request served after the pod became ready.
//!
//! Each run starts a fresh stack and prints, per request, its status and
//! when its served attempt reached the pod; then whether any ran twice,
//! whether every POST body reached the pod whole, and mulligan's answers.
//! Prints figures; asserts nothing about speed.
//!
//! `cargo bench --bench hold_release [-- --runs 3]`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use http::Method;
use rig::{
    arrivals::{Arrival, StampedPod},
    bench::arg,
    client::{self, HttpClient, Proto},
    eds::{EdsFile, Health},
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
    rollout::cluster::{eds_json, write_atomic},
};

/// Held requests: even ids GET, odd ids POST with a body.
const REQUESTS: usize = 15;
const GETS: usize = 10;
/// How long Envoy's EDS trails mulligan's view in "EDS behind".
const EDS_LAG: Duration = Duration::from_millis(500);
/// The target from the reference issue.
const TARGET_MS: f64 = 150.0;

/// Request `i`: a GET for the first [`GETS`], then POSTs with a body that
/// differs in length and content from every other.
fn shape(i: usize) -> (Method, &'static str, Vec<u8>) {
    if i < GETS {
        (Method::GET, "/", Vec::new())
    } else {
        (Method::POST, "/echo", payload(1024 + i))
    }
}

fn id(i: usize) -> String {
    format!("held-{i}")
}

/// How a held request ended at the client.
struct Outcome {
    status: String,
    done: Instant,
}

async fn request(front: SocketAddr, i: usize) -> Outcome {
    let (method, path, body) = shape(i);
    let id = id(i);
    let r = HttpClient::new(Proto::Http1)
        .send(
            method,
            front,
            path,
            &[("x-harness-id", id.as_str())],
            client::full(body),
        )
        .await;
    Outcome {
        status: r.map_or_else(|e| format!("error {e}"), |r| r.status.as_u16().to_string()),
        done: Instant::now(),
    }
}

/// mulligan's EDS file: the pod, `health` (`UNHEALTHY` or `HEALTHY`).
struct MulliganEds {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl MulliganEds {
    fn new() -> MulliganEds {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eds.json");
        MulliganEds { _dir: dir, path }
    }

    fn write(&self, pod: SocketAddr, health: &str) {
        let version = format!("{}", fastrand::u64(..));
        write_atomic(
            &self.path,
            &eds_json("app", &version, &[(pod, health)], false),
        );
    }
}

/// mulligan on `eds`, polled every 5 ms, no probe.
async fn mulligan_on(eds: &Path) -> (Mulligan, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("mulligan.toml");
    let toml = format!(
        "[endpoints]\neds_file = {:?}\neds_file_poll = \"5ms\"\n",
        eds.display().to_string()
    );
    std::fs::write(&cfg, toml).expect("write config");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("utf-8 path")]).await;
    (m, dir)
}

/// Waits (polling Envoy's admin every 2 ms) until `cluster.app` counts
/// `healthy` healthy members (the hold endpoint is one); returns when.
async fn until_envoy_healthy(envoy: &Envoy, healthy: u64) -> Instant {
    let stat = "cluster.app.membership_healthy";
    let what = format!("{stat}, want {healthy}");
    let every = Duration::from_millis(2);
    rig::poll_until(
        &what,
        rig::LOADED,
        every,
        || envoy.stat(stat),
        |&v| v >= healthy,
    )
    .await;
    Instant::now()
}

/// One scenario's stack: the pod (booting), both EDS files, mulligan, Envoy.
struct Stage {
    pod: StampedPod,
    mulligan_eds: MulliganEds,
    envoy_eds: EdsFile,
    mulligan: Mulligan,
    _config: tempfile::TempDir,
    envoy: Envoy,
}

impl Stage {
    /// `envoy_lists`: whether Envoy's EDS lists the booting pod.
    async fn start(envoy_lists: bool) -> Stage {
        let pod = StampedPod::start(false).await;
        let mulligan_eds = MulliganEds::new();
        mulligan_eds.write(pod.addr, "UNHEALTHY");
        let (mulligan, config) = mulligan_on(&mulligan_eds.path).await;
        mulligan.until_endpoint_state(pod.addr, "not_ready").await;
        let envoy_eds = EdsFile::new("app");
        if envoy_lists {
            envoy_eds.write("app", &[(pod.addr, Health::Serving)]);
        }
        let envoy = Envoy::start(&envoy_eds.bootstrap(mulligan.grpc.port())).await;
        until_envoy_healthy(&envoy, if envoy_lists { 2 } else { 1 }).await;
        Stage {
            pod,
            mulligan_eds,
            envoy_eds,
            mulligan,
            _config: config,
            envoy,
        }
    }

    /// Sends the requests and waits until mulligan holds every one.
    async fn hold(&self) -> Vec<tokio::task::JoinHandle<Outcome>> {
        let front = self.envoy.listener("mulligan").await;
        let tasks = (0..REQUESTS)
            .map(|i| tokio::spawn(request(front, i)))
            .collect();
        rig::wait_held(&self.mulligan, &self.envoy, REQUESTS).await;
        println!("    {REQUESTS} held");
        tasks
    }

    /// The pod becomes ready and mulligan's EDS says so: when each
    /// happened (the pod, then mulligan seeing it).
    async fn pod_ready(&self) -> (Instant, Instant) {
        let ready = Instant::now();
        self.pod.set_ready(true);
        self.mulligan_eds.write(self.pod.addr, "HEALTHY");
        let seen = self
            .mulligan
            .until_endpoint_state(self.pod.addr, "ready")
            .await;
        (ready, seen)
    }
}

/// What one run measured.
struct Run {
    /// Last request served after the reference moment, ms.
    last_ms: f64,
    /// The first served after it, ms.
    first_ms: f64,
    all_200: bool,
    /// Releases that met the hold again (Envoy still behind: scouts).
    back_at_hold: f64,
    ran_twice: bool,
    bodies_whole: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed ms from `from` to `to`.
fn since(from: Instant, to: Instant) -> f64 {
    if to >= from {
        ms(to - from)
    } else {
        -ms(from - to)
    }
}

/// Waits for every request, prints each one's status and when its served
/// attempt reached the pod (relative to `t0`), and checks the pod's view.
async fn outcomes(
    r: &Stage,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    t0: Instant,
    what: &str,
) -> Run {
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("request task"));
    }
    let arrivals = r.pod.arrivals();
    let at = |i: usize| -> Option<&Arrival> {
        let id = id(i);
        arrivals
            .iter()
            .find(|a| a.id.as_deref() == Some(id.as_str()))
    };
    for (i, o) in outcomes.iter().enumerate() {
        let reached = at(i).map_or("never".into(), |a| format!("{:+7.1}", since(t0, a.at)));
        println!(
            "    {:<8} {:<4} {:<4} reached pod {reached} ms, answered {:+7.1} ms after {what}",
            id(i),
            shape(i).0.as_str(),
            o.status,
            since(t0, o.done)
        );
    }
    let ran_twice = (0..REQUESTS).any(|i| {
        let id = id(i);
        arrivals
            .iter()
            .filter(|a| a.id.as_deref() == Some(id.as_str()))
            .count()
            > 1
    });
    let bodies_whole =
        (0..REQUESTS).all(|i| at(i).is_some_and(|a| a.body == shape(i).2.as_slice()));
    let last = outcomes.iter().map(|o| o.done).max().expect("requests");
    let first = outcomes.iter().map(|o| o.done).min().expect("requests");
    println!(
        "    mulligan's answers:\n      {}",
        r.mulligan.answer_counts().await.replace('\n', "\n      ")
    );
    Run {
        last_ms: since(t0, last),
        first_ms: since(t0, first),
        all_200: outcomes.iter().all(|o| o.status == "200"),
        back_at_hold: r.mulligan.answers("retry_after_hold").await - REQUESTS as f64,
        ran_twice,
        bodies_whole,
    }
}

/// "EDS behind": Envoy learns the pod 500 ms after mulligan.
async fn eds_behind(run: u64) -> Run {
    println!("\n### EDS behind, run {run}");
    let r = Stage::start(false).await;
    let tasks = r.hold().await;
    let (ready, seen) = r.pod_ready().await;
    tokio::time::sleep_until((seen + EDS_LAG).into()).await;
    let written = Instant::now();
    r.envoy_eds.write("app", &[(r.pod.addr, Health::Serving)]);
    let learned = until_envoy_healthy(&r.envoy, 2).await;
    println!(
        "    relative to Envoy learning the pod: pod ready {:+.1} ms, mulligan saw it {:+.1} ms, Envoy's EDS written {:+.1} ms",
        since(learned, ready),
        since(learned, seen),
        since(learned, written),
    );
    outcomes(&r, tasks, learned, "Envoy learned").await
}

/// "Envoy already lists it": the pod becomes ready, mulligan is told at once.
async fn already_listed(run: u64) -> Run {
    println!("\n### Envoy already lists it, run {run}");
    let r = Stage::start(true).await;
    let tasks = r.hold().await;
    let (ready, seen) = r.pod_ready().await;
    println!(
        "    mulligan saw it ready {:+.1} ms after the pod became ready",
        since(ready, seen)
    );
    outcomes(&r, tasks, ready, "ready").await
}

fn table(title: &str, from: &str, runs: &[Run]) {
    println!("\n## {title}\n");
    println!("| run | last served after {from} (ms) | first (ms) | all 200 | releases back at the hold | none twice | bodies whole | <= {TARGET_MS} ms |");
    println!("|-----|------|------|-----|-----|-----|-----|-----|");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            i + 1,
            r.last_ms,
            r.first_ms,
            r.all_200,
            r.back_at_hold,
            !r.ran_twice,
            r.bodies_whole,
            r.last_ms <= TARGET_MS
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = arg("--runs", 3);
    let mut behind = Vec::new();
    for run in 1..=runs {
        behind.push(eds_behind(run).await);
    }
    let mut listed = Vec::new();
    for run in 1..=runs {
        listed.push(already_listed(run).await);
    }
    table("EDS behind (500 ms)", "Envoy learned", &behind);
    table("Envoy already lists it", "ready", &listed);
}
