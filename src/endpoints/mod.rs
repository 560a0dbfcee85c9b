//! Upstream endpoints: which exist for each Envoy cluster, and what state of
//! their lifecycle each is in (ready, not ready, draining, gone).

mod registry;

pub use registry::{Endpoint, EndpointView, NotFound, Registry, State};
