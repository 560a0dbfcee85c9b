//! The sandbox's load and view: the same steady load through both
//! listeners (GETs, and a POST in five), and every second three lines:
//!
//! ```text
//! [ 12s] pods: a ready, b draining, c ready
//!   Envoy Gateway's retries:  47 ok    3 failed    0 waiting | 12 failed in all
//!   mulligan:                 50 ok    0 failed    0 waiting |  0 failed in all | answers: 31 retried, 0 held, 0 stood
//! ```
//!
//! "ok" is a 2xx with the body expected; anything else the client got (a
//! 503, a reset, a timeout) is "failed". "waiting" is requests sent and
//! not answered yet: mulligan's held requests show up there. The answers
//! are mulligan's to failed attempts since the start
//! (`mulligan_answers_total`): "retried" at once, "held" until a pod could
//! serve and then retried, "stood" (the failure went to the client: not
//! safe to retry, over budget, held too long, or nothing coming back).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http::Method;
use tokio::time::Instant;

use super::control::Control;
use crate::client::{self, HttpClient, Proto};

/// The first words of a view line for each listener, as the view prints them.
pub const GATEWAY_LABEL: &str = "Envoy Gateway's retries:";
pub const MULLIGAN_LABEL: &str = "mulligan:";

/// The POST body: small, and checked on the way back.
const POST_BYTES: usize = 512;

/// What one listener's clients got.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    waiting: AtomicU64,
}

/// Totals at the last print, for the per-second figures.
#[derive(Clone, Copy, Default)]
struct Seen {
    ok: u64,
    failed: u64,
}

impl Tally {
    fn seen(&self) -> Seen {
        Seen {
            ok: self.ok.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
        }
    }
}

/// mulligan's answers since the start, as the view groups them.
struct Answers {
    retried: f64,
    held: f64,
    stood: f64,
}

impl Answers {
    fn parse(metrics: &str) -> Answers {
        let n = |a: &str| {
            crate::mulligan::parse_metric(
                metrics,
                &format!("mulligan_answers_total{{answer=\"{a}\"}}"),
            )
        };
        Answers {
            retried: n("retry"),
            held: n("retry_after_hold"),
            stood: n("stand") + n("held_too_long") + n("held_limit") + n("nothing_coming"),
        }
    }
}

/// Sends `rate` requests a second through each listener and prints the
/// view every second, forever.
pub async fn run(
    control: Arc<Control>,
    gateway: SocketAddr,
    front: SocketAddr,
    mulligan_admin: SocketAddr,
    rate: f64,
) {
    let g = Arc::new(Tally::default());
    let m = Arc::new(Tally::default());
    tokio::spawn(load(gateway, rate, Arc::clone(&g)));
    tokio::spawn(load(front, rate, Arc::clone(&m)));
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut g_last, mut m_last) = (Seen::default(), Seen::default());
    loop {
        tick.tick().await;
        let metrics = match client::get(mulligan_admin, "/metrics").await {
            Ok(r) => String::from_utf8_lossy(&r.body).into_owned(),
            Err(_) => String::new(),
        };
        let a = Answers::parse(&metrics);
        println!(
            "[{:3}s] pods: {}",
            start.elapsed().as_secs(),
            control.states_line()
        );
        println!("  {}", line(GATEWAY_LABEL, &g, &mut g_last));
        println!(
            "  {} | answers: {} retried, {} held, {} stood",
            line(MULLIGAN_LABEL, &m, &mut m_last),
            a.retried,
            a.held,
            a.stood
        );
    }
}

/// One listener's figures: this second, and failures in all.
fn line(label: &str, t: &Tally, last: &mut Seen) -> String {
    let now = t.seen();
    let text = format!(
        "{label:<25}{:4} ok {:4} failed {:4} waiting | {:3} failed in all",
        now.ok - last.ok,
        now.failed - last.failed,
        t.waiting.load(Ordering::Acquire),
        now.failed
    );
    *last = now;
    text
}

