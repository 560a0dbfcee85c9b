//! The endpoint registry shared by every stream.
//!
//! Membership (which endpoints a cluster has) changes rarely: config, later
//! service discovery. It is held in an [`ArcSwap`] snapshot, so the request
//! path reads it without a lock. State changes (drain, ready, a passive
//! penalty) are frequent in a rollout and touch one endpoint: they are
//! atomics on the endpoint itself. Every change that can make an endpoint
//! usable bumps a watch channel, which wakes the requests held for one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config;

/// Where an endpoint is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Serving; requests may go to it.
    Ready = 0,
    /// Booting, or failing its readiness probe.
    NotReady = 1,
    /// Leaving (preStop, terminating): no new request goes to it.
    Draining = 2,
    /// Not accepting connections.
    Gone = 3,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Ready,
            1 => State::NotReady,
            2 => State::Draining,
            _ => State::Gone,
        }
    }
}

/// One upstream endpoint of one cluster.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub cluster: Arc<str>,
    state: AtomicU8,
    /// Set when the endpoint starts draining, cleared only by a lifecycle
    /// `ready` call: while set, no discovery source or probe may bring it
    /// back, whatever path it takes (draining, then not ready, then ready).
    drain_pinned: AtomicBool,
    /// Why the endpoint is in its state; written only when the state changes.
    reason: Mutex<String>,
    /// Passive health: avoided until this instant (ms since the registry
    /// started); 0 when not penalised.
    penalty_until_ms: AtomicU64,
    /// Consecutive failures seen; the penalty doubles with each.
    failures: AtomicU32,
}

impl Endpoint {
    fn new(addr: SocketAddr, cluster: Arc<str>, state: State, reason: &str) -> Self {
        Self {
            addr,
            cluster,
            state: AtomicU8::new(state as u8),
            drain_pinned: AtomicBool::new(state == State::Draining),
            reason: Mutex::new(reason.to_string()),
            penalty_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: State, reason: &str) {
        let mut guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if state == State::Draining {
            self.drain_pinned.store(true, Ordering::Release);
        }
        self.state.store(state as u8, Ordering::Release);
        guard.clear();
        guard.push_str(reason);
    }

    /// The state a discovery source or a probe may set: once draining, an
    /// endpoint is at most draining (or gone) until a lifecycle `ready`.
    fn observed_state(&self, wanted: State) -> State {
        let pinned = self.drain_pinned.load(Ordering::Acquire);
        if pinned && matches!(wanted, State::Ready | State::NotReady) {
            State::Draining
        } else {
            wanted
        }
    }

    fn view(&self, now_ms: u64) -> EndpointView {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        EndpointView {
            address: self.addr,
            cluster: self.cluster.to_string(),
            state: self.state(),
            reason,
            penalty_ms: self
                .penalty_until_ms
                .load(Ordering::Acquire)
                .saturating_sub(now_ms),
        }
    }
}

/// A serialisable snapshot of an endpoint, for the admin and control APIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub address: SocketAddr,
    pub cluster: String,
    pub state: State,
    pub reason: String,
    /// Milliseconds of passive-health penalty left (0: none).
    pub penalty_ms: u64,
}

/// The endpoints of one cluster.
#[derive(Debug, Default)]
pub struct Cluster {
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// Counts lookups of a cluster the registry does not know (Prometheus).
pub const UNKNOWN_CLUSTER_METRIC: &str = "mulligan_unknown_cluster_total";

/// Pods coming up that no endpoint stands for yet, per cluster (Prometheus
/// gauge; see `ComingUp`).
pub const COMING_UP_METRIC: &str = "mulligan_pods_coming_up";

#[derive(Debug, Default)]
struct Snapshot {
    clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    /// Every endpoint with a given address, across clusters.
    by_addr: HashMap<SocketAddr, Vec<Arc<Endpoint>>>,
}

impl Snapshot {
    fn index(clusters: BTreeMap<Arc<str>, Arc<Cluster>>) -> Self {
        let mut by_addr: HashMap<SocketAddr, Vec<Arc<Endpoint>>> = HashMap::new();
        for c in clusters.values() {
            for e in &c.endpoints {
                by_addr.entry(e.addr).or_default().push(Arc::clone(e));
            }
        }
        Self { clusters, by_addr }
    }

