//! The simulated cluster: pods with a Kubernetes-like lifecycle, a
//! controller that rolls, scales and kills them, and the EDS publisher that
//! tells Envoy (after a propagation lag) and mulligan (at once, as a watch on
//! the API server would) which endpoints exist.
//!
//! A pod's life: created (booting: 503 not ready) → ready after its boot
//! time; its endpoint is published a readiness-probe period later (or, with
//! `warmup`, published while the app still answers 503 for that long: "ready
//! before it can serve"). On termination: preStop tells mulligan (lifecycle
//! drain) and the endpoint is published DRAINING (as Envoy Gateway does for
//! serving+terminating endpoints); the app drains (503 + close, or keeps
//! serving with close) for `drain_window`, exits gracefully, and its endpoint
//! is removed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use crate::{
    client,
    pods::{Pod, PodState},
};

/// How terminating pods behave during their drain window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DrainMode {
    /// 503 + `connection: close` (+ the drain header): reject, do not process.
    Reject,
    /// Keep serving, each reply with `connection: close`.
    KeepServing,
}

/// The deployment's shape and timings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Spec {
    pub replicas: usize,
    /// Boot time, uniform in [min, max].
    pub boot_ms: (u64, u64),
    /// The endpoint is published this long after boot (the readiness probe
    /// period).
    pub probe_period_ms: u64,
    /// The app serves this long after boot. Above `probe_period_ms`, the
    /// endpoint is published before the app can serve (readiness that lies).
    pub warmup_ms: u64,
    pub drain: DrainMode,
    pub drain_window_ms: u64,
    /// How long in-flight requests may finish after the drain window.
    pub exit_grace_ms: u64,
    /// EDS propagation lag to Envoy.
    pub eds_lag_ms: u64,
    /// The cluster (EDS resource) name the endpoints are published under.
    pub cluster_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Booting,
    Serving,
    Terminating,
    Gone,
}

struct Member {
    pod: Arc<Pod>,
    generation: u32,
    phase: Phase,
    /// Published to endpoints (ready or, while terminating, draining).
    published: bool,
}

/// The deployment and everything it tells the proxies.
pub struct Cluster {
    pub spec: Spec,
    members: Mutex<Vec<Member>>,
    generation: Mutex<u32>,
    next_id: Mutex<u32>,
    eds: Eds,
    /// Admin addresses of the mulligans to tell about preStop.
    mulligans: Mutex<Vec<SocketAddr>>,
    /// What happened when, for the report.
    pub events: Mutex<Vec<(Instant, String)>>,
}

