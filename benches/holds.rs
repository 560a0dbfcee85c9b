//! Holding at scale: N requests held at once (GETs, and POSTs with a 1 KiB
//! body) through Envoy on the reference bootstrap, at zero ready pods (the
//! only pod booting: mulligan's probe says not ready, so a hold is
//! plausible). Three runs per protocol, each on a fresh stack:
//! - **ready**: once mulligan holds all N, mulligan's and Envoy's memory and
//!   Envoy's file descriptors are read; then the pod becomes ready, and the
//!   time until every request is served is measured; none may run twice and
//!   every POST body must come back whole;
//! - **nothing coming**: the same hold, then the pod drains (preStop: the
//!   lifecycle API says so): the time until every request has its 503;
//! - **past the limit**: N requests with `hold.max_held` = N/2: what the
//!   ones past the limit get, and how fast; then the pod drains.
//!
//! HTTP/1.1 uses one client connection per request; HTTP/2 many streams over
//! a few connections (16: at most 1,024 streams were seen open on one
//! connection, so 4 held no more than 4,096). Prints figures; asserts nothing about speed.
//!
//! The bootstrap is the reference one as it ships, circuit breakers
//! included. With `--baseline BIN`, every run is made twice, first with the
//! mulligan binary BIN (a build of another tree: its row says "baseline"),
//! then with the one under test, so the two stand side by side.
//!
//! `cargo bench --bench holds [-- --requests N --proto h1|h2|both
//!  --runs ready,drain,limit --baseline BIN --mulligan-h2 envoy-defaults
//!  --release-per-endpoint R --h2-connections C]`
//!
//! Held HTTP/1.1 requests cost file descriptors in three places: the client
//! (one per request, in this process), Envoy (the downstream connection,
//! plus an upstream one to the pod while the attempt's answer is held) and
//! the pod (in this process). The run prints them and the limit
//! (`ulimit -n`) they must fit in.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use rig::{
    bench::arg,
    client, payload,
    pods::{Pod, PodState},
    render, Stack,
};

/// POST body size.
const BODY: usize = 1024;

type Http = Client<HttpConnector, Full<Bytes>>;

fn http(h2: bool) -> Http {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(300));
    if h2 {
        b.http2_only(true);
    }
    b.build(HttpConnector::new())
}

/// How a held request ended.
struct Outcome {
    id: usize,
    status: Option<StatusCode>,
    /// A POST's echo equals what was sent (always true for a GET).
    body_whole: bool,
    retry_after: bool,
    error: Option<String>,
    /// When the answer was complete.
    done: Instant,
    /// From send to complete answer.
    took: Duration,
}

fn is_post(i: usize) -> bool {
    i % 2 == 1
}

/// Request `i`: a GET for even `i`, a POST of [`BODY`] bytes to `/echo`
/// for odd `i`, each with its own `x-harness-id`.
async fn one(c: Http, front: SocketAddr, i: usize, finished: Arc<AtomicUsize>) -> Outcome {
    let (method, path, body) = if is_post(i) {
        (Method::POST, "/echo", payload(BODY))
    } else {
        (Method::GET, "/", Vec::new())
    };
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{front}{path}"))
        .header("x-harness-id", format!("h-{i}"))
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let start = Instant::now();
    let result = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, b) = resp.into_parts();
        let b = b.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((parts, b))
    }
    .await;
    finished.fetch_add(1, Ordering::AcqRel);
    let done = Instant::now();
    let mut o = Outcome {
        id: i,
        status: None,
        body_whole: false,
        retry_after: false,
        error: None,
        done,
        took: done - start,
    };
    match result {
        Ok((parts, b)) => {
            o.status = Some(parts.status);
            o.retry_after = parts.headers.contains_key("retry-after");
            o.body_whole = parts.status != StatusCode::OK || !is_post(i) || b.as_ref() == body;
        }
        Err(e) => {
            o.body_whole = true;
            o.error = Some(e);
        }
    }
    o
}

