//! What a config must satisfy beyond parsing: every value that would panic
//! at run time (a zero interval inside tokio), fail later (two ports on one
//! address) or silently do nothing (a probe path Envoy-style without `/`, a
//! drain header the app cannot set) is refused here, with the file, line and
//! column of the key. `check-config` and `serve` run the same checks.

use std::time::Duration;

use super::{Config, ConfigError};

/// One broken rule: the key's path (`["probe", "interval"]`) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<String>,
    pub message: String,
}

/// Largest protobuf message: a reply bigger than this cannot be encoded.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// Headers a drain signal must not be: hop-by-hop headers (a proxy removes
/// or rewrites them before mulligan sees the response) and standard ones
/// that mean something else to every HTTP hop.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "content-range",
    "date",
    "server",
    "location",
    "retry-after",
    "cache-control",
    "expires",
    "etag",
    "last-modified",
    "set-cookie",
    "vary",
    "via",
    "age",
    "allow",
    "www-authenticate",
    "strict-transport-security",
    "alt-svc",
    "link",
];

impl Config {
    /// Every rule this config breaks (empty: valid).
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.check_durations(&mut p);
        self.check_ceilings(&mut p);
        self.check_headers(&mut p);
        self.check_sizes(&mut p);
        self.check_wiring(&mut p);
        p.0
    }

    /// The first problem, located in `text` (the file `file` as read); with
    /// no text (flags only), at line 0.
    pub(crate) fn validate(&self, file: &str, text: Option<&str>) -> Result<(), ConfigError> {
        let Some(problem) = self.problems().into_iter().next() else {
            return Ok(());
        };
        let (line, column) = text.map_or((0, 0), |t| locate(t, &problem.path));
        Err(ConfigError {
            file: file.to_string(),
            line,
            column,
            message: format!("{}: {}", problem.path.join("."), problem.message),
        })
    }

    fn check_durations(&self, p: &mut Problems) {
        let nonzero: [(&str, Duration, &str); 7] = [
            ("probe.interval", self.probe.interval, "would panic"),
            (
                "hold.interval",
                self.hold.interval,
                "held requests would check their cluster without pause",
            ),
            (
                "probe.timeout",
                self.probe.timeout,
                "every probe would fail",
            ),
            (
                "endpoints.eds_file_poll",
                self.endpoints.eds_file_poll,
                "would panic",
            ),
            (
                "hold.max_hold",
                self.hold.max_hold,
                "every hold would end before it began",
            ),
            (
                "hold.envoy_max_message_timeout",
                self.hold.envoy_max_message_timeout,
                "Envoy would never wait for a held answer",
            ),
            (
                "health.penalty_base",
                self.health.penalty_base,
                "a failing endpoint would never be avoided",
            ),
        ];
        for (key, d, why) in nonzero {
            if d.is_zero() {
                p.add(key, format!("must be above 0s: {why}"));
            }
        }
        if !self.limits.keepalive_interval.is_zero() && self.limits.keepalive_timeout.is_zero() {
            p.add(
                "limits.keepalive_timeout",
                "must be above 0s while keepalive_interval is set (0s would not turn it off)",
            );
        }
        for (key, n) in [
            ("probe.healthy_threshold", self.probe.healthy_threshold),
            ("probe.unhealthy_threshold", self.probe.unhealthy_threshold),
        ] {
            if n == 0 {
                p.add(key, "must be at least 1");
            }
        }
    }

    /// Durations that are added to an instant or turned into milliseconds
    /// inside mulligan or hyper: past a day they mean nothing sensible, and
    /// far past it they overflow (a penalty of 500 billion years does not
    /// fit the registry's u64 millisecond clock).
    fn check_ceilings(&self, p: &mut Problems) {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (key, d) in [
            ("health.penalty_base", self.health.penalty_base),
            ("health.penalty_max", self.health.penalty_max),
            ("limits.keepalive_interval", self.limits.keepalive_interval),
            ("limits.keepalive_timeout", self.limits.keepalive_timeout),
        ] {
            if d > DAY {
                p.add(key, "must be at most 1 day");
            }
        }
    }

    fn check_headers(&self, p: &mut Problems) {
        if !self.probe.path.is_empty() && !self.probe.path.starts_with('/') {
            p.add(
                "probe.path",
                "must start with '/' (or be empty to turn probing off)",
            );
        }
        let drain = &self.retry.drain_header;
        if !drain.is_empty() {
            if let Some(why) = header_name_problem(drain) {
                p.add("retry.drain_header", why);
            } else if RESERVED_HEADERS.contains(&drain.as_str()) || drain.starts_with("x-envoy-") {
                p.add(
                    "retry.drain_header",
                    format!("{drain:?} is a standard, hop-by-hop or Envoy header: use one of your own, e.g. x-mulligan-drain"),
                );
            }
        }
    }

    fn check_sizes(&self, p: &mut Problems) {
        if self.limits.max_message_bytes > PROTOBUF_LIMIT - 4096 {
            p.add(
                "limits.max_message_bytes",
                "is above the 2 GiB protobuf message limit",
            );
        }
        if !(self.budget.ratio.is_finite() && self.budget.ratio >= 0.0) {
            p.add("budget.ratio", "must be a number of 0 or more");
        }
    }

    /// Listeners, discovery sources and TLS: what the server wires up.
    fn check_wiring(&self, p: &mut Problems) {
        self.check_message_timeout(p);
        self.check_listeners(p);
        self.check_static(p);
        self.check_tls(p);
        self.check_kubernetes(p);
    }

    /// `max_hold` is the hold budget of a stream without one of its own (a
    /// wiring that sends no `x-mulligan-max-hold`): mulligan asks Envoy to
    /// wait that long and holds [`Hold::ANSWER_MARGIN`](super::Hold::ANSWER_MARGIN)
    /// less. Past Envoy's `max_message_timeout`, Envoy would refuse the
    /// extension and let the 503 through after `message_timeout`; within
    /// the margin, nothing would be held at all.
    fn check_message_timeout(&self, p: &mut Problems) {
        let asked = self.hold.max_hold;
        let max = self.hold.envoy_max_message_timeout;
        let margin = super::Hold::ANSWER_MARGIN;
        if asked > max {
            p.add(
                "hold.max_hold",
                format!(
                    "{asked:?} is over Envoy's max_message_timeout ({max:?}, \
                     hold.envoy_max_message_timeout): Envoy would let held 503s through; \
                     lower max_hold or raise both"
                ),
            );
        } else if !asked.is_zero() && asked <= margin {
            p.add(
                "hold.max_hold",
                format!("{asked:?} leaves nothing to hold: mulligan keeps {margin:?} of it to answer in"),
            );
        }
    }

    fn check_listeners(&self, p: &mut Problems) {
        let l = &self.listen;
        if l.grpc == l.admin && l.grpc.port() != 0 {
            p.add("listen.admin", "is the same address as listen.grpc");
        }
        if let Some(c) = l.control.filter(|c| c.port() != 0) {
            if c == l.grpc || c == l.admin {
                p.add(
                    "listen.control",
                    "must be an address of its own, not listen.grpc's or listen.admin's",
                );
            }
        }
    }

    fn check_static(&self, p: &mut Problems) {
        let e = &self.endpoints;
        if e.default.is_empty() {
            return;
        }
        if e.static_cluster.is_empty() {
            p.add(
                "endpoints.static_cluster",
                "must name the cluster of endpoints.static",
            );
        } else if e.clusters.contains_key(&e.static_cluster) {
            p.add(
                "endpoints.static",
                format!(
                    "cluster {:?} also has a list in endpoints.clusters: one would be ignored",
                    e.static_cluster
                ),
            );
        }
    }

    fn check_tls(&self, p: &mut Problems) {
        let t = &self.grpc_tls;
        if !t.enabled() {
            return;
        }
        for (key, file) in [
            ("grpc_tls.cert_file", &t.cert_file),
            ("grpc_tls.key_file", &t.key_file),
            ("grpc_tls.client_ca_file", &t.client_ca_file),
        ] {
            if file.is_empty() {
                p.add(
                    key,
                    "must be set: mTLS needs a certificate, its key and the client CA",
                );
            }
        }
    }

    fn check_kubernetes(&self, p: &mut Problems) {
        let k = &self.kubernetes;
        if k.enabled && k.services.is_empty() {
            p.add(
                "kubernetes.services",
                "is empty while kubernetes.enabled = true: nothing would be watched",
            );
        }
        for (i, s) in k.services.iter().enumerate() {
            if s.name.is_empty() {
                p.add_path(
                    vec![
                        "kubernetes".into(),
                        "services".into(),
                        i.to_string(),
                        "name".into(),
                    ],
                    "must not be empty",
                );
            }
        }
        if k.enabled && !cfg!(feature = "kubernetes") {
            p.add(
                "kubernetes.enabled",
                "this mulligan was built without Kubernetes discovery (cargo feature \
                 `kubernetes`): use a build with it, or endpoints.static / endpoints.eds_file",
            );
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.add_path(key.split('.').map(str::to_string).collect(), message);
    }

    fn add_path(&mut self, path: Vec<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }
}

