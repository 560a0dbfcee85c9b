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
//!
//! mulligan often knows an endpoint before Envoy does (its discovery has no
//! propagation lag, its probes see readiness first). A request released
//! then comes back (from the hold endpoint, or from a leaver Envoy's list
//! still shows). So a cluster is *behind* from the moment an attempt of it
//! is held until a retry is served by an app: while it is, held requests
//! leave one at a time, a *scout* per `settle`, and the rest wait until a
//! scout is served, then go at the release pace. The others keep their retries
//! (Envoy's `num_retries`) for when Envoy can use them.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{net::TcpStream, sync::watch, time::Instant};

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
    /// Clusters Envoy is behind on.
    behind: Mutex<HashMap<Option<String>, Behind>>,
    /// Bumped when a retry is served: wakes the requests waiting for a
    /// scout.
    served: watch::Sender<u64>,
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
            behind: Mutex::new(HashMap::new()),
            served: watch::Sender::new(0),
        }
    }

    /// An attempt of cluster `name` is held: Envoy had no endpoint to send
    /// it to that could serve it, whatever mulligan knows.
    pub fn envoy_behind(&self, name: Option<&str>) {
        let mut behind = self.behind.lock().unwrap_or_else(|p| p.into_inner());
        if behind.len() > 4096 {
            behind.clear();
        }
        let now = Instant::now();
        behind
            .entry(name.map(str::to_string))
            .and_modify(|b| b.seen = now)
            .or_insert(Behind {
                seen: now,
                next_scout: now,
            });
    }

    /// A retry of cluster `name` was served by an app: Envoy can send there
    /// again, and every request waiting for a scout may go.
    pub fn served(&self, name: Option<&str>) {
        let was = self
            .behind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.map(str::to_string));
        if was.is_some() {
            self.served.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether Envoy is behind on cluster `name`.
    pub fn is_behind(&self, name: Option<&str>) -> bool {
        let mut behind = self.behind.lock().unwrap_or_else(|p| p.into_inner());
        current(&mut behind, name).is_some()
    }

    /// When a request of cluster `name` that may not leave before
    /// `not_before` scouts: the next slot of the cluster's queue (one per
    /// `gap`, taken), or its own later time, which leaves the queue to the
    /// others; `None` when Envoy is not behind on it.
    fn scout_slot(
        &self,
        name: Option<&str>,
        not_before: Instant,
        gap: Duration,
    ) -> Option<Instant> {
        let mut behind = self.behind.lock().unwrap_or_else(|p| p.into_inner());
        let b = current(&mut behind, name)?;
        let queue = b.next_scout.max(Instant::now());
        if not_before > queue {
            return Some(not_before);
        }
        b.next_scout = queue + gap;
        Some(queue)
    }

    /// Requests held right now.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
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
    /// While Envoy is behind on the cluster, the request leaves as a scout
    /// (one per `settle`, and not before `patience` from now: a request
    /// back from the hold again waits its turn longer, so its retries last)
    /// or as soon as a scout is served. The cluster is read afresh on every
    /// wake: an endpoint discovered after the hold began serves it too.
    pub async fn wait(
        &self,
        name: Option<&str>,
        settle: Duration,
        patience: Duration,
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
        let mut served = self.served.subscribe();
        let not_before = later(Instant::now(), patience);
        let mut confirmed = false;
        loop {
            changes.borrow_and_update();
            members.borrow_and_update();
            served.borrow_and_update();
            let cluster = self.registry.cluster(name);
            if !self.plausible_with(name, cluster.as_deref()) {
                return Err(Unheld::NothingComing);
            }
            let cluster = cluster.unwrap_or_default();
            if self.reachable(&cluster).await {
                let timing = (settle, not_before);
                let go = self.release(name, &cluster, timing, confirmed, deadline, &mut served);
                match go.await {
                    Some(ended) => return ended,
                    None => confirmed = true,
                }
                continue;
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

    /// Once an endpoint of `cluster` is reachable: the request goes at
    /// its release slot (at once when a scout was served, else `settle`
    /// from now) or, while Envoy is behind, at its scout slot (`settle`
    /// apart, not before `not_before`); `None` when a scout is served
    /// first.
    async fn release(
        &self,
        name: Option<&str>,
        cluster: &Cluster,
        (settle, not_before): (Duration, Instant),
        confirmed: bool,
        deadline: Instant,
        served: &mut watch::Receiver<u64>,
    ) -> Option<Result<(), Unheld>> {
        let now = Instant::now();
        let scout = if confirmed {
            None
        } else {
            self.scout_slot(name, not_before, settle)
        };
        let Some(scout) = scout else {
            let earliest = if confirmed { now } else { now + settle };
            let ready = self.release_slot(name, cluster, earliest);
            return Some(until(ready, deadline).await);
        };
        tokio::select! {
            ended = until(scout, deadline) => {
                if ended.is_err() {
                    return Some(ended);
                }
                // A scout is a release like any other: at the pace.
                let ready = self.release_slot(name, cluster, Instant::now());
                Some(until(ready, deadline).await)
            }
            _ = served.changed() => None,
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

/// Envoy seen behind on a cluster.
#[derive(Debug)]
struct Behind {
    /// When an attempt was last held.
    seen: Instant,
    /// The next free scout slot.
    next_scout: Instant,
}

/// How long one sighting keeps a cluster behind without a served retry to
/// clear it: past this, with no attempt held since, Envoy
/// may well have caught up, and held requests go at the usual pace (one
/// that finds Envoy still behind comes back and says so).
const BEHIND_FOR: Duration = Duration::from_secs(1);

/// Cluster `name`'s entry in `behind`, unless it has expired.
fn current<'a>(
    behind: &'a mut HashMap<Option<String>, Behind>,
    name: Option<&str>,
) -> Option<&'a mut Behind> {
    let key = name.map(str::to_string);
    if behind.get(&key)?.seen.elapsed() > BEHIND_FOR {
        behind.remove(&key);
        return None;
    }
    behind.get_mut(&key)
}

/// Sleeps until `ready`: released then, or too long if `deadline` comes
/// first.
async fn until(ready: Instant, deadline: Instant) -> Result<(), Unheld> {
    tokio::time::sleep_until(ready.min(deadline)).await;
    if ready <= deadline {
        Ok(())
    } else {
        Err(Unheld::TooLong)
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
/// penalties do not count here: mulligan sees only
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Endpoints, Health};

    /// Listeners that accept connections (the kernel completes them on the
    /// backlog; nothing reads), so a hold's connect check succeeds.
    fn listening(n: usize) -> (Vec<std::net::TcpListener>, Vec<SocketAddr>) {
        let listeners: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        (listeners, addrs)
    }

    fn holds(addrs: &[SocketAddr], change: impl FnOnce(&mut Hold)) -> Holds {
        let endpoints = Endpoints {
            clusters: [("app".to_string(), addrs.to_vec())].into(),
            ..Default::default()
        };
        let registry = Arc::new(Registry::from_config(&endpoints, &Health::default()));
        let mut cfg = Hold::default();
        change(&mut cfg);
        Holds::new(registry, Metrics::new(), &cfg)
    }

    fn set(h: &Holds, addr: SocketAddr, state: State) {
        h.registry
            .set_state(addr, Some("app"), state, "test")
            .expect("known");
    }

    const SETTLE: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(10);

    /// Guard: `settle` in `wait` (the release slot starts at now + settle).
    #[tokio::test(start_paused = true)]
    async fn a_reachable_endpoint_releases_after_the_settle_time() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |_| {});
        let start = Instant::now();
        let got = h
            .wait(Some("app"), SETTLE, Duration::ZERO, start + LONG)
            .await;
        assert_eq!(got, Ok(()));
        assert_eq!(start.elapsed(), SETTLE);
        assert_eq!(h.held(), 0);
    }

    /// Guard: the gap between release slots in `release_slot`.
    #[tokio::test(start_paused = true)]
    async fn held_requests_are_released_at_the_pace_of_the_usable_endpoints() {
        let (_l, addrs) = listening(2);
        // 5 per second per endpoint, 2 endpoints: one release every 100 ms.
        let h = holds(&addrs, |c| c.release_per_endpoint = 5);
        let start = Instant::now();
        let waits = (0..3).map(|_| async {
            h.wait(Some("app"), SETTLE, Duration::ZERO, start + LONG)
                .await
                .expect("released");
            start.elapsed()
        });
        let mut at = futures::future::join_all(waits).await;
        at.sort();
        let gap = Duration::from_millis(100);
        assert_eq!(at, vec![SETTLE, SETTLE + gap, SETTLE + gap * 2]);
    }

    /// Guard: the deadline check after each tick in `wait`.
    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_at_its_deadline_when_no_endpoint_serves() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |_| {});
        set(&h, addrs[0], State::NotReady);
        let start = Instant::now();
        let deadline = start + Duration::from_millis(350);
        let got =
            tokio::time::timeout(LONG, h.wait(Some("app"), SETTLE, Duration::ZERO, deadline)).await;
        assert_eq!(
            got,
            Ok(Err(Unheld::TooLong)),
            "a hold must end by its deadline"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(350));
        assert_eq!(h.held(), 0);
    }

    /// Guard: the registry subscription in `wait` (a change wakes the hold
    /// before the next tick).
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_becomes_ready_releases_the_hold() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |c| c.interval = LONG);
        set(&h, addrs[0], State::NotReady);
        let start = Instant::now();
        let ready = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            set(&h, addrs[0], State::Ready);
        };
        let (got, ()) = tokio::join!(
            h.wait(Some("app"), SETTLE, Duration::ZERO, start + LONG * 2),
            ready
        );
        assert_eq!(got, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_millis(200) + SETTLE);
    }

    /// Guard: the `plausible` checks in `wait` (before and on every wake).
    #[tokio::test(start_paused = true)]
    async fn nothing_coming_ends_the_hold_at_once() {
        let (_l, addrs) = listening(2);
        let h = holds(&addrs, |_| {});
        set(&h, addrs[0], State::Draining);
        set(&h, addrs[1], State::Draining);
        let start = Instant::now();
        assert_eq!(
            h.wait(Some("app"), SETTLE, Duration::ZERO, start + LONG)
                .await,
            Err(Unheld::NothingComing)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        // One not ready: worth waiting for, until it starts draining too.
        set(&h, addrs[1], State::NotReady);
        let leave = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            set(&h, addrs[1], State::Draining);
        };
        let (got, ()) = tokio::join!(
            h.wait(Some("app"), SETTLE, Duration::ZERO, start + LONG),
            leave
        );
        assert_eq!(got, Err(Unheld::NothingComing));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(
            h.wait(Some("other"), SETTLE, Duration::ZERO, start + LONG)
                .await,
            Err(Unheld::NothingComing),
            "a cluster mulligan does not know"
        );
    }

    /// Guard: the `max_held` check in `wait`.
    #[tokio::test(start_paused = true)]
    async fn past_max_held_a_request_is_not_held() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |c| c.max_held = 1);
        set(&h, addrs[0], State::NotReady);
        let start = Instant::now();
        let first = h.wait(
            Some("app"),
            SETTLE,
            Duration::ZERO,
            start + Duration::from_secs(1),
        );
        let second = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(h.held(), 1);
            let got = h
                .wait(Some("app"), SETTLE, Duration::ZERO, start + LONG)
                .await;
            (got, start.elapsed())
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first, Err(Unheld::TooLong));
        assert_eq!(second, (Err(Unheld::Limit), Duration::from_millis(10)));
        assert_eq!(h.held(), 0, "the place comes back");
        assert_eq!(
            h.wait(
                Some("app"),
                SETTLE,
                Duration::ZERO,
                Instant::now() + Duration::from_millis(5)
            )
            .await,
            Err(Unheld::TooLong),
            "held again once the first ended"
        );
    }

    /// Guard: `patience` in `Decider::hold` (a request's own releases) and
    /// its floor on the scout slot in `wait`.
    #[tokio::test(start_paused = true)]
    async fn a_request_back_at_the_hold_again_scouts_later() {
        let (_l, addrs) = listening(1);
        let mut cfg = Config::default();
        cfg.endpoints.clusters.insert("app".into(), addrs.clone());
        cfg.hold.settle = SETTLE;
        let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
        let d = super::super::Decider::new(&cfg, registry, Metrics::new());
        let mut took = Vec::new();
        // The releases are counted in the request's own state.
        let mut again = super::super::AttemptState::default();
        for released in 1..=4 {
            d.holds.envoy_behind(Some("app"));
            let start = Instant::now();
            let answer = d.hold(Some("app"), LONG, &mut again).await;
            assert_eq!(answer, crate::metrics::Answer::RetryAfterHold);
            assert_eq!(again.releases, released);
            took.push(start.elapsed().as_millis());
        }
        assert_eq!(took, vec![0, 50, 100, 150], "one settle more per release");
        d.holds.envoy_behind(Some("app"));
        let start = Instant::now();
        d.hold(Some("app"), LONG, &mut Default::default()).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(5),
            "another request: not held up by the first's patience, only by the release pace (200 a second)"
        );
    }

    /// Guards: `scout_slot` (one scout per settle while Envoy is behind)
    /// and the `served` wake in `wait` (the rest go at once).
    #[tokio::test(start_paused = true)]
    async fn while_envoy_is_behind_one_scout_leaves_per_settle_until_one_is_served() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |_| {});
        h.envoy_behind(Some("app"));
        let start = Instant::now();
        let waits = (0..4).map(|_| async {
            h.wait(Some("app"), SETTLE, Duration::ZERO, start + LONG)
                .await
                .expect("released");
            start.elapsed()
        });
        let serve = async {
            // The second scout is served 30 ms after it left.
            tokio::time::sleep(SETTLE + Duration::from_millis(30)).await;
            h.served(Some("app"));
        };
        let (mut at, ()) = tokio::join!(futures::future::join_all(waits), serve);
        at.sort();
        // The last two at once, at the release pace (200 a second).
        let served = SETTLE + Duration::from_millis(30);
        let pace = Duration::from_millis(5);
        assert_eq!(at, vec![Duration::ZERO, SETTLE, served, served + pace]);
        assert!(!h.is_behind(Some("app")));
        let again = Instant::now();
        h.wait(Some("app"), SETTLE, Duration::ZERO, again + LONG)
            .await
            .expect("released");
        assert_eq!(again.elapsed(), SETTLE, "no longer behind: the settle time");
    }

    /// Guard: `served` clears only the cluster it names.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_is_behind_until_a_retry_of_its_own_is_served() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |_| {});
        h.envoy_behind(Some("app"));
        h.served(Some("other"));
        assert!(h.is_behind(Some("app")));
        h.served(Some("app"));
        assert!(!h.is_behind(Some("app")));
    }

    /// Guard: `BEHIND_FOR` in `current`.
    #[tokio::test(start_paused = true)]
    async fn a_sighting_of_envoy_behind_expires_without_another() {
        let (_l, addrs) = listening(1);
        let h = holds(&addrs, |_| {});
        h.envoy_behind(Some("app"));
        tokio::time::advance(BEHIND_FOR).await;
        assert!(h.is_behind(Some("app")), "within the time");
        h.envoy_behind(Some("app"));
        tokio::time::advance(BEHIND_FOR).await;
        assert!(h.is_behind(Some("app")), "seen again: kept");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!h.is_behind(Some("app")));
    }
}