/// Resident memory of a process, MiB (VmRSS).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Open file descriptors of a process (`self` for this one).
fn fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// How a scenario ends the hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The pod becomes ready.
    Ready,
    /// The pod drains: nothing is coming.
    Drain,
}

struct Scenario {
    h2: bool,
    n: usize,
    max_held: usize,
    end: End,
    release: u64,
    h2_conns: usize,
    /// Runs the `--baseline` binary instead of the one under test.
    baseline: bool,
    /// Envoy's HTTP/2 to mulligan with Envoy's defaults instead of the
    /// bootstrap's (`--mulligan-h2 envoy-defaults`): to see what the
    /// bootstrap's settings prevent.
    envoy_h2_defaults: bool,
}

/// What one scenario saw.
struct Report {
    label: String,
    n: usize,
    /// mulligan_held at its highest, and how long until it got there.
    held: f64,
    to_hold: Duration,
    gave_up: Option<String>,
    mulligan_rss: f64,
    mulligan_rss_idle: f64,
    envoy_rss: f64,
    envoy_rss_idle: f64,
    envoy_fds: usize,
    envoy_fds_idle: usize,
    own_fds: usize,
    downstream_cx: u64,
    upstream_cx: u64,
    /// Answered before the hold ended (past the limit, or failed early).
    early: Vec<Outcome>,
    /// Answered after the pod became ready or drained.
    late: Vec<Outcome>,
    /// From the end of the hold to the last answer.
    drain_all: Duration,
    ran_twice: usize,
    ran: usize,
    answers: Vec<String>,
    /// Envoy's HTTP/2 codec stats that are not zero (a flood, a reset).
    flood: Vec<String>,
    /// Envoy's connections to mulligan while held, and how many times it
    /// closed one as a flood of control frames.
    mulligan_cx: u64,
    mulligan_control_flood: u64,
}

/// Envoy stats containing `part` whose value is not zero.
async fn nonzero(stack: &Stack, part: &str) -> Vec<String> {
    stack
        .envoy
        .stats(part)
        .await
        .lines()
        .filter(|l| !l.ends_with(": 0") && !l.ends_with("No recorded values"))
        .map(str::to_string)
        .collect()
}

