//! The rollout harness: a simulated Kubernetes deployment rolling under
//! load, seen through several proxies side by side in one run:
//!
//! - Envoy alone, with no retries;
//! - Envoy with the retries Envoy Gateway configures by default (taken
//!   from its own xDS output in `shared/fixtures/envoy-gateway`);
//! - Envoy with mulligan, wired as shipped (`envoy.yaml`).
//!
//! All variants send to the same pods, which the same controller rolls, and
//! each Envoy learns the endpoint set from the same EDS file (filesystem xDS)
//! with the same propagation lag. Each variant gets its own open-loop load.
//!
//! - [`cluster`]: pods, the controller and the EDS publisher;
//! - [`proxies`]: the Envoy (and mulligan) behind each variant;
//! - [`load`]: the open-loop load generator;
//! - [`report`]: tables, JSON and the SVG timeline;
//! - [`resources`]: RSS and open fds of mulligan and Envoy over the run;
//! - [`scenario`]: what each named scenario does.

pub mod cluster;
pub mod load;
pub mod proxies;
pub mod report;
pub mod resources;
pub mod scenario;
