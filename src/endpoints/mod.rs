//! Upstream endpoints: which exist for each Envoy cluster, what state of
//! their lifecycle each is in (ready, not ready, draining, gone), and which
//! one a replay should go to.
//!
//! - [`registry`]: the shared set and each endpoint's state;
//! - sources that feed it: static config (in the registry), Envoy's EDS
//!   file ([`eds_file`]), Kubernetes EndpointSlices and Pods
//!   ([`kubernetes`]), the lifecycle API (`admin`, `control`), passive
//!   health (the responses mulligan sees) and [`probe`] (active readiness
//!   checks);
//! - [`picker`]: the choice of endpoint for one replay.

pub(crate) mod eds_file;
#[cfg(feature = "kubernetes")]
pub(crate) mod kubernetes;
pub mod picker;
pub(crate) mod probe;
pub mod registry;

pub use registry::{Cluster, Endpoint, EndpointView, InFlight, NotFound, Registry, State};
