//! A gateway as the live tests of both Envoy Gateway paths run one: Envoy
//! running Envoy Gateway's translation of its fixtures (the quickstart's
//! Gateway `eg`, listener `http`, HTTPRoute `backend`), wired for mulligan
//! by the Extension Server or by the EnvoyPatchPolicy, and the real
//! mulligan beside it.

use std::{any::Any, net::SocketAddr};

use http::Method;

use crate::{
    client::{full, HttpClient, Proto},
    envoy::Envoy,
    mulligan::Mulligan,
};

/// Envoy Gateway's listener for Gateway `eg`'s listener `http`.
pub const LISTENER: &str = "default/eg/http";

/// Envoy Gateway's cluster for HTTPRoute `backend`, which the tests' pods
/// stand behind.
pub const CLUSTER: &str = "httproute/default/backend/rule/0";

/// The host HTTPRoute `backend` matches.
pub const HOST: [(&str, &str); 1] = [("host", "www.example.com")];

/// Envoy's listener [`LISTENER`] with mulligan in the path.
pub struct Gateway {
    pub mulligan: Mulligan,
    pub envoy: Envoy,
    pub front: SocketAddr,
    /// What must live as long as the gateway (the Extension Server that
    /// wired its translation).
    _keep: Box<dyn Any + Send + Sync>,
}

impl Gateway {
    /// `envoy`, running the wired translation, and `mulligan` beside it;
    /// `keep` lives as long as the gateway.
    pub async fn around(mulligan: Mulligan, envoy: Envoy, keep: impl Any + Send + Sync) -> Gateway {
        let front = envoy.listener(LISTENER).await;
        Gateway {
            mulligan,
            envoy,
            front,
            _keep: Box::new(keep),
        }
    }

    /// `method` `path` with `id` as its body and its `x-harness-id` (each
    /// pod counts how often it ran each id); the status and the pod that
    /// answered. An echo answered 200 must come back whole.
    pub async fn send(&self, method: Method, path: &str, id: &str) -> (u16, String) {
        let headers = [HOST[0], ("x-harness-id", id)];
        let r = HttpClient::new(Proto::Http1)
            .send(method, self.front, path, &headers, full(id.to_string()))
            .await
            .expect("request through Envoy Gateway's listener");
        let pod = r
            .headers
            .get("x-pod")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if r.status == 200 && path == "/echo" {
            assert_eq!(r.body, id.as_bytes(), "the echo came back whole");
        }
        (r.status.as_u16(), pod)
    }

    /// A stat of [`CLUSTER`], the cluster the route forwards to: the
    /// router's (requests, retries).
    pub async fn cluster_stat(&self, stat: &str) -> u64 {
        self.envoy.stat(&format!("cluster.{CLUSTER}.{stat}")).await
    }
}