/// An open-loop load: a request every 1/`rate` s, whether or not earlier
/// ones have been answered (a held request does not slow the others).
async fn load(addr: SocketAddr, rate: f64, tally: Arc<Tally>) {
    let http = HttpClient::new(Proto::Http1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let (http, tally) = (http.clone(), Arc::clone(&tally));
        tally.waiting.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let ok = one(&http, addr, n % 5 == 4).await;
            let counter = if ok { &tally.ok } else { &tally.failed };
            counter.fetch_add(1, Ordering::AcqRel);
            tally.waiting.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One request: a GET, or a POST whose body must come back whole.
async fn one(http: &HttpClient, addr: SocketAddr, post: bool) -> bool {
    if post {
        let body = crate::payload(POST_BYTES);
        let r = http
            .send(Method::POST, addr, "/echo", &[], client::full(body.clone()))
            .await;
        matches!(r, Ok(r) if r.status.is_success() && r.body == body)
    } else {
        let r = http.get(addr, "/").await;
        matches!(r, Ok(r) if r.status.is_success())
    }
}

/// One listener's figures in a view frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Answered ok in the last second.
    pub ok: u64,
    /// Failed in the last second.
    pub failed: u64,
    /// Sent and not answered yet.
    pub waiting: u64,
    /// Failed since the start.
    pub failed_in_all: u64,
}

/// One second of the view, as printed (for whoever reads the sandbox's
/// output: its test, a script).
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// Each pod and its state, as printed.
    pub pods: String,
    pub gateway: Figures,
    pub mulligan: Figures,
    /// mulligan's answers since the start.
    pub retried: u64,
    pub held: u64,
    pub stood: u64,
    /// The frame's three lines.
    pub text: String,
}

impl Frame {
    /// Parses a frame from its three lines; `None` if they are not one.
    pub fn parse(lines: &[String]) -> Option<Frame> {
        let [head, gateway, mulligan] = lines else {
            return None;
        };
        let pods = head.split_once("] pods: ")?.1.to_string();
        let gateway = figures(gateway.trim_start().strip_prefix(GATEWAY_LABEL)?)?;
        let rest = mulligan.trim_start().strip_prefix(MULLIGAN_LABEL)?;
        let answers = rest.split_once("| answers: ")?.1;
        let n: Vec<u64> = answers
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [retried, held, stood] = n[..] else {
            return None;
        };
        Some(Frame {
            pods,
            gateway,
            mulligan: figures(rest)?,
            retried,
            held,
            stood,
            text: lines.join("\n"),
        })
    }
}

/// `  47 ok    3 failed    0 waiting |  12 failed in all ...`
fn figures(text: &str) -> Option<Figures> {
    let w: Vec<&str> = text.split_whitespace().collect();
    match w[..] {
        [ok, "ok", failed, "failed", waiting, "waiting", "|", all, "failed", "in", "all", ..] => {
            Some(Figures {
                ok: ok.parse().ok()?,
                failed: failed.parse().ok()?,
                waiting: waiting.parse().ok()?,
                failed_in_all: all.parse().ok()?,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_frame_parses_back() {
        let g = Tally::default();
        let m = Tally::default();
        g.ok.store(47, Ordering::Release);
        g.failed.store(3, Ordering::Release);
        m.ok.store(50, Ordering::Release);
        m.waiting.store(2, Ordering::Release);
        let lines = vec![
            "[ 12s] pods: a ready, b draining".to_string(),
            format!("  {}", line(GATEWAY_LABEL, &g, &mut Seen::default())),
            format!(
                "  {} | answers: 31 retried, 4 held, 1 stood",
                line(MULLIGAN_LABEL, &m, &mut Seen::default())
            ),
        ];
        let f = Frame::parse(&lines).expect("a frame");
        assert_eq!(f.pods, "a ready, b draining");
        assert_eq!(
            (f.gateway.ok, f.gateway.failed, f.gateway.failed_in_all),
            (47, 3, 3)
        );
        assert_eq!((f.mulligan.ok, f.mulligan.waiting), (50, 2));
        assert_eq!((f.retried, f.held, f.stood), (31, 4, 1));
    }
}