impl Cluster {
    pub async fn new(spec: Spec, dir: &Path) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            eds: Eds::new(dir, Duration::from_millis(spec.eds_lag_ms)),
            spec,
            members: Mutex::new(Vec::new()),
            generation: Mutex::new(1),
            next_id: Mutex::new(0),
            mulligans: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        });
        // The initial replicas are up and published before the run starts.
        for _ in 0..cluster.spec.replicas {
            let pod = cluster.spawn_pod(PodState::Ready).await;
            let mut m = cluster.members.lock().unwrap();
            m.push(Member {
                pod,
                generation: 1,
                phase: Phase::Serving,
                published: true,
            });
        }
        // The first endpoint set reaches Envoy before it starts: no lag.
        cluster.publish_now();
        let eps: Vec<(SocketAddr, &str)> = cluster
            .members
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.pod.addr, "HEALTHY"))
            .collect();
        let name = &cluster.spec.cluster_name;
        write_atomic(&cluster.eds.envoy_path, &eds_json(name, "0", &eps, false));
        write_atomic(
            &super::proxies::hold_eds(&cluster.eds.envoy_path),
            &eds_json(name, "0", &eps, true),
        );
        cluster
    }

    /// The EDS file Envoy reads (lagged) and the one mulligan reads (current).
    pub fn envoy_eds(&self) -> &Path {
        &self.eds.envoy_path
    }

    pub fn mulligan_eds(&self) -> &Path {
        &self.eds.mulligan_path
    }

    pub fn add_mulligan(&self, admin: SocketAddr) {
        self.mulligans.lock().unwrap().push(admin);
    }

    fn event(&self, text: String) {
        self.events.lock().unwrap().push((Instant::now(), text));
    }

    async fn spawn_pod(&self, state: PodState) -> Arc<Pod> {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n
        };
        Pod::start(&format!("pod-{id}"), state).await
    }

    /// Every pod that ever existed (for per-variant arrival counts).
    pub fn all_pods(&self) -> Vec<Arc<Pod>> {
        self.members
            .lock()
            .unwrap()
            .iter()
            .map(|m| Arc::clone(&m.pod))
            .collect()
    }

    fn counts(&self) -> (usize, usize, usize) {
        let m = self.members.lock().unwrap();
        let gen = *self.generation.lock().unwrap();
        let live = m
            .iter()
            .filter(|m| matches!(m.phase, Phase::Booting | Phase::Serving));
        let total = live.clone().count();
        let ready = live
            .clone()
            .filter(|m| m.phase == Phase::Serving && m.published)
            .count();
        let old = live.filter(|m| m.generation < gen).count();
        (total, ready, old)
    }

    /// Publishes the current endpoint set: mulligan now, Envoy after the lag.
    /// One publication at a time, so files never go back in time.
    fn publish_now(&self) {
        let _one = self.eds.publishing.lock().unwrap();
        let eps: Vec<(SocketAddr, &'static str)> = self
            .members
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.published)
            .map(|m| {
                let health = if m.phase == Phase::Terminating {
                    "DRAINING"
                } else {
                    "HEALTHY"
                };
                (m.pod.addr, health)
            })
            .collect();
        let (name, version) = (&self.spec.cluster_name, eds_version());
        self.eds.publish(
            eds_json(name, &version, &eps, false),
            eds_json(name, &version, &eps, true),
        );
    }

    /// Creates one pod of the current generation and runs its boot.
    async fn create(self: &Arc<Self>) {
        let pod = self.spawn_pod(PodState::Booting).await;
        let generation = *self.generation.lock().unwrap();
        self.members.lock().unwrap().push(Member {
            pod: Arc::clone(&pod),
            generation,
            phase: Phase::Booting,
            published: false,
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let (lo, hi) = me.spec.boot_ms;
            let boot = Duration::from_millis(lo + fastrand::u64(0..=hi.saturating_sub(lo)));
            let publish_at = boot + Duration::from_millis(me.spec.probe_period_ms);
            let serve_at = boot + Duration::from_millis(me.spec.warmup_ms);
            let t0 = Instant::now();
            let (first, second) = if serve_at <= publish_at {
                (serve_at, publish_at)
            } else {
                (publish_at, serve_at)
            };
            tokio::time::sleep_until(t0 + first).await;
            me.boot_step(&pod, serve_at <= publish_at).await;
            tokio::time::sleep_until(t0 + second).await;
            me.boot_step(&pod, serve_at > publish_at).await;
        });
    }

    /// One step of a boot: the app starts serving (`serve`) or the endpoint
    /// is published ready.
    async fn boot_step(&self, pod: &Arc<Pod>, serve: bool) {
        if serve {
            if pod.state() == PodState::Booting {
                pod.set_state(PodState::Ready).await;
            }
            return;
        }
        let mut changed = false;
        for m in self.members.lock().unwrap().iter_mut() {
            if Arc::ptr_eq(&m.pod, pod) && m.phase == Phase::Booting {
                m.phase = Phase::Serving;
                m.published = true;
                changed = true;
            }
        }
        if changed {
            self.publish_now();
        }
    }

    /// Terminates a pod the Kubernetes way (preStop, drain, graceful exit).
    async fn terminate(self: &Arc<Self>, pod: Arc<Pod>) {
        for m in self.members.lock().unwrap().iter_mut() {
            if Arc::ptr_eq(&m.pod, &pod) {
                m.phase = Phase::Terminating;
            }
        }
        self.publish_now();
        // preStop hook: tell every mulligan, as the app's hook would.
        let admins = self.mulligans.lock().unwrap().clone();
        for admin in admins {
            let _ = client::post(admin, &format!("/v1/endpoints/{}/drain", pod.addr)).await;
        }
        pod.set_state(match self.spec.drain {
            DrainMode::Reject => PodState::Draining,
            DrainMode::KeepServing => PodState::DrainingServing,
        })
        .await;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(me.spec.drain_window_ms)).await;
            pod.exit(Duration::from_millis(me.spec.exit_grace_ms));
            for m in me.members.lock().unwrap().iter_mut() {
                if Arc::ptr_eq(&m.pod, &pod) {
                    m.phase = Phase::Gone;
                    m.published = false;
                }
            }
            me.publish_now();
        });
    }

    /// A crash: the pod vanishes with no preStop and no drain.
    async fn kill(&self, pod: &Arc<Pod>) {
        pod.set_state(PodState::Gone).await;
        for m in self.members.lock().unwrap().iter_mut() {
            if Arc::ptr_eq(&m.pod, pod) {
                m.phase = Phase::Gone;
                m.published = false;
            }
        }
        self.publish_now();
    }

    /// A Deployment rolling update with `max_surge` / `max_unavailable`.
    pub async fn rolling_update(self: &Arc<Self>, max_surge: usize, max_unavailable: usize) {
        let gen = {
            let mut g = self.generation.lock().unwrap();
            *g += 1;
            *g
        };
        self.event(format!(
            "rolling update to generation {gen} (surge {max_surge}, unavailable {max_unavailable})"
        ));
        let n = self.spec.replicas;
        loop {
            let (total, ready, old) = self.counts();
            let new_total = total - old;
            if old == 0 && new_total >= n && ready >= n {
                break;
            }
            // Surge: create new pods while under replicas + surge.
            let want_new = n.saturating_sub(new_total);
            let room = (n + max_surge).saturating_sub(total);
            for _ in 0..want_new.min(room) {
                self.create().await;
            }
            // Scale old pods down while availability allows.
            let min_available = n.saturating_sub(max_unavailable);
            let can_kill = ready.saturating_sub(min_available).min(old);
            let victims: Vec<Arc<Pod>> = {
                let m = self.members.lock().unwrap();
                let mut olds: Vec<&Member> = m
                    .iter()
                    .filter(|m| {
                        m.generation < gen && matches!(m.phase, Phase::Booting | Phase::Serving)
                    })
                    .collect();
                // Not-ready old pods go first, then the oldest.
                olds.sort_by_key(|m| m.phase == Phase::Serving);
                olds.iter()
                    .take(can_kill)
                    .map(|m| Arc::clone(&m.pod))
                    .collect()
            };
            for v in victims {
                self.terminate(v).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.event(format!("rolling update to generation {gen} complete"));
    }

    /// Scales to `n` replicas (new pods boot; the newest go first on the way down).
    pub async fn scale_to(self: &Arc<Self>, n: usize) {
        self.event(format!("scale to {n}"));
        let (total, _, _) = self.counts();
        if n > total {
            for _ in total..n {
                self.create().await;
            }
        } else {
            let victims: Vec<Arc<Pod>> = {
                let m = self.members.lock().unwrap();
                m.iter()
                    .rev()
                    .filter(|m| matches!(m.phase, Phase::Booting | Phase::Serving))
                    .take(total - n)
                    .map(|m| Arc::clone(&m.pod))
                    .collect()
            };
            for v in victims {
                self.terminate(v).await;
            }
        }
    }

    /// Waits until `n` pods are published ready (or `limit` passes).
    pub async fn wait_ready(&self, n: usize, limit: Duration) {
        let until = Instant::now() + limit;
        while self.counts().1 < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every pod crashes; `down_for` later, fresh ones are created.
    pub async fn outage(self: &Arc<Self>, down_for: Duration) {
        self.event(format!(
            "outage: every pod killed for {} s",
            down_for.as_secs_f64()
        ));
        let victims: Vec<Arc<Pod>> = {
            let m = self.members.lock().unwrap();
            m.iter()
                .filter(|m| m.phase != Phase::Gone)
                .map(|m| Arc::clone(&m.pod))
                .collect()
        };
        for v in &victims {
            self.kill(v).await;
        }
        tokio::time::sleep(down_for).await;
        self.event("outage over: new pods created".into());
        for _ in 0..self.spec.replicas {
            self.create().await;
        }
    }
}

fn eds_version() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static V: AtomicU64 = AtomicU64::new(0);
    (V.fetch_add(1, Ordering::Relaxed) + 1).to_string()
}

/// A `DiscoveryResponse` with one `ClusterLoadAssignment` for `cluster`;
/// with `hold`, plus the reference bootstrap's priority-1 hold endpoint.
pub fn eds_json(cluster: &str, version: &str, eps: &[(SocketAddr, &str)], hold: bool) -> String {
    let lb: Vec<serde_json::Value> = eps
        .iter()
        .map(|(a, health)| {
            serde_json::json!({
                "endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}},
                "health_status": health,
            })
        })
        .collect();
    let mut cla = serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": lb}],
    });
    if hold {
        cla["endpoints"].as_array_mut().expect("localities").push(serde_json::json!({
            "priority": 1,
            "lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "mulligan_hold"}}}}],
        }));
        cla["policy"] = serde_json::json!({"overprovisioning_factor": 100000});
    }
    serde_json::json!({"version_info": version, "resources": [cla]}).to_string()
}

