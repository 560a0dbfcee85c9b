//! Active readiness probing: a GET on every known endpoint at a short,
//! fixed interval, with hysteresis, so mulligan learns that a pod is ready
//! (and wakes the requests held for it) within one interval, and that a pod
//! stopped serving without waiting for a request to fail there.
//!
//! Off unless `probe.path` is set. A refused connection marks the endpoint
//! gone at once (nothing listens there); other failures count towards
//! `unhealthy_threshold`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::task::JoinHandle;

use super::{Registry, State};
use crate::config;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Probes every endpoint address the registry knows, following membership
/// changes (one task per address); `None` when probing is off. Aborting the
/// returned task stops every probe.
pub(crate) fn spawn(registry: Arc<Registry>, cfg: &config::Probe) -> Option<JoinHandle<()>> {
    if cfg.path.is_empty() {
        return None;
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.timeout));
    // With a timer, idle connections to endpoints that left are swept
    // instead of kept until the endpoint is probed again (never, once it
    // is gone).
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let cfg = cfg.clone();
    Some(tokio::spawn(async move {
        let mut members = registry.membership();
        // Dropping the map (when this task is aborted) aborts every probe.
        let mut probes: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
        loop {
            members.borrow_and_update();
            let now: HashSet<SocketAddr> = registry.addresses().into_iter().collect();
            probes.retain(|addr, _| now.contains(addr));
            for addr in now {
                probes.entry(addr).or_insert_with(|| {
                    let probe = Probe {
                        addr,
                        uri: format!("http://{addr}{}", cfg.path),
                        client: client.clone(),
                        registry: Arc::clone(&registry),
                        cfg: cfg.clone(),
                    };
                    AbortOnDrop(tokio::spawn(probe.run()))
                });
            }
            if members.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// A probe task that stops when its endpoint leaves the registry.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
