//! Three pods behind a gateway with mulligan in the path, healthy at first;
//! then one drains and one is gone, and the third must serve every request:
//! Envoy makes every attempt, and mulligan is asked only about the failed
//! ones and the retries that follow.

use std::{net::SocketAddr, sync::Arc};

use http::Method;

use crate::{
    gateway::Gateway,
    pods::{Pod, PodState},
};

/// Healthy requests sent first.
const HEALTHY: u64 = 30;
/// Requests sent once a pod drains and one is gone.
const FAILING: u64 = 40;

/// The three pods, all ready until [`DrainingAndGone::run`].
pub struct DrainingAndGone {
    pub draining: Arc<Pod>,
    pub ready: Arc<Pod>,
    pub gone: Arc<Pod>,
}

impl DrainingAndGone {
    pub async fn start() -> DrainingAndGone {
        DrainingAndGone {
            draining: Pod::start("draining", PodState::Ready).await,
            ready: Pod::start("ready", PodState::Ready).await,
            gone: Pod::start("gone", PodState::Ready).await,
        }
    }

    /// The pods' addresses: the Service's endpoints.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        [&self.draining, &self.ready, &self.gone]
            .iter()
            .map(|p| p.addr)
            .collect()
    }

    /// Every pod.
    pub fn pods(&self) -> [&Arc<Pod>; 3] {
        [&self.draining, &self.ready, &self.gone]
    }

    /// Requests sent in all.
    pub fn sent(&self) -> u64 {
        HEALTHY + FAILING
    }

    /// Sends `gw` healthy GETs and POSTs to `/echo`, then drains one pod,
    /// stops the other, and sends more (every fourth a POST). Panics unless
    /// every request is answered 200 (those after by the ready pod), the
    /// healthy ones opened no ext_proc stream, the draining pod was tried,
    /// mulligan asked for a retry, and none of its answers was final (no
    /// 5xx reached the client).
    pub async fn run(&self, gw: &Gateway) {
        for i in 0..HEALTHY {
            let method = if i % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            };
            let (status, _) = gw.send(method, "/echo", &format!("healthy-{i}")).await;
            assert_eq!(status, 200);
        }
        assert_eq!(
            gw.mulligan.streams().await,
            0.0,
            "a healthy request opened a stream"
        );
        self.draining.set_state(PodState::Draining).await;
        self.gone.set_state(PodState::Gone).await;
        for i in 0..FAILING {
            let method = if i % 4 == 0 {
                Method::POST
            } else {
                Method::GET
            };
            let (status, pod) = gw.send(method, "/echo", &format!("rollout-{i}")).await;
            assert_eq!(
                status,
                200,
                "request {i}: {}\n{}",
                gw.mulligan.answer_counts().await,
                gw.envoy.stats("retry").await
            );
            assert_eq!(pod, "ready");
        }
        assert!(self.draining.rejected() > 0, "the draining pod was tried");
        assert!(
            gw.mulligan.answers("retry").await >= 1.0,
            "mulligan asked for retries: {}",
            gw.mulligan.answer_counts().await
        );
        assert_eq!(
            gw.mulligan.answers("final").await,
            0.0,
            "no 5xx reached the client"
        );
    }
}
