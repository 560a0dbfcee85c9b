//! Active readiness probing: a GET on every known endpoint at a short,
//! fixed interval, with hysteresis, so mulligan learns that a pod is ready
//! (and wakes the requests held for it) within one interval, and that a pod
//! stopped serving without waiting for a request to fail there.
//!
//! Off unless `probe.path` is set. A refused connection marks the endpoint
//! gone at once (nothing listens there); other failures count towards
//! `unhealthy_threshold`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::task::JoinHandle;

use super::{Registry, State};
use crate::config;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Starts one probe task per endpoint address; none when probing is off.
pub fn spawn(registry: Arc<Registry>, cfg: &config::Probe) -> Vec<JoinHandle<()>> {
    if cfg.path.is_empty() {
        return Vec::new();
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.timeout));
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    registry
        .addresses()
        .into_iter()
        .map(|addr| {
            let probe = Probe {
                addr,
                uri: format!("http://{addr}{}", cfg.path),
                client: client.clone(),
                registry: Arc::clone(&registry),
                cfg: cfg.clone(),
            };
            tokio::spawn(probe.run())
        })
        .collect()
}

struct Probe {
    addr: SocketAddr,
    uri: String,
    client: ProbeClient,
    registry: Arc<Registry>,
    cfg: config::Probe,
}

enum Verdict {
    Ok,
    Refused,
    Failed(String),
}

impl Probe {
    async fn run(self) {
        let mut interval = tokio::time::interval(self.cfg.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            interval.tick().await;
            match self.check().await {
                Verdict::Ok => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    if successes >= self.cfg.healthy_threshold {
                        self.registry.probed(self.addr, State::Ready, "probe: ok");
                    }
                }
                Verdict::Refused => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    self.registry
                        .probed(self.addr, State::Gone, "probe: connection refused");
                }
                Verdict::Failed(why) => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    if failures >= self.cfg.unhealthy_threshold {
                        self.registry
                            .probed(self.addr, State::NotReady, &format!("probe: {why}"));
                    }
                }
            }
        }
    }

    async fn check(&self) -> Verdict {
        let Ok(uri) = self.uri.parse::<http::Uri>() else {
            return Verdict::Failed("bad probe path".into());
        };
        match tokio::time::timeout(self.cfg.timeout, self.client.get(uri)).await {
            Err(_) => Verdict::Failed("timeout".into()),
            Ok(Err(e)) if e.is_connect() => Verdict::Refused,
            Ok(Err(e)) => Verdict::Failed(format!("error: {e}")),
            Ok(Ok(r)) if r.status().is_success() => Verdict::Ok,
            Ok(Ok(r)) => Verdict::Failed(format!("HTTP {}", r.status().as_u16())),
        }
    }
}
