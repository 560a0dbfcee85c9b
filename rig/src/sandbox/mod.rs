//! The sandbox (`make run`): a newcomer breaks pods the way a rollout does
//! and watches two listeners of one Envoy answer for the same pods:
//!
//! - "mulligan": the decide wiring as shipped
//!   (`envoy-config/standalone/envoy.yaml`), with `mulligan serve`;
//! - "envoy_gateway": the same route with the retry policy and cluster
//!   Envoy Gateway generates by default (read from its own xDS output in
//!   `shared/fixtures/envoy-gateway`, as the rollout harness does).
//!
//! [`control`] serves the commands (drain, kill, restart, scale) over
//! HTTP; [`view`] sends a steady load through both listeners and prints,
//! every second, what each one served and failed and how mulligan answered.

pub mod bootstrap;
pub mod control;
pub mod driver;
pub mod view;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    envoy::Envoy,
    mulligan::Mulligan,
    pods::{Pod, PodState},
};

/// The line the sandbox prints once everything is up: whoever drives it
/// (a test, a script) waits for it.
pub const READY_LINE: &str = "sandbox ready:";

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pods behind both listeners, named a, b, c, ...
    pub pods: usize,
    /// Every port picked by the kernel (tests, a second sandbox) instead of
    /// the fixed ones the printed commands are easiest to type with.
    pub ephemeral: bool,
    /// How long a restarted pod answers 503 before it is ready.
    pub boot: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pods: 3,
            ephemeral: false,
            boot: Duration::from_secs(3),
        }
    }
}

/// The fixed ports of `make run`: Envoy's admin and the two listeners,
/// mulligan's admin and gRPC ports (its own defaults), and the sandbox's
/// control port.
struct Ports {
    envoy_admin: u16,
    mulligan_listener: u16,
    gateway_listener: u16,
    mulligan_admin: u16,
    mulligan_grpc: u16,
    control: u16,
}

impl Ports {
    fn new(ephemeral: bool) -> Ports {
        if ephemeral {
            return Ports {
                envoy_admin: 0,
                mulligan_listener: 0,
                gateway_listener: 0,
                mulligan_admin: 0,
                mulligan_grpc: 0,
                control: 0,
            };
        }
        Ports {
            envoy_admin: 9901,
            mulligan_listener: 10000,
            gateway_listener: 10001,
            mulligan_admin: 9902,
            mulligan_grpc: 50051,
            control: 9900,
        }
    }
}

/// mulligan's configuration in the sandbox: it probes each pod's `/ready`
/// as a kubelet would, so it learns that a restarted pod is ready (and
/// releases the requests it holds for it) within a tenth of a second.
const MULLIGAN_TOML: &str = "[probe]\n\
    path = \"/ready\"\n\
    interval = \"100ms\"\n\
    timeout = \"300ms\"\n\
    unhealthy_threshold = 1\n";

/// Everything the sandbox runs; dropping it stops Envoy and mulligan.
pub struct Sandbox {
    pub pods: Vec<Arc<Pod>>,
    pub mulligan: Mulligan,
    pub envoy: Envoy,
    /// Envoy's listener with mulligan.
    pub front: SocketAddr,
    /// Envoy's listener with Envoy Gateway's default retries.
    pub gateway: SocketAddr,
    pub boot: Duration,
    /// Where [`control`] listens (0: a port the kernel picks).
    pub control_port: u16,
    /// mulligan's config file (kept for the run).
    _config: tempfile::TempDir,
}

impl Sandbox {
    /// Starts the pods (ready), mulligan and Envoy; returns once Envoy is
    /// ready and both listeners are bound.
    pub async fn start(opts: &Options) -> Sandbox {
        let ports = Ports::new(opts.ephemeral);
        let mut pods = Vec::new();
        for i in 0..opts.pods.clamp(1, 26) {
            let name = char::from(b'a' + i as u8).to_string();
            pods.push(Pod::start(&name, PodState::Ready).await);
        }
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("mulligan.toml");
        std::fs::write(&config, MULLIGAN_TOML).expect("write mulligan config");
        let grpc = format!("127.0.0.1:{}", ports.mulligan_grpc);
        let admin = format!("127.0.0.1:{}", ports.mulligan_admin);
        let endpoints = crate::endpoint_list(&addrs);
        let mulligan = Mulligan::spawn(&[
            "serve",
            "--grpc-listen",
            &grpc,
            "--admin-listen",
            &admin,
            "--config",
            config.to_str().expect("utf-8 path"),
            "--endpoints",
            &endpoints,
        ])
        .await;
        let yaml = bootstrap::render(&addrs, mulligan.grpc.port(), &ports);
        let envoy = Envoy::start(&yaml).await;
        let front = envoy.listener(bootstrap::MULLIGAN_LISTENER).await;
        let gateway = envoy.listener(bootstrap::GATEWAY_LISTENER).await;
        Sandbox {
            pods,
            mulligan,
            envoy,
            front,
            gateway,
            boot: opts.boot,
            control_port: ports.control,
            _config: dir,
        }
    }
}
