//! `mulligan extension-server` as a child process on ports it picks.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use mulligan::extension::api::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

pub struct ExtensionServer {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl ExtensionServer {
    /// Started with `--mulligan-address mulligan` and `extra` flags; returns
    /// once its "listening" line says both ports are bound.
    pub async fn start(mulligan: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mulligan"))
            .args([
                "extension-server",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--mulligan-address", mulligan])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning mulligan extension-server");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("no listening line within 20 s")
        .expect("stdout")
        .expect("exited before listening");
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .expect("address")
        };
        Self {
            grpc: field("extension="),
            admin: field("admin="),
            child,
        }
    }

    pub async fn client(&self) -> EnvoyGatewayExtensionClient<Channel> {
        EnvoyGatewayExtensionClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect")
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// A Prometheus counter or gauge (summed over labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let r = rig::client::get(self.admin, "/metrics")
            .await
            .expect("/metrics");
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