    /// Cluster `name`, or with `None` the only cluster there is.
    fn named(&self, name: Option<&str>) -> Option<(&Arc<str>, &Arc<Cluster>)> {
        match name {
            Some(n) => self.clusters.get_key_value(n),
            None if self.clusters.len() == 1 => self.clusters.iter().next(),
            None => None,
        }
    }
}

/// Pods per cluster that discovery knows are on their way but that no
/// endpoint stands for yet: Pending (scheduled, pulling its image: no IP),
/// or with an IP no EndpointSlice lists yet. Without this count a scale
/// from zero, or a Recreate rollout with every old pod gone, looks like a
/// cluster nothing can come back to, and the 503 comes at once although a
/// pod is on its way. Written by the Pod watch, read lock-free by holds.
#[derive(Debug, Default)]
struct ComingUp(ArcSwap<BTreeMap<Arc<str>, usize>>);

/// Every known cluster and its endpoints.
#[derive(Debug)]
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    start: Instant,
    /// Bumped whenever an endpoint may have become usable.
    changed: watch::Sender<u64>,
    /// Bumped whenever the set of endpoints changes (probes follow it).
    membership: watch::Sender<u64>,
    /// The clusters each discovery source published last (`replace_source`).
    sources: Mutex<HashMap<String, BTreeSet<Arc<str>>>>,
    coming_up: ComingUp,
    penalty_base: Duration,
    penalty_max: Duration,
}

/// A lifecycle call named an endpoint the registry does not know. mulligan
/// never learns endpoints from such calls: only config and discovery add them.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint {0} is known")]
pub struct NotFound(pub String);

