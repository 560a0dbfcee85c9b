//! mulligan: an Envoy external processor that turns the 503s of rolling
//! deploys, scale-downs and slow-booting pods into safe, bounded retries.
//!
//! Follow a request top-down through the modules:
//!
//! 1. [`ext_proc`]: Envoy opens one gRPC stream per HTTP request; the stream
//!    handler answers every phase (headers, bodies, trailers), and the
//!    per-request `Exchange` dispatches each message to the module that owns
//!    the decision (`decide` for the decide wiring; for the legacy wiring,
//!    `capture` keeps the request, `rescue` judges and replays it, `steer`
//!    writes Envoy's endpoint list).
//! 2. [`classify`]: on a failed response, why it failed (a draining pod, a
//!    refused connection, overload, ...).
//! 3. [`policy`]: whether it may be sent again ([`policy::safety`]), whether
//!    the platform can afford it ([`policy::budget`]) and when
//!    ([`policy::backoff`]).
//! 4. [`endpoints`]: the registry of upstream endpoints and their lifecycle
//!    (ready, draining, gone), its sources (static config, the EDS file,
//!    Kubernetes with the default `kubernetes` feature, the lifecycle API,
//!    passive health, active probes) and the picker.
//! 5. `decide` judges a failed attempt for the decide wiring (retry, hold,
//!    or let it stand). On the legacy wiring, `rescue` drives `replay`:
//!    send the request again to a healthy endpoint, or hold it until one is
//!    ready, and answer Envoy with the response; or, on the request path,
//!    `steer` hands Envoy an ordered list of healthy endpoints and retry
//!    headers.
//!
//! Around the request path:
//! - `server` wires the gRPC port (ext_proc, health), the `control` port
//!   and the `admin` HTTP port together, in steps (sources, gRPC, admin,
//!   drain), and owns mulligan's own graceful [`drain`];
//! - [`config`] is the TOML configuration, [`cli`] the command line,
//!   `telemetry` logs and [`metrics`] the Prometheus counters;
//! - [`extension`] is the Envoy Gateway Extension Server (`mulligan
//!   extension-server`), which installs mulligan's wiring into Envoy
//!   Gateway's xDS;
//! - `fuzzing` (feature `fuzzing`) feeds untrusted bytes to the protocol, the classifier and
//!   the config parser, and checks what must hold whatever they are.

#![deny(clippy::too_many_lines)]

pub(crate) mod access;
pub(crate) mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod decide;
pub mod drain;
pub mod endpoints;
pub mod ext_proc;
pub mod extension;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod labels;
pub mod metrics;
pub mod names;
pub mod policy;
pub(crate) mod replay;
pub(crate) mod rescue;
pub(crate) mod server;
pub(crate) mod steer;
pub(crate) mod telemetry;

/// mulligan's own control API (`proto/mulligan/v1`).
pub mod proto {
    #![allow(clippy::all, clippy::too_many_lines, missing_docs)]
    tonic::include_proto!("mulligan.v1");
}
