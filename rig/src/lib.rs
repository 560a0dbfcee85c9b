//! The real-Envoy test rig, shared by mulligan's integration tests and
//! benches, the rollout harness and the `make run` sandbox. It runs mulligan
//! as a black-box binary ([`mulligan::mulligan_bin`]) and never links it:
//! - [`envoy`]: starts the pinned Envoy binary on free loopback ports;
//! - [`mulligan`]: starts the mulligan binary and talks to its admin port;
//! - [`pods`]: upstream "pods" whose lifecycle a test flips;
//! - [`client`]: HTTP/1.1 and HTTP/2 clients;
//! - [`ext_proc`]: a hand-made ext_proc client, one stream at a time;
//! - [`render`]: fills the `${NAME}` placeholders of `envoy-config/`;
//! - [`kube_api`]: a Kubernetes API server (EndpointSlices, Pods) for the
//!   discovery tests;
//! - [`tls`]: certificates made at test time, and TLS pods;
//! - [`eds`]: an EDS file standing in for Envoy Gateway's control plane;
//! - [`arrivals`]: a pod that notes when each request reaches it;
//! - [`backend_traffic`]: the retry policy Envoy Gateway's
//!   BackendTrafficPolicy puts on a route;
//! - [`executions`]: requests the pods ran more than once;
//! - [`protocols`]: gRPC (h2c, trailers) and WebSocket pods;
//! - [`bench`]: latency summaries for benches;
//! - [`rollout`]: the rollout harness (`cargo run -p mulligan-rig --bin
//!   rollout`, `make demo`).

pub mod arrivals;
pub mod backend_traffic;
pub mod bench;
pub mod client;
pub mod draining_and_gone;
pub mod eds;
pub mod envoy;
pub mod executions;
pub mod ext_proc;
pub mod failing_pod;
pub mod gateway;
pub mod kube_api;
pub mod mulligan;
pub mod pods;
pub mod protocols;
pub mod render;
pub mod rolling_update;
pub mod rollout;
pub mod sandbox;
pub mod tls;
pub mod xds;

/// Deterministic, position-dependent bytes: a shifted or truncated copy never
/// compares equal.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// Addresses as mulligan's `--endpoints` takes them: `A,B,...`.
pub fn endpoint_list(addrs: &[std::net::SocketAddr]) -> String {
    let each: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    each.join(",")
}

/// Root of the repository (for `envoy-config/` and `.tools/`): the rig is
/// its `rig/` member.
pub fn repo_root() -> std::path::PathBuf {
    let rig = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    rig.parent().unwrap_or(rig).to_path_buf()
}

/// Envoy Gateway's real output (`shared/fixtures/envoy-gateway`), which CI
/// and every checkout of this project have beside the repository.
pub fn envoy_gateway_fixtures() -> std::path::PathBuf {
    let dir = repo_root().join("../shared/fixtures/envoy-gateway");
    if !dir.is_dir() {
        panic!(
            "{} is missing: the Envoy Gateway fixtures live in shared/ beside the checkout \
             (the project's layout; CI has it there too)",
            dir.display()
        );
    }
    dir
}

