//! `mulligan extension-server` as a child process on ports it picks.

use std::net::SocketAddr;

use mulligan::extension::api::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tokio::process::Child;
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
        let mut args = vec![
            "extension-server",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--mulligan-address",
            mulligan,
        ];
        args.extend_from_slice(extra);
        let (child, line) = rig::mulligan::spawn_announced(&args).await;
        Self {
            grpc: line.addr("extension"),
            admin: line.addr("admin"),
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
