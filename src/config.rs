//! mulligan's configuration: one TOML file, every key optional.
//!
//! Every key has a default so that `mulligan serve` with no file runs; the
//! reference for each key (and its default) is `docs/config.md`. Unknown keys
//! are errors: a typo in a safety setting must not silently fall back to a
//! default.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

mod removed;
mod validate;
pub use validate::Problem;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: Runtime,
    pub listen: Listen,
    pub admin: Admin,
    pub shutdown: Shutdown,
    pub log: Log,
    pub limits: Limits,
    pub endpoints: Endpoints,
    pub retry: Retry,
    pub hold: Hold,
    pub budget: Budget,
    pub health: Health,
    pub probe: Probe,
    pub kubernetes: Kubernetes,
    pub grpc_tls: GrpcTls,
}

/// Mutual TLS on the ext_proc port: mulligan presents `cert_file` and
/// accepts only clients (Envoy) whose certificate `client_ca_file` signed,
/// so reaching the port is not enough to pass for Envoy. All three set, or
/// none (plaintext h2c).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTls {
    /// PEM certificate chain mulligan presents.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA certificate(s) a client certificate must chain to; a client
    /// without one is refused.
    pub client_ca_file: String,
}

impl GrpcTls {
    pub(crate) fn enabled(&self) -> bool {
        !(self.cert_file.is_empty() && self.key_file.is_empty() && self.client_ca_file.is_empty())
    }
}

/// Kubernetes discovery: EndpointSlices (and Pods) of chosen Services.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    pub enabled: bool,
    /// The namespace of the Services (the RBAC in the manifests is scoped
    /// to it).
    pub namespace: String,
    /// The API server; empty: in-cluster config (or the local kubeconfig).
    pub api_server: String,
    pub services: Vec<KubeService>,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: "default".into(),
            api_server: String::new(),
            services: Vec::new(),
        }
    }
}

/// One Service whose endpoints mulligan follows.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeService {
    pub name: String,
    /// The Envoy cluster its endpoints belong to; default: the name Envoy
    /// Gateway generates for the first rule of an HTTPRoute of the same
    /// name, `httproute/<namespace>/<name>/rule/0`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The EndpointSlice port (by name or number); default: the first.
    #[serde(default)]
    pub port: Option<String>,
}

/// Retry: which failed attempts mulligan asks Envoy to try again.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Off: mulligan only observes (classification and metrics still run);
    /// every failed attempt stands.
    pub enabled: bool,
    /// Response header an upstream sets on a 503 when it rejected the request
    /// without processing it (a draining app's shutdown middleware). Such a
    /// 503 is safe to retry whatever the method.
    pub drain_header: String,
    /// Retry a 503 from the application that carries no drain signal
    /// (idempotent requests only).
    pub retry_plain_503: bool,
    /// `Retry-After` (seconds) added to a 503 the client gets: one held
    /// until `hold.max_hold`, or one no endpoint could come back for.
    pub retry_after_seconds: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            enabled: true,
            drain_header: "x-mulligan-drain".into(),
            retry_plain_503: false,
            retry_after_seconds: 1,
        }
    }
}

/// Holding a failed attempt until an endpoint can serve.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hold {
    /// The hold budget of a stream whose wiring sends none
    /// (`x-mulligan-max-hold`): Envoy is asked to wait this long and the hold
    /// ends [`Hold::ANSWER_MARGIN`] sooner, so the 503 stands, with
    /// `Retry-After`, in time. It must fit in `envoy_max_message_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    /// Requests held at once, at most; past this a failed attempt that would
    /// be held stands.
    pub max_held: usize,
    /// How often a held request's cluster is checked: every usable endpoint
    /// gets a TCP connect at most this often, so an endpoint that comes back
    /// is noticed within about this long with no probe path configured.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// After an endpoint is found, wait this long before asking Envoy to
    /// retry (Envoy's view of the endpoint may lag mulligan's: an ejected
    /// host returns after its ejection time). While Envoy is behind (a
    /// request was held since a retry was last served), held requests
    /// leave as scouts, one per `settle`, until one is served; a request
    /// back at the hold waits one `settle` more per earlier release (at
    /// most 1 s) before it scouts again.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Held requests go back to Envoy at most this many per second per
    /// usable endpoint of their cluster, so a pod that just came back is not
    /// handed every held request at once.
    pub release_per_endpoint: u32,
    /// Envoy's `max_message_timeout` on mulligan's ext_proc filters, for a
    /// wiring that sends no hold budget with its streams (the shipped ones
    /// send it, from the same value as their `max_message_timeout`). Envoy
    /// ignores a longer wait and lets the 503 through at `message_timeout`,
    /// so `check-config` compares it with `max_hold`.
    #[serde(with = "humantime_serde")]
    pub envoy_max_message_timeout: Duration,
}