/// Writes EDS files atomically: mulligan's at once, Envoy's after the lag
/// (in order: a single writer applies each update at its due time).
struct Eds {
    envoy_path: PathBuf,
    mulligan_path: PathBuf,
    /// Envoy's files (without and with the hold endpoint), each due after the lag.
    lagged: mpsc::UnboundedSender<(Instant, [String; 2])>,
    lag: Duration,
    publishing: Mutex<()>,
}

impl Eds {
    fn new(dir: &Path, lag: Duration) -> Eds {
        let envoy_dir = dir.join("envoy-eds");
        let mulligan_dir = dir.join("mulligan-eds");
        std::fs::create_dir_all(&envoy_dir).expect("eds dir");
        std::fs::create_dir_all(&mulligan_dir).expect("eds dir");
        let envoy_path = envoy_dir.join("eds.json");
        let hold_path = super::proxies::hold_eds(&envoy_path);
        std::fs::create_dir_all(hold_path.parent().expect("eds dir")).expect("eds dir");
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, [String; 2])>();
        let path = envoy_path.clone();
        tokio::spawn(async move {
            while let Some((due, [plain, with_hold])) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                let written = try_write_atomic(&path, &plain)
                    .and_then(|()| try_write_atomic(&hold_path, &with_hold));
                if written.is_err() {
                    // The run is over and its directory gone: an update
                    // still in the lag has no Envoy left to read it.
                    return;
                }
            }
        });
        Eds {
            envoy_path,
            mulligan_path: mulligan_dir.join("eds.json"),
            lagged: tx,
            lag,
            publishing: Mutex::new(()),
        }
    }

    fn publish(&self, plain: String, with_hold: String) {
        write_atomic(&self.mulligan_path, &plain);
        let _ = self
            .lagged
            .send((Instant::now() + self.lag, [plain, with_hold]));
    }
}

/// Write to a temporary file beside `path`, then rename: readers never see
/// half a file.
pub fn write_atomic(path: &Path, text: &str) {
    try_write_atomic(path, text).expect("write eds");
}

fn try_write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
