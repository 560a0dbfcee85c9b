//! A rolling update as a Deployment makes one, behind a gateway with
//! mulligan in the path: two old pods replaced by two new ones, one at a
//! time (a new pod becomes ready, an old one drains, then exits), while two
//! clients keep requests in flight. The client must see no 503, and no
//! request may run twice.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::Method;

use crate::{
    gateway::Gateway,
    pods::{Pod, PodState},
};

/// Requests the stepping client sends; the update moves on at fixed points
/// of its sequence.
const FOREGROUND: usize = 400;
/// Requests the other client sends meanwhile.
const BACKGROUND: usize = 300;

/// The update's pods: the old ones ready, the new ones booting.
pub struct RollingUpdate {
    pub old: [Arc<Pod>; 2],
    pub new: [Arc<Pod>; 2],
}

impl RollingUpdate {
    pub async fn start() -> RollingUpdate {
        RollingUpdate {
            old: [
                Pod::start("old-1", PodState::Ready).await,
                Pod::start("old-2", PodState::Ready).await,
            ],
            new: [
                Pod::start("new-1", PodState::Booting).await,
                Pod::start("new-2", PodState::Booting).await,
            ],
        }
    }

    /// Every pod, old then new.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.old.iter().chain(&self.new)
    }

    /// Every pod's address, old then new: the Service's endpoints.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.pods().map(|p| p.addr).collect()
    }

    /// Runs the update behind `gw` while two clients send it POSTs and
    /// GETs to `/echo`, each with an id of its own. Panics, with mulligan's
    /// answers and Envoy's retry stats, unless every request is answered
    /// 200 and every one ran exactly once; and unless the update produced
    /// failed attempts (else it proves nothing), mulligan asked for a
    /// retry, was asked only about failed attempts and retries (its
    /// streams, against the route cluster's retries), and answered none
    /// final and stopped none.
    pub async fn run(&self, gw: &Gateway) {
        let (mulligan, envoy) = (&gw.mulligan, &gw.envoy);
        let background = async {
            let mut statuses = Vec::new();
            for i in 0..BACKGROUND {
                let method = if i % 3 == 0 {
                    Method::POST
                } else {
                    Method::GET
                };
                statuses.push(gw.send(method, "/echo", &format!("bg-{i}")).await.0);
            }
            statuses
        };
        let foreground = async {
            for i in 0..FOREGROUND {
                self.step(i).await;
                let method = if i % 5 == 0 {
                    Method::POST
                } else {
                    Method::GET
                };
                let (status, _) = gw.send(method, "/echo", &format!("fg-{i}")).await;
                if status != 200 {
                    panic!(
                        "request {i} during the rollout: {status}\n{}\n{}",
                        mulligan.answer_counts().await,
                        envoy.stats("retry").await
                    );
                }
            }
        };
        let (statuses, ()) = tokio::join!(background, foreground);
        let bad: Vec<(usize, &u16)> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != 200)
            .collect();
        assert!(
            bad.is_empty(),
            "background client (request, status): {bad:?}\n{}",
            mulligan.answer_counts().await
        );
        assert_eq!(
            self.pods().map(|p| p.served()).sum::<u64>(),
            (FOREGROUND + BACKGROUND) as u64,
            "every request ran exactly once"
        );
        let rejected: u64 = self.pods().map(|p| p.rejected()).sum();
        assert!(rejected > 0, "the rollout produced failed attempts");
        assert!(
            mulligan.answers("retry").await >= 1.0,
            "failed attempts were retried: {}",
            mulligan.answer_counts().await
        );
        // mulligan was asked only about failed attempts and retries.
        let retries = gw.cluster_stat("upstream_rq_retry").await as f64;
        let streams = mulligan.streams().await;
        assert!(
            streams <= retries + rejected as f64,
            "{streams} streams: more than {retries} retries and {rejected} failed attempts"
        );
        assert_eq!(mulligan.answers("final").await, 0.0);
        assert_eq!(mulligan.answers("stopped").await, 0.0);
    }

    /// Moves the update on at request `i` of the stepping client.
    async fn step(&self, i: usize) {
        let grace = Duration::from_secs(2);
        match i {
            50 => self.new[0].set_state(PodState::Ready).await,
            100 => self.old[0].set_state(PodState::Draining).await,
            150 => self.old[0].exit(grace),
            200 => self.new[1].set_state(PodState::Ready).await,
            250 => self.old[1].set_state(PodState::Draining).await,
            300 => self.old[1].exit(grace),
            _ => {}
        }
    }
}
