//! The sandbox's control port: what a rollout does to a pod, one HTTP call
//! each, so a newcomer types them with curl from any terminal and a test
//! drives exactly the same calls.
//!
//! - `POST /drain/T`: preStop. The pod answers 503 with `connection:
//!   close` (as a terminating pod does) and mulligan hears the preStop
//!   (its lifecycle API, `POST /v1/endpoints/ADDR/drain`).
//! - `POST /kill/T`: the process exits: new connections are refused;
//!   requests already in flight finish.
//! - `POST /restart/T[?boot=S]`: the pod exits and a replacement starts at
//!   its address: refused for a moment, then 503 (not ready) for S seconds,
//!   then ready.
//! - `POST /scale/N`: pods beyond the first N drain, then exit (a scale
//!   down); the first N that are not running restart (a scale up).
//! - `GET /pods`: each pod's state; `GET /`: this list of commands.
//!
//! T is a pod's name (`a`), several (`a,b`) or `all`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use crate::pods::{Pod, PodState};

/// How long an exiting pod lets requests already in flight finish.
const GRACE: Duration = Duration::from_secs(1);
/// How long a replacement takes to start listening (connections refused
/// meanwhile).
const START: Duration = Duration::from_millis(300);
/// How long a scaled-down pod drains before it exits.
const DRAIN_BEFORE_EXIT: Duration = Duration::from_secs(1);

/// The pods and who to tell about their lifecycle.
pub struct Control {
    pods: Vec<Arc<Pod>>,
    mulligan_admin: SocketAddr,
    boot: Duration,
    /// Bumped by every command to a pod: a restart under way stops at its
    /// next step when a later command took the pod over.
    generation: Vec<AtomicU64>,
    /// Pods whose drain mulligan heard: their replacement must tell it
    /// (mulligan keeps a drained address draining until told otherwise).
    drained: Vec<AtomicBool>,
}

