//! mulligan: an Envoy external processor that turns the 503s of rolling
//! deploys, scale-downs and slow-booting pods into safe, bounded retries.
//!
//! Envoy makes every attempt; mulligan is asked only about attempts that
//! failed (and about a retry about to leave), and answers retry, hold or
//! stand. Healthy requests never open a stream.
//!
//! Follow a failed attempt top-down through the modules:
//!
//! 1. [`ext_proc`]: Envoy opens one gRPC stream per question, from one of
//!    three filters the wiring names in the stream's `x-mulligan-phase`
//!    metadata: `attempt` (a failed attempt), `retry` (a retry: the gate
//!    before it leaves, then its answer) and `final` (the failed response on
//!    its way to the client). A stream naming none is refused. The
//!    per-stream `Exchange` answers every phase Envoy sends.
//! 2. [`classify`]: why the attempt failed (a draining pod, a refused
//!    connection, overload, ...).
//! 3. `decide`: the verdict. [`policy`] says whether it may be sent again
//!    ([`policy::safety`]) and whether the platform can afford it
//!    ([`policy::budget`]); `decide` remembers earlier attempts of the same
//!    request (a taint that stops every later retry of a request that may
//!    have run), and chooses: retry now, hold until an endpoint can serve
//!    (`decide::hold`), or let the failure stand.
//! 4. [`endpoints`]: the registry of upstream endpoints and their lifecycle
//!    (ready, draining, gone) that a hold waits on, and its sources (static
//!    config, the EDS file, Kubernetes with the default `kubernetes`
//!    feature, the lifecycle API, passive health, active probes).
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
//! - `fuzzing` (feature `fuzzing`) feeds untrusted bytes to the protocol
//!   (every role), the classifier and the config parser, and checks what
//!   must hold whatever they are.

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
pub(crate) mod server;
pub(crate) mod telemetry;

/// mulligan's own control API (`proto/mulligan/v1`).
pub mod proto {
    #![allow(clippy::all, clippy::too_many_lines, missing_docs)]
    tonic::include_proto!("mulligan.v1");
}