impl Registry {
    /// Builds the registry from static configuration; every endpoint starts
    /// ready (static endpoints are trusted until a lifecycle call, a probe or
    /// a failure says otherwise).
    pub fn from_config(cfg: &config::Endpoints, health: &config::Health) -> Self {
        let mut clusters = BTreeMap::new();
        let mut add = |name: &str, addrs: &[SocketAddr]| {
            let name: Arc<str> = Arc::from(name);
            let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len());
            for a in addrs {
                if endpoints.iter().any(|e| e.addr == *a) {
                    continue;
                }
                endpoints.push(Arc::new(Endpoint::new(
                    *a,
                    name.clone(),
                    State::Ready,
                    "static",
                )));
            }
            clusters.insert(name, Arc::new(Cluster { endpoints }));
        };
        if !cfg.default.is_empty() {
            add(&cfg.static_cluster, &cfg.default);
        }
        for (name, addrs) in &cfg.clusters {
            add(name, addrs);
        }
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::index(clusters)),
            start: Instant::now(),
            changed: watch::channel(0).0,
            membership: watch::channel(0).0,
            sources: Mutex::new(HashMap::new()),
            coming_up: ComingUp::default(),
            penalty_base: health.penalty_base,
            penalty_max: health.penalty_max.max(health.penalty_base),
        }
    }

    /// Milliseconds since the registry started: the clock of penalties.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The endpoints of an Envoy cluster, and only its own: an unknown
    /// cluster gets none (counted in [`UNKNOWN_CLUSTER_METRIC`]), never
    /// another cluster's, so a new route's requests cannot be sent to a
    /// different service. `None` (Envoy did not name the cluster) finds the
    /// only cluster when there is exactly one, since then no other service
    /// can be meant; otherwise none.
    pub fn cluster(&self, name: Option<&str>) -> Option<Arc<Cluster>> {
        let snap = self.snapshot.load();
        let found = snap.named(name).map(|(_, c)| Arc::clone(c));
        if found.is_none() {
            metrics::counter!(UNKNOWN_CLUSTER_METRIC).increment(1);
        }
        found
    }

    /// Every distinct endpoint address (for probing).
    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        self.snapshot.load().by_addr.keys().copied().collect()
    }

    /// The state of `addr` as the registry knows it (the first cluster's).
    pub(crate) fn state_of(&self, addr: SocketAddr) -> Option<State> {
        let snap = self.snapshot.load();
        snap.by_addr.get(&addr)?.first().map(|e| e.state())
    }

    /// Wakes every request held for a usable endpoint.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes whoever follows the set of endpoints (the probe supervisor).
    pub(crate) fn membership(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }

    /// Replaces the endpoints of `cluster` with `entries` (a discovery
    /// source's full view of it). Endpoints that stay keep their identity:
    /// in-flight counts and penalties survive. A source never ends a drain:
    /// an endpoint that is draining stays so until a lifecycle `ready` call,
    /// or until it leaves and comes back.
    pub(crate) fn replace_cluster(
        &self,
        cluster: &str,
        entries: &[(SocketAddr, State)],
        source: &str,
    ) {
        let name: Arc<str> = Arc::from(cluster);
        let mut woke = false;
        let old = self.snapshot.rcu(|snap| {
            let old = snap.clusters.get(&name);
            let mut endpoints = Vec::with_capacity(entries.len());
            for (addr, state) in entries {
                if endpoints.iter().any(|e: &Arc<Endpoint>| e.addr == *addr) {
                    continue;
                }
                let existing = old.and_then(|c| c.endpoints.iter().find(|e| e.addr == *addr));
                let e = match existing {
                    Some(e) => {
                        let to = e.observed_state(*state);
                        if e.state() != to {
                            e.set_state(to, source);
                        }
                        Arc::clone(e)
                    }
                    None => Arc::new(Endpoint::new(*addr, name.clone(), *state, source)),
                };
                woke |= e.state() == State::Ready;
                endpoints.push(e);
            }
            let mut clusters = snap.clusters.clone();
            clusters.insert(name.clone(), Arc::new(Cluster { endpoints }));
            Snapshot::index(clusters)
        });
        self.forget_departed(&old, &name);
        self.membership.send_modify(|v| *v = v.wrapping_add(1));
        if woke {
            self.notify();
        }
    }

    /// Publishes a discovery source's full view: every cluster in `clusters`
    /// is replaced, and every cluster this source published before but no
    /// longer lists leaves the registry (a cluster removed from the EDS file
    /// must not keep being served from memory).
    pub(crate) fn replace_source(
        &self,
        source: &str,
        clusters: &[(String, Vec<(SocketAddr, State)>)],
    ) {
        let mut published = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeSet<Arc<str>> = clusters
            .iter()
            .map(|(n, _)| Arc::from(n.as_str()))
            .collect();
        for (name, entries) in clusters {
            self.replace_cluster(name, entries, source);
        }
        if let Some(before) = published.get(source) {
            for gone in before.difference(&now) {
                self.remove_cluster(gone);
                tracing::info!(cluster = %gone, source, "cluster left the registry");
            }
        }
        published.insert(source.to_string(), now);
    }

    /// Removes `cluster` and its endpoints.
    pub(crate) fn remove_cluster(&self, cluster: &str) {
        let old = self.snapshot.rcu(|snap| {
            let mut clusters = snap.clusters.clone();
            clusters.remove(cluster);
            Snapshot::index(clusters)
        });
        self.forget_departed(&old, cluster);
        self.membership.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Endpoints of `cluster` in `old` that the current snapshot no longer
    /// has take their penalties with them.
    fn forget_departed(&self, old: &Snapshot, cluster: &str) {
        let Some(before) = old.clusters.get(cluster) else {
            return;
        };
        let snap = self.snapshot.load();
        let after = snap.clusters.get(cluster);
        for e in &before.endpoints {
            let stays = after.is_some_and(|c| c.endpoints.iter().any(|n| Arc::ptr_eq(n, e)));
            if !stays {
                self.clear_penalty(e);
            }
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sets how many pods of `cluster` are coming up that no endpoint
    /// stands for yet (see `ComingUp`); a change wakes the holds.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn set_coming_up(&self, cluster: &str, pods: usize) {
        if self.coming_up.0.load().get(cluster).copied().unwrap_or(0) == pods {
            return;
        }
        let name: Arc<str> = Arc::from(cluster);
        let before = self.coming_up.0.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            if pods == 0 {
                m.remove(&name);
            } else {
                m.insert(name.clone(), pods);
            }
            m
        });
        if before.get(&name).copied().unwrap_or(0) != pods {
            metrics::gauge!(COMING_UP_METRIC, "cluster" => cluster.to_string()).set(pods as f64);
            self.notify();
        }
    }

    /// The addresses (IPs) of cluster `name`'s endpoints, whatever their
    /// state; none for a cluster the registry does not know.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn ips_of(&self, name: &str) -> Vec<std::net::IpAddr> {
        let snap = self.snapshot.load();
        snap.clusters.get(name).map_or_else(Vec::new, |c| {
            c.endpoints.iter().map(|e| e.addr.ip()).collect()
        })
    }

    /// Pods of cluster `name` coming up that no endpoint stands for yet.
    /// `None` means the only cluster, as in [`Registry::cluster`].
    pub(crate) fn coming_up(&self, name: Option<&str>) -> usize {
        let counts = self.coming_up.0.load();
        let count = |n: &str| counts.get(n).copied().unwrap_or(0);
        match name {
            Some(n) => count(n),
            None => self
                .snapshot
                .load()
                .named(None)
                .map_or(0, |(n, _)| count(n)),
        }
    }

    /// Every endpoint, or those of one cluster.
    pub(crate) fn list(&self, cluster: Option<&str>) -> Vec<EndpointView> {
        let snap = self.snapshot.load();
        let now = self.now_ms();
        snap.clusters
            .iter()
            .filter(|(name, _)| cluster.is_none_or(|c| c == &***name))
            .flat_map(|(_, c)| c.endpoints.iter().map(|e| e.view(now)))
            .collect()
    }

    /// Sets the state of `addr` in `cluster` (or in every cluster that has
    /// it, when `cluster` is `None`), returning the endpoints changed.
    pub(crate) fn set_state(
        &self,
        addr: SocketAddr,
        cluster: Option<&str>,
        state: State,
        reason: &str,
    ) -> Result<Vec<EndpointView>, NotFound> {
        let snap = self.snapshot.load();
        let now = self.now_ms();
        let changed: Vec<EndpointView> = snap
            .by_addr
            .get(&addr)
            .into_iter()
            .flatten()
            .filter(|e| cluster.is_none_or(|c| c == &*e.cluster))
            .map(|e| {
                e.set_state(state, reason);
                if state == State::Ready {
                    // Only this call ends a drain.
                    e.drain_pinned.store(false, Ordering::Release);
                    self.clear_penalty(e);
                }
                e.view(now)
            })
            .collect();
        if changed.is_empty() {
            let what = match cluster {
                Some(c) => format!("{addr} in cluster {c}"),
                None => addr.to_string(),
            };
            return Err(NotFound(what));
        }
        if state == State::Ready {
            self.notify();
        }
        Ok(changed)
    }

    /// Every endpoint on `ip` (any port, any cluster) is draining: its pod
    /// is being deleted.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn drain_ip(&self, ip: std::net::IpAddr, reason: &str) {
        let snap = self.snapshot.load();
        for (addr, eps) in &snap.by_addr {
            if addr.ip() != ip {
                continue;
            }
            for e in eps {
                if matches!(e.state(), State::Ready | State::NotReady) {
                    e.set_state(State::Draining, reason);
                }
            }
        }
    }

    /// An active probe's verdict on `addr`. A draining endpoint stays
    /// draining: only a lifecycle call brings it back.
    pub(crate) fn probed(&self, addr: SocketAddr, state: State, reason: &str) {
        let snap = self.snapshot.load();
        let mut woke = false;
        for e in snap.by_addr.get(&addr).into_iter().flatten() {
            let (now, to) = (e.state(), e.observed_state(state));
            if now == State::Draining || now == to {
                continue;
            }
            e.set_state(to, reason);
            if to == State::Ready {
                self.clear_penalty(e);
                woke = true;
            }
        }
        if woke {
            self.notify();
        }
    }

    /// Passive health: a request to `addr` failed in a way that says the
    /// endpoint, not the request, is the problem. The endpoint is avoided for
    /// a penalty that doubles with each consecutive failure.
    pub(crate) fn observe_failure(&self, addr: SocketAddr) {
        let snap = self.snapshot.load();
        let now = self.now_ms();
        for e in snap.by_addr.get(&addr).into_iter().flatten() {
            let n = e.failures.fetch_add(1, Ordering::AcqRel).min(16);
            let penalty = self
                .penalty_base
                .saturating_mul(1 << n)
                .min(self.penalty_max);
            let until = now + penalty.as_millis() as u64;
            e.penalty_until_ms.store(until, Ordering::Release);
        }
    }

    fn clear_penalty(&self, e: &Endpoint) -> bool {
        e.failures.store(0, Ordering::Release);
        e.penalty_until_ms.swap(0, Ordering::AcqRel) != 0
    }
}