impl Hold {
    /// Time mulligan asks for beyond `max_hold`, to send its answer in.
    pub(crate) const ANSWER_MARGIN: Duration = Duration::from_millis(200);
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            max_hold: Duration::from_secs(10),
            max_held: 10_000,
            interval: Duration::from_millis(100),
            settle: Duration::from_millis(50),
            release_per_endpoint: 200,
            // What both shipped wirings give Envoy: envoy.yaml's default and
            // the Extension Server's when a policy names none.
            envoy_max_message_timeout: crate::extension::policy::DEFAULT_MAX_HOLD,
        }
    }
}

/// The retry budget shared by every stream: retries that may add load on
/// the apps are at most `ratio` of the failed attempts judged plus
/// `min_per_second`, over `window`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    pub ratio: f64,
    pub min_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Passive health: what mulligan learns from the responses it sees.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// An endpoint seen failing is avoided this long; the penalty doubles
    /// with each consecutive failure up to `penalty_max`; a success clears it.
    #[serde(with = "humantime_serde")]
    pub penalty_base: Duration,
    #[serde(with = "humantime_serde")]
    pub penalty_max: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            penalty_base: Duration::from_secs(1),
            penalty_max: Duration::from_secs(30),
        }
    }
}

/// Active readiness probing of every known endpoint (off unless `path` is set).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    /// HTTP path probed with GET, e.g. "/ready"; empty disables probing.
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes before a not-ready endpoint is ready.
    pub healthy_threshold: u32,
    /// Consecutive failures before a ready endpoint is not ready.
    pub unhealthy_threshold: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            path: String::new(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// Resource limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest ext_proc message accepted from Envoy, in bytes. In STREAMED
    /// mode Envoy may hand over a whole body in one message; a larger one
    /// fails the stream and Envoy applies `failure_mode_allow`.
    pub max_message_bytes: usize,
    /// ext_proc streams open at once (one per HTTP request in flight through
    /// Envoy); past this a new stream is refused (`RESOURCE_EXHAUSTED`) and
    /// Envoy's `failure_mode_allow` passes that request through untouched.
    pub max_streams: usize,
    /// A stream on which no message arrives for this long is ended with
    /// `DEADLINE_EXCEEDED` and everything it holds is freed, so a peer that
    /// opens streams and stalls cannot pin places under `max_streams`.
    /// Envoy's `failure_mode_allow` passes that request on. It must exceed
    /// the longest quiet gap within one HTTP request (the upstream's time to
    /// first byte when response phases are processed, or the gap between
    /// body chunks in streamed modes). `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// HTTP/2 PING interval on the gRPC port. A peer that vanished without
    /// closing its sockets (a frozen Envoy, a partitioned node) holds its
    /// streams until a PING goes unanswered. `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection and every
    /// stream on it are closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            max_streams: 10_000,
            stream_idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// The async runtime.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Worker threads; 0: one per available core (cgroup limits included).
    /// Fewer threads mean fewer cross-thread wake-ups per request: on a
    /// shared 2-core machine one thread cut mulligan's CPU per request by
    /// about a third (BENCHMARKS.md).
    pub worker_threads: usize,
}

