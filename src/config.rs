//! mulligan's configuration: one TOML file, every key optional.
//!
//! Every key has a default so that `mulligan serve` with no file runs; the
//! reference for each key (and its default) is `docs/config.md`. Unknown keys
//! are errors: a typo in a safety setting must not silently fall back to a
//! default.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub shutdown: Shutdown,
    pub log: Log,
    pub limits: Limits,
    pub endpoints: Endpoints,
}

/// Resource limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest ext_proc message accepted from Envoy, in bytes. In STREAMED
    /// mode Envoy may hand over a whole body in one message; a larger one
    /// fails the stream and Envoy applies `failure_mode_allow`.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where mulligan listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// ext_proc, gRPC health and the `mulligan.v1` control API (HTTP/2).
    pub grpc: SocketAddr,
    /// Health, readiness, metrics and the lifecycle API (HTTP/1.1).
    pub admin: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9902)),
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

/// Statically known upstream endpoints.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoints {
    /// Endpoints of every cluster that has no list of its own in `clusters`.
    #[serde(rename = "static")]
    pub default: Vec<SocketAddr>,
    /// Endpoints per Envoy cluster name (`xds.cluster_name`).
    pub clusters: BTreeMap<String, Vec<SocketAddr>>,
}

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and parses `path`; errors name the file, line and column.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses TOML text; `file` only names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
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