/// Why `name` cannot be an HTTP/2 header name (lowercase token), if it cannot.
fn header_name_problem(name: &str) -> Option<String> {
    let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
    if !valid || name.starts_with(':') {
        Some(format!("{name:?} is not a header name"))
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(format!(
            "{name:?} must be lowercase, as HTTP/2 and Envoy carry header names"
        ))
    } else {
        None
    }
}

/// Line and column of the key at `path` (its value, where set), else of the
/// deepest table on the way, else the top of the file.
fn locate(text: &str, path: &[String]) -> (usize, usize) {
    use toml::de::{DeTable, DeValue};
    let Ok(doc) = DeTable::parse(text) else {
        return (1, 1);
    };
    let mut span = None;
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = Some(doc.get_ref());
    for segment in path {
        let next = match (table, value) {
            (Some(t), _) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == segment.as_str())
                .map(|(_, v)| v),
            (None, Some(DeValue::Array(a))) => segment.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        let Some(v) = next else { break };
        span = Some(v.span());
        value = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    span.map_or((1, 1), |s| super::line_column(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ConfigError {
        Config::parse("m.toml", text).expect_err("must be refused")
    }

    #[test]
    fn run_time_failures_are_refused_with_their_location() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            ("[probe]\npath = \"/ready\"\ninterval = \"0s\"\n", (3, 12), "probe.interval"),
            ("[hold]\ninterval = \"0s\"\n", (2, 12), "hold.interval"),
            ("[probe]\npath = \"ready\"\n", (2, 8), "probe.path"),
            ("[retry]\ndrain_header = \"connection\"\n", (2, 16), "retry.drain_header"),
            ("[retry]\ndrain_header = \"retry-after\"\n", (2, 16), "retry.drain_header"),
            ("[retry]\ndrain_header = \"X-Drain\"\n", (2, 16), "retry.drain_header"),
            ("[hold]\nmax_hold = \"0s\"\n", (2, 12), "hold.max_hold"),
            ("[endpoints]\neds_file = \"x\"\neds_file_poll = \"0ms\"\n", (3, 17), "endpoints.eds_file_poll"),
            ("[listen]\ngrpc = \"127.0.0.1:7\"\nadmin = \"127.0.0.1:7\"\n", (3, 9), "listen.admin"),
            ("[kubernetes]\nenabled = true\n", (1, 1), "kubernetes.services"),
            ("[[kubernetes.services]]\nname = \"\"\n", (2, 8), "kubernetes.services.0.name"),
            ("[grpc_tls]\ncert_file = \"c.pem\"\n", (1, 1), "grpc_tls.key_file"),
            ("[health]\npenalty_base = \"500000000000years\"\n", (2, 16), "health.penalty_base"),
            ("[hold]\nmax_hold = \"14s\"\n", (2, 12), "hold.max_hold"),
            (
                "[hold]\nmax_hold = \"20s\"\nenvoy_max_message_timeout = \"19s\"\n",
                (2, 12),
                "hold.max_hold",
            ),
            ("[hold]\nenvoy_max_message_timeout = \"0s\"\n", (2, 29), "hold.envoy_max_message_timeout"),
            ("[hold]\nmax_hold = \"200ms\"\n", (2, 12), "hold.max_hold"),
            (
                "[endpoints]\nstatic = [\"127.0.0.1:1\"]\n[endpoints.clusters]\napp = [\"127.0.0.1:2\"]\n",
                (2, 10),
                "endpoints.static",
            ),
        ];
        for (text, at, key) in cases {
            let err = error(text);
            assert_eq!((err.line, err.column), *at, "{text:?}: {err}");
            assert!(
                err.message.starts_with(&format!("{key}: ")),
                "{text:?}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with(&format!("m.toml:{}:{}: ", at.0, at.1)));
        }
    }

    #[test]
    fn a_max_hold_under_envoys_max_message_timeout_is_accepted() {
        let text = "[hold]\nmax_hold = \"20s\"\nenvoy_max_message_timeout = \"20s\"\n";
        Config::parse("m.toml", text).expect("20 s fits in 20 s");
        Config::parse("m.toml", "[hold]\nmax_hold = \"10s\"\n").expect("the defaults agree");
    }

    #[test]
    fn kubernetes_discovery_needs_the_kubernetes_feature() {
        let text = "[kubernetes]\nenabled = true\n[[kubernetes.services]]\nname = \"app\"\n";
        let parsed = Config::parse("m.toml", text);
        if cfg!(feature = "kubernetes") {
            parsed.expect("valid in a build with Kubernetes discovery");
        } else {
            let err = parsed.expect_err("refused in a build without it");
            assert!(
                err.to_string().starts_with(
                    "m.toml:2:11: kubernetes.enabled: this mulligan was built without"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn the_defaults_and_the_shipped_examples_are_valid() {
        assert_eq!(Config::default().problems(), vec![]);
        let ok = "[probe]\npath = \"/ready\"\n[retry]\ndrain_header = \"x-app-drained\"\n";
        Config::parse("m.toml", ok).expect("valid");
    }
}
