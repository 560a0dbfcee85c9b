//! Upstream endpoints: which exist for each Envoy cluster, what state of
//! their lifecycle each is in (ready, not ready, draining, gone): what a
//! hold waits on.
//!
//! - [`registry`]: the shared set and each endpoint's state;
//! - sources that feed it: static config (in the registry), Envoy's EDS
//!   file ([`eds_file`]), Kubernetes EndpointSlices and Pods
//!   ([`kubernetes`]), the lifecycle API (`admin`, `control`), passive
//!   health (the responses mulligan sees) and [`probe`] (active readiness
//!   checks).

pub(crate) mod eds_file;
#[cfg(feature = "kubernetes")]
pub(crate) mod kubernetes;
pub(crate) mod probe;
pub mod registry;

pub use registry::{Cluster, Endpoint, EndpointView, NotFound, Registry, State};
