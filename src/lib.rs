//! mulligan: an Envoy external processor that turns the 503s of rolling
//! deploys, scale-downs and slow-booting pods into safe, bounded retries.
//!
//! Follow a request top-down through the modules:
//!
//! 1. [`ext_proc`]: Envoy opens one gRPC stream per HTTP request; the stream
//!    handler answers every phase (headers, bodies, trailers) and keeps the
//!    per-request state (`Exchange`).
//! 2. [`endpoints`]: the registry of upstream endpoints and their lifecycle
//!    (ready, draining, gone), fed by static config and the lifecycle API.
//!
//! Around the request path:
//! - [`server`] wires the gRPC port (ext_proc, health, [`control`]) and the
//!   [`admin`] HTTP port together and owns mulligan's own graceful [`drain`];
//! - [`config`] is the TOML configuration, [`cli`] the command line,
//!   [`telemetry`] logs and [`metrics`] the Prometheus counters.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod drain;
pub mod endpoints;
pub mod ext_proc;
pub mod metrics;
pub mod server;
pub mod telemetry;

/// mulligan's own control API (`proto/mulligan/v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mulligan.v1");
}
