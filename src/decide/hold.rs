//! Holding: a failed attempt that another attempt could fix, but for which
//! no endpoint can serve yet (every pod booting or draining, the cluster
//! empty, Envoy's endpoints all refusing connections), waits here until one
//! can. Then mulligan says "retry" and Envoy sends the whole request again
//! through the route.
//!
//! "Can serve" is the registry's word (ready, not penalised) confirmed by a
//! TCP connect, so an endpoint that comes back is noticed within one
//! `interval` even with no probe path configured. Probes are shared: an
//! endpoint is connected to at most once per `interval`, however many
//! requests wait on it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};

use crate::{
    config::Hold,
    endpoints::{Cluster, Registry, State},
    metrics::Metrics,
};

/// Why a hold ended without an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unheld {
    /// The deadline came first.
    TooLong,
    /// `hold.max_held` requests are held already.
    Limit,
    /// No endpoint of the cluster could come back: none is ready or
    /// starting (all draining or gone, or the cluster is empty).
    NothingComing,
}

/// Every request held right now, and what the probes last saw.
#[derive(Debug)]
pub struct Holds {
    registry: Arc<Registry>,
    metrics: Metrics,
    held: AtomicUsize,
    max_held: usize,
    interval: Duration,
    /// Last connect result per endpoint, and when it was taken.
    seen: Mutex<HashMap<SocketAddr, (Instant, bool)>>,
    /// Releases per second per usable endpoint of a cluster.
    release_rate: f64,
    /// The next free release slot per cluster: held requests go back to
    /// Envoy at a pace the endpoints that came back can take, not at once.
    next_release: Mutex<HashMap<Option<String>, Instant>>,
}