async fn start(s: &Scenario, hold_secs: u64) -> Stack {
    let pod = Pod::start("app", PodState::Booting).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mulligan.toml");
    let toml = format!(
        "[hold]\nmax_hold = \"{hold_secs}s\"\nenvoy_max_message_timeout = \"{hold_secs}s\"\n\
         max_held = {}\nrelease_per_endpoint = {}\n\
         [limits]\nmax_streams = {}\n\
         [probe]\npath = \"/ready\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n",
        s.max_held,
        s.release,
        s.n * 2 + 100,
    );
    std::fs::write(&path, toml).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_string();
    let route_timeout = format!("{}s", hold_secs + 30);
    let stack = Stack::around(
        vec![pod],
        &["--config", &path],
        &[("MAX_HOLD", format!("{hold_secs}s"))],
        |v| {
            render::route(v)["route"]["timeout"] = route_timeout.as_str().into();
            if s.envoy_h2_defaults {
                let options = &mut render::cluster(v, "mulligan")
                    ["typed_extension_protocol_options"]
                    ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
                options["explicit_http_config"]["http2_protocol_options"] = render::yaml("{}");
            }
        },
    )
    .await;
    let addr = stack.pods[0].addr;
    let until = Instant::now() + rig::LOADED;
    loop {
        let st = stack.mulligan.endpoint_state(addr).await;
        if st == "not_ready" {
            break;
        }
        assert!(
            Instant::now() < until,
            "{addr} is {st:?} in mulligan, want not_ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack
}

/// Polls `mulligan_held` until it reads `want` (and `answered` requests
/// have their answer), or until it has not moved for `stall`: then says
/// what it saw.
async fn wait_for(
    stack: &mut Stack,
    want: usize,
    finished: &AtomicUsize,
    answered: usize,
    stall: Duration,
) -> (f64, Option<String>) {
    let mut best = 0.0f64;
    let mut moved = Instant::now();
    let mut last = (0.0, 0);
    loop {
        let held = stack.mulligan.metric("mulligan_held").await;
        let done = finished.load(Ordering::Acquire);
        if stack.envoy.exited() {
            let log = stack.envoy.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "Envoy exited with mulligan_held at {held} (highest {best}), {done} answered; \
                 the end of its log, last line first:\n{}",
                tail.join("\n")
            );
        }
        best = best.max(held);
        if held == want as f64 && done >= answered {
            return (held, None);
        }
        if (held, done) != last {
            last = (held, done);
            moved = Instant::now();
        }
        if moved.elapsed() > stall {
            let answers = answers(stack).await;
            return (
                best,
                Some(format!(
                    "mulligan_held stuck at {held} (highest {best}), want {want}; {done} answered \
                     (want {answered}) for {stall:?}; mulligan's answers: {answers:?}; \
                     Envoy's ext_proc stats that are not zero: {:?}",
                    stack
                        .envoy
                        .stats("ext_proc")
                        .await
                        .lines()
                        .filter(|l| !l.ends_with(": 0"))
                        .collect::<Vec<_>>(),
                )),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `mulligan_answers_total` samples that are not zero.
async fn answers(stack: &Stack) -> Vec<String> {
    stack
        .mulligan
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("mulligan_answers_total") && !l.ends_with(" 0"))
        .map(|l| l.trim_start_matches("mulligan_answers_total").to_string())
        .collect()
}

async fn run(s: Scenario) -> Report {
    // Long enough for the ramp and for paced releases of every request.
    let hold_secs = 60 + s.n as u64 / s.release.max(1);
    let mut stack = start(&s, hold_secs).await;
    let front = stack.front;
    let mulligan_rss_idle = rss_mib(stack.mulligan.pid());
    let envoy_rss_idle = rss_mib(stack.envoy.pid());
    let envoy_fds_idle = fds(&stack.envoy.pid().to_string());
    let clients: Vec<Http> = if s.h2 {
        (0..s.h2_conns).map(|_| http(true)).collect()
    } else {
        vec![http(false)]
    };
    let finished = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..s.n)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            tokio::spawn(one(c, front, i, Arc::clone(&finished)))
        })
        .collect();
    let expect_held = s.n.min(s.max_held);
    let (held, gave_up) = wait_for(
        &mut stack,
        expect_held,
        &finished,
        s.n - expect_held,
        Duration::from_secs(30),
    )
    .await;
    let to_hold = t0.elapsed();
    let mulligan_rss = rss_mib(stack.mulligan.pid());
    let envoy_rss = rss_mib(stack.envoy.pid());
    let envoy_fds = fds(&stack.envoy.pid().to_string());
    let own_fds = fds("self");
    let downstream_cx = stack.envoy.stat("http.mulligan.downstream_cx_active").await;
    let upstream_cx = stack.envoy.stat("cluster.app.upstream_cx_active").await;
    let mulligan_cx = stack
        .envoy
        .stat("cluster.mulligan.upstream_cx_active")
        .await;
    let early_count = finished.load(Ordering::Acquire);

    let pod = Arc::clone(&stack.pods[0]);
    let end = Instant::now();
    match s.end {
        End::Ready => pod.set_state(PodState::Ready).await,
        End::Drain => {
            pod.set_state(PodState::Draining).await;
            let r = client::post(
                stack.mulligan.admin,
                &format!("/v1/endpoints/{}/drain", pod.addr),
            )
            .await
            .expect("lifecycle drain");
            assert!(r.status.is_success(), "drain: {:?}", r.body);
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("request task"));
    }
    let (early, late): (Vec<_>, Vec<_>) = all.into_iter().partition(|o| o.done < end);
    let drain_all = late
        .iter()
        .map(|o| o.done.saturating_duration_since(end))
        .max()
        .unwrap_or_default();
    debug_assert!(early.len() <= early_count.max(early.len()));
    let ran = pod.executions();
    let label = format!(
        "{}{}{} {} {}",
        if s.h2 { "h2" } else { "h1" },
        if s.baseline { " baseline" } else { "" },
        if s.envoy_h2_defaults {
            " envoy-h2-defaults"
        } else {
            ""
        },
        match s.end {
            End::Ready => "ready",
            End::Drain => "nothing coming",
        },
        if s.max_held < s.n {
            format!("max_held {}", s.max_held)
        } else {
            String::new()
        }
    );
    Report {
        label: label.trim().to_string(),
        n: s.n,
        held,
        to_hold,
        gave_up,
        mulligan_rss,
        mulligan_rss_idle,
        envoy_rss,
        envoy_rss_idle,
        envoy_fds,
        envoy_fds_idle,
        own_fds,
        downstream_cx,
        upstream_cx,
        early,
        late,
        drain_all,
        ran_twice: ran.values().filter(|c| **c > 1).count(),
        ran: ran.len(),
        answers: answers(&stack).await,
        flood: nonzero(&stack, "http2.")
            .await
            .into_iter()
            .filter(|l| l.contains("flood") || l.contains("reset"))
            .collect(),
        mulligan_cx,
        mulligan_control_flood: stack
            .envoy
            .stat("cluster.mulligan.http2.outbound_control_flood")
            .await,
    }
}

fn quantile(d: &mut [Duration], q: f64) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.sort();
    let i = ((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1;
    d[i]
}

/// "200: 5000, 503: 10" for a set of outcomes.
fn statuses(o: &[Outcome]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for x in o {
        let k = match (&x.status, &x.error) {
            (Some(s), _) => s.as_u16().to_string(),
            (None, Some(_)) => "error".to_string(),
            (None, None) => "?".to_string(),
        };
        *counts.entry(k).or_insert(0usize) += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print(r: &Report) {
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let mut early: Vec<Duration> = r.early.iter().map(|o| o.took).collect();
    println!(
        "| {:<32} | {:>6} | {:>6} | {:>7} | {:>6.1} ({:>4.1}) | {:>6.1} ({:>4.1}) | {:>5} ({:>3}) | {:>5} / {:>5} | {:>7} | {:<28} | {:<20} |",
        r.label,
        r.n,
        r.held,
        ms(r.to_hold),
        r.mulligan_rss,
        r.mulligan_rss_idle,
        r.envoy_rss,
        r.envoy_rss_idle,
        r.envoy_fds,
        r.envoy_fds_idle,
        r.downstream_cx,
        r.upstream_cx,
        ms(r.drain_all),
        statuses(&r.late),
        statuses(&r.early),
    );
    let bad_bodies = r.late.iter().filter(|o| !o.body_whole).count();
    let no_retry_after = r
        .late
        .iter()
        .chain(&r.early)
        .filter(|o| o.status == Some(StatusCode::SERVICE_UNAVAILABLE) && !o.retry_after)
        .count();
    let errors: Vec<String> = r
        .late
        .iter()
        .chain(&r.early)
        .filter_map(|o| o.error.as_ref().map(|e| format!("h-{}: {e}", o.id)))
        .take(3)
        .collect();
    println!(
        "    {}: ran {} (twice: {}), POST bodies not whole: {bad_bodies}, 503s without Retry-After: {no_retry_after}; \
         answered before the end: {} (p50 {} ms, max {} ms); mulligan's answers: {}; this process's fds: {}; \
         Envoy's connections to mulligan: {}, closed as a control-frame flood: {}{}{}{}",
        r.label,
        r.ran,
        r.ran_twice,
        early.len(),
        ms(quantile(&mut early, 0.5)),
        ms(quantile(&mut early, 1.0)),
        r.answers.join(" "),
        r.own_fds,
        r.mulligan_cx,
        r.mulligan_control_flood,
        r.gave_up
            .as_ref()
            .map_or(String::new(), |g| format!("; GAVE UP WAITING: {g}")),
        if r.flood.is_empty() {
            String::new()
        } else {
            format!("; Envoy's HTTP/2 stats that are not zero: {:?}", r.flood)
        },
        if errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {errors:?}")
        },
    );
}

fn header() {
    println!(
        "| run                              |      N |   held | hold ms | mulligan MiB (idle) | Envoy MiB (idle) | Envoy fds (idle) | down / up cx  | last ms | after the end (status: n)    | before the end       |"
    );
    println!(
        "|----------------------------------|--------|--------|---------|---------------------|------------------|------------------|---------------|---------|------------------------------|----------------------|"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = arg("--requests", 10_000) as usize;
    let release = arg("--release-per-endpoint", 200);
    let h2_conns = arg("--h2-connections", 16) as usize;
    let protos: Vec<bool> = match flag("--proto").as_str() {
        "h1" => vec![false],
        "h2" => vec![true],
        _ => vec![false, true],
    };
    println!(
        "\n## {n} requests held at zero ready pods (half GET, half POST of {BODY} B), \
         release_per_endpoint {release}, ulimit -n {}\n",
        fd_limit()
    );
    println!(
        "hold ms: from the first send until mulligan_held read N (or the limit); \
         last ms: from the pod's change (ready, or drained) until the last answer; \
         down / up cx: Envoy's downstream connections on the mulligan listener and \
         upstream ones to the app cluster while held.\n"
    );
    header();
    let baseline = flag("--baseline");
    let binaries: Vec<bool> = if baseline.is_empty() {
        vec![false]
    } else {
        vec![true, false]
    };
    let under_test = rig::mulligan::mulligan_bin();
    let runs = flag("--runs");
    let envoy_h2_defaults = flag("--mulligan-h2") == "envoy-defaults";
    let wanted = |name: &str| runs.is_empty() || runs.split(',').any(|r| r == name);
    let fits = h1_fits(fd_limit());
    for h2 in protos {
        let n = if h2 || n <= fits {
            n
        } else {
            println!(
                "| HTTP/1.1: {n} held would need 2 x {n} file descriptors in Envoy (client + pod \
                 connection per request) and in this process; ulimit -n {}: {fits} instead |",
                fd_limit()
            );
            fits
        };
        let all = [
            ("ready", End::Ready, n),
            ("drain", End::Drain, n),
            ("limit", End::Drain, n / 2),
        ];
        for (_, end, max_held) in all.into_iter().filter(|(name, ..)| wanted(name)) {
            for &on_baseline in &binaries {
                // rig starts the binary `MULLIGAN_BIN` names; nothing else
                // in this process reads the environment meanwhile.
                let bin = if on_baseline {
                    std::path::PathBuf::from(&baseline)
                } else {
                    under_test.clone()
                };
                std::env::set_var("MULLIGAN_BIN", bin);
                let r = run(Scenario {
                    h2,
                    n,
                    max_held,
                    end,
                    release,
                    h2_conns,
                    baseline: on_baseline,
                    envoy_h2_defaults,
                })
                .await;
                print(&r);
            }
        }
    }
}

/// `--name VALUE` from the command line, else "".
fn flag(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default()
}

/// This process's soft limit on open files (Envoy and mulligan inherit it).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// File descriptors Envoy and this process each keep besides the held
/// requests (listeners, admin, mulligan's stream, the runtime): measured
/// idle at about 30, with room to spare.
const FD_SPARE: usize = 300;

/// The most HTTP/1.1 requests that can be held at once under `limit` open
/// files: Envoy keeps two descriptors per held request (the client's
/// connection, and the upstream one to the pod whose 503 is held), and so
/// does this process (the client's end, and the pod's).
fn h1_fits(limit: usize) -> usize {
    limit.saturating_sub(FD_SPARE) / 2
}