impl Control {
    pub fn new(pods: Vec<Arc<Pod>>, mulligan_admin: SocketAddr, boot: Duration) -> Arc<Control> {
        let generation = pods.iter().map(|_| AtomicU64::new(0)).collect();
        let drained = pods.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Control {
            pods,
            mulligan_admin,
            boot,
            generation,
            drained,
        })
    }

    /// Each pod's name and state, one per line.
    pub fn states(&self) -> String {
        self.pods
            .iter()
            .map(|p| format!("{} {}\n", p.name(), state_name(p.state())))
            .collect()
    }

    /// `a ready, b draining, ...` on one line (the view's).
    pub fn states_line(&self) -> String {
        let each: Vec<String> = self
            .pods
            .iter()
            .map(|p| format!("{} {}", p.name(), state_name(p.state())))
            .collect();
        each.join(", ")
    }

    /// The pods `target` names: `all`, `a` or `a,b`.
    fn select(&self, target: &str) -> Result<Vec<usize>, String> {
        if target == "all" {
            return Ok((0..self.pods.len()).collect());
        }
        target
            .split(',')
            .map(|name| {
                self.pods
                    .iter()
                    .position(|p| p.name() == name)
                    .ok_or_else(|| format!("no pod {name:?}; pods: {}", self.names()))
            })
            .collect()
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.pods.iter().map(|p| p.name()).collect();
        format!("{} (or all)", names.join(", "))
    }

    /// Takes pod `i` over for a new command; returns the command's turn.
    fn take(&self, i: usize) -> u64 {
        self.generation[i].fetch_add(1, Ordering::AcqRel) + 1
    }

    fn still(&self, i: usize, turn: u64) -> bool {
        self.generation[i].load(Ordering::Acquire) == turn
    }

    /// preStop: the pod rejects every request with 503 + `connection:
    /// close`, and mulligan is told, as the pod's preStop hook would.
    async fn drain(&self, i: usize) -> String {
        self.take(i);
        let pod = &self.pods[i];
        if pod.state() == PodState::Gone {
            return format!("{}: gone already (restart it first)\n", pod.name());
        }
        pod.set_state(PodState::Draining).await;
        self.drained[i].store(true, Ordering::Release);
        let told = self.tell_mulligan(pod.addr, "drain").await;
        format!(
            "{}: draining: answers 503 + connection: close; {told}\n",
            pod.name()
        )
    }

    /// The process exits: the port closes, requests in flight finish.
    fn kill(&self, i: usize) -> String {
        self.take(i);
        let pod = &self.pods[i];
        if pod.state() == PodState::Gone {
            return format!("{}: gone already\n", pod.name());
        }
        pod.exit(GRACE);
        format!("{}: gone: connections refused\n", pod.name())
    }

    /// The pod exits and a replacement boots at its address; returns at
    /// once, the boot goes on in the background.
    fn restart(self: &Arc<Self>, i: usize, boot: Duration) -> String {
        let turn = self.take(i);
        let pod = Arc::clone(&self.pods[i]);
        if pod.state() != PodState::Gone {
            pod.exit(GRACE);
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.boot(i, turn, boot).await });
        format!(
            "{}: restarting: refused for {} ms, then 503 (booting) for {:.1} s, then ready\n",
            pod.name(),
            START.as_millis(),
            boot.as_secs_f64()
        )
    }

    /// A replacement's start: it listens after [`START`], answers 503
    /// until `boot` has passed, then serves. mulligan sees it come up with
    /// its probe (refused, then not ready, then ready). A predecessor that
    /// drained left its address draining in mulligan: the replacement says
    /// it is there (lifecycle `ready`) while its port is still closed, so
    /// the probe has marked it down before it first accepts a connection.
    async fn boot(&self, i: usize, turn: u64, boot: Duration) {
        let pod = &self.pods[i];
        if self.drained[i].swap(false, Ordering::AcqRel) {
            self.tell_mulligan(pod.addr, "ready").await;
        }
        tokio::time::sleep(START).await;
        if !self.still(i, turn) {
            return;
        }
        pod.set_state(PodState::Booting).await;
        tokio::time::sleep(boot).await;
        if self.still(i, turn) {
            pod.set_state(PodState::Ready).await;
        }
    }

    /// A scale to `n`: pods past the first `n` drain, then exit; the first
    /// `n` that are draining or gone restart.
    async fn scale(self: &Arc<Self>, n: usize) -> String {
        let mut out = String::new();
        for i in 0..self.pods.len() {
            let state = self.pods[i].state();
            if i >= n && state != PodState::Gone {
                out.push_str(&self.drain(i).await);
                let turn = self.generation[i].load(Ordering::Acquire);
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(DRAIN_BEFORE_EXIT).await;
                    if me.still(i, turn) {
                        me.pods[i].exit(GRACE);
                    }
                });
            } else if i < n && matches!(state, PodState::Gone | PodState::Draining) {
                out.push_str(&self.restart(i, self.boot));
            }
        }
        if out.is_empty() {
            out = format!("{} pods running already\n", n.min(self.pods.len()));
        }
        out
    }

    /// Calls mulligan's lifecycle API for `addr`; says what came of it.
    async fn tell_mulligan(&self, addr: SocketAddr, action: &str) -> String {
        let path = format!("/v1/endpoints/{addr}/{action}");
        match crate::client::post(self.mulligan_admin, &path).await {
            Ok(r) if r.status.is_success() => format!("mulligan heard POST {path}"),
            Ok(r) => format!("mulligan answered {} to POST {path}", r.status),
            Err(e) => format!("mulligan unreachable for POST {path}: {e}"),
        }
    }

    /// One command: `(method, path)` to the text answered, or an error.
    pub async fn command(self: &Arc<Self>, method: &Method, path: &str) -> Result<String, String> {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, [""]) => Ok(self.help()),
            (&Method::GET, ["pods"]) => Ok(self.states()),
            (&Method::POST, ["scale", n]) => {
                let n = n.parse().map_err(|_| format!("not a number: {n:?}"))?;
                Ok(self.scale(n).await)
            }
            (&Method::POST, [verb, target]) => self.on_pods(verb, target, query).await,
            _ => Err(format!("unknown command {method} {path}\n{}", self.help())),
        }
    }

    async fn on_pods(
        self: &Arc<Self>,
        verb: &str,
        target: &str,
        query: &str,
    ) -> Result<String, String> {
        let boot = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("boot="))
            .map(|s| {
                s.parse::<f64>()
                    .map_err(|_| format!("boot={s}: not seconds"))
            })
            .transpose()?
            .map_or(self.boot, |s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
        let mut out = String::new();
        for i in self.select(target)? {
            out.push_str(&match verb {
                "drain" => self.drain(i).await,
                "kill" => self.kill(i),
                "restart" => self.restart(i, boot),
                _ => return Err(format!("unknown command {verb:?}\n{}", self.help())),
            });
        }
        Ok(out)
    }

    /// The commands, for `GET /`.
    pub fn help(&self) -> String {
        format!(
            "POST /drain/T     preStop: T answers 503 + connection: close; mulligan is told\n\
             POST /kill/T      T exits: connections refused\n\
             POST /restart/T   T comes back: refused, then 503 for {:.0} s (?boot=S), then ready\n\
             POST /scale/N     pods past the first N drain and exit; the first N run\n\
             GET  /pods        each pod's state\n\
             T: {}\n",
            self.boot.as_secs_f64(),
            self.names()
        )
    }
}

fn state_name(s: PodState) -> &'static str {
    match s {
        PodState::Booting => "booting",
        PodState::Ready => "ready",
        PodState::Draining | PodState::DrainingServing => "draining",
        PodState::Gone => "gone",
        PodState::Failing => "failing",
    }
}

/// Serves `control` on 127.0.0.1:`port` (0: the kernel picks); returns the
/// bound address.
pub async fn serve(control: Arc<Control>, port: u16) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("control port 127.0.0.1:{port}: {e}"));
    let addr = listener.local_addr().expect("control address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let control = Arc::clone(&control);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(Arc::clone(&control), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    control: Arc<Control>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (status, text) = match control.command(req.method(), &path).await {
        Ok(text) => (StatusCode::OK, text),
        Err(text) => (StatusCode::BAD_REQUEST, text + "\n"),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(text)))
        .expect("response"))
}