impl Holds {
    pub fn new(registry: Arc<Registry>, metrics: Metrics, cfg: &Hold) -> Self {
        Self {
            registry,
            metrics,
            held: AtomicUsize::new(0),
            max_held: cfg.max_held,
            interval: cfg.interval.max(Duration::from_millis(1)),
            seen: Mutex::new(HashMap::new()),
            release_rate: f64::from(cfg.release_per_endpoint.max(1)),
            next_release: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an endpoint of cluster `name` could serve soon: one that is
    /// not leaving (ready, starting, or refusing connections at an address
    /// the configuration still lists: a restart may bring it back), or a pod
    /// discovery shows coming up that no endpoint stands for yet (the
    /// cluster scaling up). A cluster whose endpoints are all draining, or that has
    /// none (discovery removes pods that are gone) and no pod on its way, is
    /// not worth waiting for: the client gets its 503 and `Retry-After` at
    /// once.
    pub fn plausible(&self, name: Option<&str>) -> bool {
        self.plausible_with(name, self.registry.cluster(name).as_deref())
    }

    /// [`Holds::plausible`] with `cluster` already looked up.
    fn plausible_with(&self, name: Option<&str>, cluster: Option<&Cluster>) -> bool {
        cluster.is_some_and(coming) || self.registry.coming_up(name) > 0
    }

    /// Whether an endpoint of `cluster` other than `except` is ready (by
    /// the registry alone: no probe).
    pub fn has_other(&self, cluster: &Cluster, except: Option<SocketAddr>) -> bool {
        cluster
            .endpoints
            .iter()
            .any(|e| Some(e.addr) != except && serves(e))
    }

    /// Waits until an endpoint of cluster `name` can serve, then `settle`
    /// more (time for Envoy's own view to catch up), or until `deadline`.
    /// The cluster is read afresh on every wake: an endpoint discovered
    /// after the hold began serves it too.
    pub async fn wait(
        &self,
        name: Option<&str>,
        settle: Duration,
        deadline: Instant,
    ) -> Result<(), Unheld> {
        if !self.plausible(name) {
            return Err(Unheld::NothingComing);
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Unheld::Limit);
        }
        let _held = Held(self);
        self.metrics.held(1.0);
        let mut changes = self.registry.subscribe();
        let mut members = self.registry.membership();
        loop {
            changes.borrow_and_update();
            members.borrow_and_update();
            let cluster = self.registry.cluster(name);
            if !self.plausible_with(name, cluster.as_deref()) {
                return Err(Unheld::NothingComing);
            }
            let cluster = cluster.unwrap_or_default();
            if self.reachable(&cluster).await {
                let ready = self.release_slot(name, &cluster, Instant::now() + settle);
                tokio::time::sleep_until(ready.min(deadline)).await;
                return if ready <= deadline {
                    Ok(())
                } else {
                    Err(Unheld::TooLong)
                };
            }
            let tick = (Instant::now() + self.interval).min(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                _ = members.changed() => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
            if Instant::now() >= deadline {
                return Err(Unheld::TooLong);
            }
        }
    }

    /// The first release slot of cluster `name` at or after `earliest`,
    /// taken: slots are `1 / (rate × usable endpoints)` apart.
    fn release_slot(&self, name: Option<&str>, cluster: &Cluster, earliest: Instant) -> Instant {
        let usable = cluster
            .endpoints
            .iter()
            .filter(|e| serves(e))
            .count()
            .max(1);
        let gap = Duration::from_secs_f64(1.0 / (self.release_rate * usable as f64));
        let mut next = self.next_release.lock().unwrap_or_else(|p| p.into_inner());
        if next.len() > 4096 {
            next.clear();
        }
        let slot = next
            .get(&name.map(str::to_string))
            .map_or(earliest, |n| (*n).max(earliest));
        next.insert(name.map(str::to_string), slot + gap);
        slot
    }

    /// Whether some usable endpoint of `cluster` accepts a connection.
    async fn reachable(&self, cluster: &Cluster) -> bool {
        let usable: Vec<SocketAddr> = cluster
            .endpoints
            .iter()
            .filter(|e| serves(e))
            .map(|e| e.addr)
            .collect();
        let probes = usable.into_iter().map(|a| self.connects(a));
        futures::future::join_all(probes)
            .await
            .into_iter()
            .any(|ok| ok)
    }

    /// A connect to `addr`, or the result of one taken less than an
    /// `interval` ago.
    async fn connects(&self, addr: SocketAddr) -> bool {
        if let Some(ok) = self.recent(addr) {
            return ok;
        }
        let ok = matches!(
            tokio::time::timeout(self.interval, TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, (Instant::now(), ok));
        ok
    }

    fn recent(&self, addr: SocketAddr) -> Option<bool> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            // Addresses of pods long gone: start over.
            seen.clear();
        }
        seen.get(&addr)
            .filter(|(at, _)| at.elapsed() < self.interval)
            .map(|(_, ok)| *ok)
    }
}

/// Whether an endpoint of `cluster` is not leaving (see [`Holds::plausible`]).
fn coming(cluster: &Cluster) -> bool {
    cluster
        .endpoints
        .iter()
        .any(|e| e.state() != State::Draining)
}

/// Whether an endpoint may serve, as far as a hold is concerned: ready by
/// its sources (configuration, discovery, lifecycle, probes). Passive
/// penalties do not count here: with the decide wiring mulligan sees only
/// failures, never the successes that would clear them, and Envoy, not
/// mulligan, picks the endpoint; the TCP check and Envoy's own retry judge
/// whether it really serves.
fn serves(e: &crate::endpoints::Endpoint) -> bool {
    e.state() == State::Ready
}

/// Releases a held request's place, however the hold ends.
struct Held<'a>(&'a Holds);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.held(-1.0);
    }
}

/// `start + d`, but never past a year from `start`: durations come from the
/// config, which is input too, and an `Instant` that overflows panics (a
/// `hold.max_hold` of a billion years would otherwise take the stream down
/// on its first hold).
pub(crate) fn later(start: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    start.checked_add(d.min(FAR)).unwrap_or(start)
}