/// A bound for what takes moments on a quiet machine (a process starting,
/// requests reaching a hold) and may take seconds on a loaded 2-core one.
pub const LOADED: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads `read` every `every` until `done` says yes, and returns that
/// reading; past `limit`, panics with the last reading. For admin
/// counters and metrics: neither Envoy nor mulligan pushes a signal.
pub async fn poll_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = read().await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {now:?} after {limit:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `mulligan` holds `n` requests, up to [`LOADED`]. When they
/// never all show, it says what Envoy and mulligan saw instead: Envoy timing
/// mulligan out or failing open (`message_timeouts`, `failure_mode_allowed`)
/// versus mulligan answering otherwise (`mulligan_answers_total`).
pub async fn wait_held(mulligan: &mulligan::Mulligan, envoy: &envoy::Envoy, n: usize) {
    let sample = "mulligan_held";
    let until = tokio::time::Instant::now() + LOADED;
    loop {
        let held = mulligan.metric(sample).await;
        if held == n as f64 {
            return;
        }
        if tokio::time::Instant::now() > until {
            let answers: Vec<String> = mulligan
                .metrics()
                .await
                .lines()
                .filter(|l| l.starts_with("mulligan_answers_total") && !l.ends_with(" 0"))
                .map(str::to_string)
                .collect();
            panic!(
                "{n} requests held: {sample} is {held} after {LOADED:?}; mulligan's answers: {answers:?}; \
                 Envoy's ext_proc stats:\n{}",
                envoy.stats("ext_proc").await
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Pods, mulligan and Envoy (reference bootstrap) wired together.
pub struct Stack {
    pub pods: Vec<std::sync::Arc<pods::Pod>>,
    pub mulligan: mulligan::Mulligan,
    pub envoy: envoy::Envoy,
    /// Envoy's listener with mulligan in the path.
    pub front: std::net::SocketAddr,
    /// Envoy's listener without it.
    pub baseline: std::net::SocketAddr,
}

impl Stack {
    /// Starts `pods`, mulligan (with `--endpoints` set to the pods, plus
    /// `mulligan_args`), and Envoy on the reference bootstrap (the decide
    /// wiring, as shipped, with a message timeout a loaded machine meets:
    /// [`render::tolerant`]) with `overrides`.
    pub async fn start(
        pods: &[(&str, pods::PodState)],
        mulligan_args: &[&str],
        overrides: &[(&'static str, String)],
    ) -> Stack {
        let mut started = Vec::new();
        for (name, state) in pods {
            started.push(pods::Pod::start(name, *state).await);
        }
        Stack::around(started, mulligan_args, overrides, |_| {}).await
    }

    /// Like [`Stack::start`], around pods already started (TLS pods, for
    /// one), with the rendered bootstrap changed by `edit` first (a route's
    /// rewrite, a transport socket: see [`render::route`] and
    /// [`render::cluster`]).
    pub async fn around(
        pods: Vec<std::sync::Arc<pods::Pod>>,
        mulligan_args: &[&str],
        overrides: &[(&'static str, String)],
        edit: impl FnOnce(&mut serde_yaml_ng::Value),
    ) -> Stack {
        let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
        let list = endpoint_list(&addrs);
        let mut args = vec!["--endpoints", list.as_str()];
        args.extend_from_slice(mulligan_args);
        let mulligan = mulligan::Mulligan::start(&args).await;
        let yaml = render::tolerant(&addrs, mulligan.grpc.port(), overrides);
        let mut v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&yaml).expect("bootstrap is YAML");
        edit(&mut v);
        let yaml = serde_yaml_ng::to_string(&v).expect("bootstrap as YAML");
        let envoy = envoy::Envoy::start(&yaml).await;
        let front = envoy.listener("mulligan").await;
        let baseline = envoy.listener("baseline").await;
        Stack {
            pods,
            mulligan,
            envoy,
            front,
            baseline,
        }
    }

    /// Like [`Stack::start`], with mulligan reading `toml` as its config file.
    pub async fn with_config(
        pods: &[(&str, pods::PodState)],
        toml: &str,
        overrides: &[(&'static str, String)],
    ) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mulligan.toml");
        std::fs::write(&path, toml).expect("write config");
        let path = path.to_str().expect("utf-8 path").to_string();
        let stack = Stack::start(pods, &["--config", &path], overrides).await;
        // mulligan has read the file by the time it listens.
        drop(dir);
        stack
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &std::sync::Arc<pods::Pod> {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Requests that reached any pod's application.
    pub fn served(&self) -> u64 {
        self.pods.iter().map(|p| p.served()).sum()
    }

    /// Waits until mulligan holds `n` requests (see [`wait_held`]).
    pub async fn wait_held(&self, n: usize) {
        wait_held(&self.mulligan, &self.envoy, n).await;
    }

    /// An ext_proc stat of the mulligan listener, e.g. `failure_mode_allowed`.
    pub async fn ext_proc_stat(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("http.mulligan.ext_proc.{name}"))
            .await
    }
}