/// Who may use the admin port and the lifecycle API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// A file holding the bearer token that authorises lifecycle calls (and
    /// reads, when they are not open); empty: no token.
    pub token_file: String,
    /// Callers on loopback may change state without the token.
    pub trust_loopback: bool,
    /// `/metrics` and `/v1/endpoints` are readable without the token.
    pub open_reads: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            token_file: String::new(),
            trust_loopback: true,
            open_reads: true,
        }
    }
}

/// Where mulligan listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// ext_proc and gRPC health (HTTP/2): the port Envoy reaches.
    pub grpc: SocketAddr,
    /// Health, readiness, metrics and the lifecycle API (HTTP/1.1).
    pub admin: SocketAddr,
    /// The `mulligan.v1.Lifecycle` gRPC API, on a port of its own so that
    /// reaching ext_proc never lets a peer change endpoint states; unset:
    /// not served (the admin port has the same lifecycle API over HTTP).
    pub control: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9902)),
            control: None,
        }
    }
}

/// mulligan's own graceful shutdown.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// After SIGTERM, how long in-flight ext_proc streams may take to finish
    /// before mulligan exits anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            default: Vec::new(),
            static_cluster: "app".into(),
            clusters: BTreeMap::new(),
            eds_file: String::new(),
            eds_file_poll: Duration::from_millis(100),
        }
    }
}

/// Known upstream endpoints: static lists and discovery sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoints {
    /// Endpoints of the cluster named `static_cluster` (the `--endpoints`
    /// flag). They serve that cluster only: an unknown cluster is never
    /// served by another cluster's endpoints.
    #[serde(rename = "static")]
    pub default: Vec<SocketAddr>,
    /// The Envoy cluster `static` belongs to; the reference standalone
    /// configs name their app cluster `app`.
    pub static_cluster: String,
    /// Endpoints per Envoy cluster name (`xds.cluster_name`).
    pub clusters: BTreeMap<String, Vec<SocketAddr>>,
    /// An Envoy EDS file (JSON `DiscoveryResponse`) to follow; empty: none.
    pub eds_file: String,
    /// How often the EDS file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub eds_file_poll: Duration,
}

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Config {
    /// Reads and parses `path`; errors name the file, line and column.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses TOML text and checks it (see `validate`); `file` only names
    /// the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_only(file, text)?;
        cfg.validate(file, Some(text))?;
        Ok(cfg)
    }

    fn parse_only(file: &str, text: &str) -> Result<Self, ConfigError> {
        if let Some((_, offset, message)) = removed::find(text) {
            let (line, column) = line_column(text, offset);
            return Err(ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            });
        }
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let cfg = Config::parse("t.toml", "").expect("empty config");
        assert_eq!(cfg.listen.grpc.port(), 50051);
        assert_eq!(cfg.listen.admin.port(), 9902);
        assert_eq!(cfg.shutdown.drain_timeout, Duration::from_secs(30));
        assert_eq!(cfg.log.format, LogFormat::Text);
    }

    #[test]
    fn errors_name_line_and_column() {
        let text = "[listen]\ngrpc = \"127.0.0.1:1\"\nadmin = \"nope\"\n";
        let err = Config::parse("m.toml", text).expect_err("bad address");
        assert_eq!((err.line, err.column), (3, 9), "{err}");
        assert!(err.to_string().starts_with("m.toml:3:9: "), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("m.toml", "[shutdown]\ndrain_timout = \"1s\"\n")
            .expect_err("typo must fail");
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("drain_timout"), "{err}");
    }

    #[test]
    fn durations_and_clusters_parse() {
        let text = r#"
[shutdown]
drain_timeout = "1500ms"
[endpoints]
static = ["127.0.0.1:8080"]
[endpoints.clusters]
"httproute/default/backend/rule/0" = ["10.0.0.1:80", "10.0.0.2:80"]
"#;
        let cfg = Config::parse("m.toml", text).expect("valid");
        assert_eq!(cfg.shutdown.drain_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.endpoints.default.len(), 1);
        assert_eq!(
            cfg.endpoints.clusters["httproute/default/backend/rule/0"].len(),
            2
        );
    }
}
