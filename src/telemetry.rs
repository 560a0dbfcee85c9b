//! Structured logs through `tracing`: text for people, JSON for pipelines.
//! The level comes from `RUST_LOG` (default `info`). Logs go to stderr so
//! that stdout carries only the one machine-readable "listening" line.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests running several servers in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
