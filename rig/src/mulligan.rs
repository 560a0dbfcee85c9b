//! The mulligan binary as a child process, on ports it picks itself.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::client;

pub struct Mulligan {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The `mulligan.v1.Lifecycle` port, when started with `--control-listen`.
    pub control: Option<SocketAddr>,
}

impl Mulligan {
    /// `mulligan serve` on ports 0 plus `extra` arguments; returns once its
    /// "listening" line says both ports are bound.
    pub async fn start(extra: &[&str]) -> Mulligan {
        let mut args = vec![
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args).await
    }

    /// The mulligan binary with exactly `args`.
    pub async fn spawn(args: &[&str]) -> Mulligan {
        let (child, line) = spawn_announced(args).await;
        Mulligan {
            child,
            grpc: line.addr("grpc"),
            admin: line.addr("admin"),
            control: line.get("control"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("mulligan still running")
    }

    /// Sends SIGTERM (mulligan's graceful drain).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// SIGKILL: mulligan vanishes without a goodbye.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill mulligan");
    }

    /// Waits for exit, up to `limit`; returns the exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("mulligan did not exit in time")
            .expect("wait")
            .code()
    }

    pub async fn metrics(&self) -> String {
        let r = client::get(self.admin, "/metrics").await.expect("/metrics");
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// The value of one Prometheus sample, e.g.
    /// `mulligan_ext_proc_phases_total{phase="request_headers"}`; 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        parse_metric(&self.metrics().await, sample)
    }

    /// A channel to the lifecycle API (started with `--control-listen`).
    pub async fn control_channel(&self) -> tonic::transport::Channel {
        let addr = self
            .control
            .expect("mulligan was started without --control-listen");
        grpc_channel(addr).await
    }

    /// ext_proc streams Envoy opened to mulligan so far.
    pub async fn streams(&self) -> f64 {
        self.metric("mulligan_ext_proc_streams_total").await
    }

    /// How often mulligan gave `answer` (e.g. `retry`) to a failed attempt.
    pub async fn answers(&self, answer: &str) -> f64 {
        self.metric(&format!("mulligan_answers_total{{answer=\"{answer}\"}}"))
            .await
    }