/// For unit tests: `n` static endpoints, 127.0.0.1 ports 1..=n.
#[cfg(test)]
pub(crate) fn loopback(n: u16) -> Registry {
    let cfg = config::Endpoints {
        default: (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect(),
        ..Default::default()
    };
    Registry::from_config(&cfg, &config::Health::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let cfg = config::Endpoints {
            default: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            static_cluster: "static".into(),
            clusters: [("app".to_string(), vec!["127.0.0.1:2".parse().unwrap()])].into(),
            ..Default::default()
        };
        Registry::from_config(&cfg, &config::Health::default())
    }

    #[test]
    #[cfg(feature = "kubernetes")]
    fn pods_coming_up_count_per_cluster_and_every_change_wakes_holds() {
        let r = registry();
        let mut rx = r.subscribe();
        r.set_coming_up("app", 2);
        assert!(rx.has_changed().expect("open"), "held requests must wake");
        rx.borrow_and_update();
        assert_eq!(r.coming_up(Some("app")), 2);
        assert_eq!(r.coming_up(Some("static")), 0, "another cluster's pods");
        r.set_coming_up("app", 2);
        assert!(!rx.has_changed().expect("open"), "no change, no wake");
        // Down to zero wakes too: a hold that was plausible only for these
        // pods must end at once.
        r.set_coming_up("app", 0);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(r.coming_up(Some("app")), 0);
    }

    #[test]
    fn lists_every_cluster_or_one() {
        let r = registry();
        assert_eq!(r.list(None).len(), 3);
        assert_eq!(r.list(Some("app")).len(), 1);
        assert!(r.list(Some("other")).is_empty());
        assert_eq!(
            r.cluster(Some("static")).expect("static").endpoints.len(),
            2
        );
        assert_eq!(r.cluster(Some("app")).expect("app").endpoints.len(), 1);
    }

    #[test]
    fn an_unknown_cluster_is_never_served_by_another_clusters_endpoints() {
        let r = registry();
        assert!(r.cluster(Some("httproute/default/new/rule/0")).is_none());
        // Envoy named no cluster and two are known: no guess either.
        assert!(r.cluster(None).is_none());
        let one = loopback(2);
        assert!(one.cluster(Some("other")).is_none());
        assert_eq!(one.cluster(None).expect("the only one").endpoints.len(), 2);
    }

    #[test]
    fn drain_marks_the_address_in_every_cluster_that_has_it() {
        let r = registry();
        let changed = r
            .set_state(
                "127.0.0.1:2".parse().unwrap(),
                None,
                State::Draining,
                "preStop",
            )
            .expect("known");
        assert_eq!(changed.len(), 2);
        assert!(changed
            .iter()
            .all(|e| e.state == State::Draining && e.reason == "preStop"));
        let one = r
            .set_state(
                "127.0.0.1:2".parse().unwrap(),
                Some("app"),
                State::Ready,
                "postStart",
            )
            .expect("known");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn unknown_addresses_are_refused_not_learned() {
        let r = registry();
        let err = r
            .set_state("10.9.9.9:80".parse().unwrap(), None, State::Ready, "x")
            .expect_err("unknown");
        assert!(err.to_string().contains("10.9.9.9:80"));
        assert_eq!(r.list(None).len(), 3);
    }

    #[test]
    fn passive_penalty_grows_and_a_ready_endpoint_starts_afresh() {
        let r = registry();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = r.cluster(Some("static")).expect("static");
        let e = &c.endpoints[0];
        r.observe_failure(a);
        let first = e.penalty_until_ms.load(Ordering::Acquire);
        assert!(first > 0);
        r.observe_failure(a);
        assert!(e.penalty_until_ms.load(Ordering::Acquire) > first);
        r.set_state(a, None, State::NotReady, "probe")
            .expect("known");
        let rx = r.subscribe();
        r.set_state(a, None, State::Ready, "lifecycle: ready")
            .expect("known");
        assert_eq!(e.penalty_until_ms.load(Ordering::Acquire), 0);
        assert!(rx.has_changed().expect("open"), "held requests must wake");
    }

    #[test]
    fn a_source_replaces_membership_but_keeps_identity_and_drains() {
        let r = registry();
        let a: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let before = r.cluster(Some("app")).unwrap();
        r.set_state(a, Some("app"), State::Draining, "lifecycle: drain")
            .unwrap();
        let members = r.membership();
        r.replace_cluster("app", &[(a, State::Ready), (b, State::NotReady)], "file");
        assert!(members.has_changed().unwrap());
        let after = r.cluster(Some("app")).unwrap();
        assert_eq!(after.endpoints.len(), 2);
        assert!(
            Arc::ptr_eq(&after.endpoints[0], &before.endpoints[0]),
            "same endpoint, same counters"
        );
        assert_eq!(
            after.endpoints[0].state(),
            State::Draining,
            "a source never ends a drain"
        );
        assert_eq!(r.state_of(b), Some(State::NotReady));
        r.replace_cluster("app", &[(b, State::Ready)], "file");
        assert_eq!(r.list(Some("app")).len(), 1);
        assert_eq!(r.state_of(b), Some(State::Ready));
        // The default cluster was untouched.
        assert_eq!(r.list(Some("static")).len(), 2);
    }

    #[test]
    fn probes_never_undo_a_drain() {
        let r = registry();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        r.set_state(a, None, State::Draining, "preStop")
            .expect("known");
        r.probed(a, State::Ready, "probe ok");
        assert_eq!(r.state_of(a), Some(State::Draining));
        r.set_state(a, None, State::Ready, "postStart")
            .expect("known");
        r.probed(a, State::Gone, "probe refused");
        assert_eq!(r.state_of(a), Some(State::Gone));
    }

    #[test]
    fn only_a_lifecycle_ready_ends_a_drain() {
        let r = registry();
        let a: SocketAddr = "127.0.0.1:2".parse().unwrap();
        r.set_state(a, Some("app"), State::Draining, "lifecycle: drain")
            .unwrap();
        // A source sees the pod go not ready, then ready again.
        r.replace_cluster("app", &[(a, State::NotReady)], "kubernetes");
        r.replace_cluster("app", &[(a, State::Ready)], "kubernetes");
        assert_eq!(r.list(Some("app"))[0].state, State::Draining);
        // A drain a source reported is kept the same way, and probes and a
        // stop at Gone do not end it either.
        r.replace_cluster("app", &[(a, State::Draining)], "eds file");
        r.replace_cluster("app", &[(a, State::Gone)], "eds file");
        r.probed(a, State::Ready, "probe: ok");
        r.replace_cluster("app", &[(a, State::Ready)], "eds file");
        assert_eq!(r.list(Some("app"))[0].state, State::Draining);
        r.set_state(a, Some("app"), State::Ready, "lifecycle: ready")
            .unwrap();
        r.replace_cluster("app", &[(a, State::NotReady)], "kubernetes");
        r.replace_cluster("app", &[(a, State::Ready)], "kubernetes");
        assert_eq!(r.list(Some("app"))[0].state, State::Ready);
    }
}