    /// The answers mulligan gave so far, one sample a line (those never
    /// given left out), for a failure's message.
    pub async fn answer_counts(&self) -> String {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .filter(|l| l.starts_with("mulligan_answers_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The state mulligan's registry gives `addr` in cluster `app` (`""`
    /// when it does not list it), from `/v1/endpoints`.
    pub async fn endpoint_state(&self, addr: SocketAddr) -> String {
        let r = client::get(self.admin, "/v1/endpoints?cluster=app")
            .await
            .expect("list endpoints");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        v["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .and_then(|e| e["state"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (polling every 2 ms, up to [`crate::LOADED`]) until mulligan's
    /// registry has `addr` in `state`; returns when it first saw it so.
    pub async fn until_endpoint_state(&self, addr: SocketAddr, state: &str) -> std::time::Instant {
        let deadline = std::time::Instant::now() + crate::LOADED;
        loop {
            let now = self.endpoint_state(addr).await;
            if now == state {
                return std::time::Instant::now();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} is {now:?} in mulligan after {:?}, want {state:?}",
                crate::LOADED
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// mulligan as it runs beside Envoy Gateway: knowing `pods` as the
    /// endpoints of `cluster` (Envoy Gateway's name for their Service) and
    /// learning their readiness from their probe ([`PROBED`]).
    pub async fn beside_gateway(pods: &[SocketAddr], cluster: &str) -> Mulligan {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = dir.path().join("mulligan.toml");
        std::fs::write(&toml, PROBED).expect("write config");
        let list = crate::endpoint_list(pods);
        let toml = toml.to_str().expect("utf-8 path");
        // mulligan has read the file by the time it listens.
        Mulligan::start(&[
            "--config",
            toml,
            "--endpoints",
            &list,
            "--static-cluster",
            cluster,
        ])
        .await
    }

    /// Waits until `sample` reads more than `floor`.
    pub async fn wait_metric_above(&self, sample: &str, floor: f64, limit: Duration) {
        let what = format!("{sample}, want more than {floor}");
        let every = Duration::from_millis(10);
        crate::poll_until(&what, limit, every, || self.metric(sample), |&v| v > floor).await;
    }

    /// Waits until `sample` reads `want`; panics with `what` after `limit`.
    /// Metrics are mulligan's own readiness signal for state it frees.
    pub async fn wait_metric(&self, sample: &str, want: f64, limit: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.metric(sample).await;
            if v == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {sample} is {v}, want {want} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// mulligan's config beside Envoy Gateway in the tests: readiness from the
/// pods' readiness probe, as it would come from Kubernetes. Healthy
/// requests open no stream, so mulligan never sees a success that would
/// clear what it learnt from failures; the probe is what tells it a pod is
/// back.
pub const PROBED: &str = "[probe]\npath = \"/ready\"\ninterval = \"100ms\"\n";

/// mulligan processes behind one `mulligan` cluster, as a Deployment's
/// replicas behind its Service: Envoy spreads its ext_proc streams over
/// them, so one request's attempts may be judged by different processes.
pub struct Mulligans(Vec<Mulligan>);

impl Mulligans {
    /// `processes` mulligans, each `mulligan serve` on ports 0 with `args`.
    pub async fn start(processes: usize, args: &[&str]) -> Mulligans {
        let mut all = Vec::new();
        for _ in 0..processes {
            all.push(Mulligan::start(args).await);
        }
        Mulligans(all)
    }

    /// `processes` mulligans, each as [`Mulligan::beside_gateway`] starts
    /// one.
    pub async fn beside_gateway(processes: usize, pods: &[SocketAddr], cluster: &str) -> Mulligans {
        let mut all = Vec::new();
        for _ in 0..processes {
            all.push(Mulligan::beside_gateway(pods, cluster).await);
        }
        Mulligans(all)
    }

    /// Each process's gRPC address, in order: the `mulligan` cluster's
    /// endpoints.
    pub fn grpc(&self) -> Vec<SocketAddr> {
        self.0.iter().map(|m| m.grpc).collect()
    }

    /// Streams each process was asked to judge, in order.
    pub async fn streams(&self) -> Vec<f64> {
        let mut seen = Vec::new();
        for m in &self.0 {
            seen.push(m.streams().await);
        }
        seen
    }

    /// How often the processes, together, gave `answer`.
    pub async fn answers(&self, answer: &str) -> f64 {
        let mut n = 0.0;
        for m in &self.0 {
            n += m.answers(answer).await;
        }
        n
    }
}

impl<'a> IntoIterator for &'a Mulligans {
    type Item = &'a Mulligan;
    type IntoIter = std::slice::Iter<'a, Mulligan>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::ops::Deref for Mulligans {
    type Target = [Mulligan];

    fn deref(&self) -> &[Mulligan] {
        &self.0
    }
}

/// The binary under test, a black box: `$MULLIGAN_BIN` if set (`make run`,
/// `make demo`: a release build), else `$CARGO_BIN_EXE_mulligan`, which cargo
/// sets when it runs the mulligan package's tests and benches, else the
/// `mulligan` beside the running executable (`cargo run -p mulligan-rig`
/// after `cargo build`).
pub fn mulligan_bin() -> std::path::PathBuf {
    for var in ["MULLIGAN_BIN", "CARGO_BIN_EXE_mulligan"] {
        if let Some(p) = std::env::var_os(var) {
            return p.into();
        }
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("mulligan")))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| {
        panic!(
            "set MULLIGAN_BIN to the mulligan binary (e.g. cargo build --release --bin mulligan)"
        )
    })
}

/// `mulligan check-config FILE`, run to completion.
pub fn check_config(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(mulligan_bin())
        .arg("check-config")
        .arg(file)
        .output()
        .expect("running mulligan check-config")
}

/// Panics, with the run's stderr, unless it succeeded.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plaintext gRPC channel to one of mulligan's ports (health, the
/// lifecycle API), for a generated client of the test's choosing.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// The line mulligan prints once its ports are bound, `listening grpc=ADDR
/// admin=ADDR ...` (`extension=` for the Extension Server).
pub struct Announced(String);

impl Announced {
    /// The address after `key=`, if the line has one.
    pub fn get(&self, key: &str) -> Option<SocketAddr> {
        let prefix = format!("{key}=");
        let value = self
            .0
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))?;
        Some(
            value
                .parse()
                .unwrap_or_else(|e| panic!("{key} in {:?}: {e}", self.0)),
        )
    }

    /// The address after `key=`; panics when the line has none.
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.0))
    }
}

/// Runs the mulligan binary with `args` (any subcommand that announces its
/// ports) and waits for its announcement. Its stdout keeps being read, so
/// it never blocks on a full pipe; it is killed when the child is dropped.
pub async fn spawn_announced(args: &[&str]) -> (Child, Announced) {
    let mut child = Command::new(mulligan_bin())
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning mulligan");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("mulligan did not announce its ports within 20 s")
        .expect("reading mulligan stdout")
        .expect("mulligan exited before listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, Announced(line))
}

/// The value of one Prometheus sample (`name{labels}` exactly), 0 when absent.
pub fn parse_metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
