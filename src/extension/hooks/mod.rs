//! What each hook does to Envoy Gateway's resources, without gRPC.
//!
//! PostTranslateModify does the work: it sees every route, cluster and
//! listener at once, so it can wire a route together with its cluster and
//! its listener. PostRouteModify only carries HTTPRoute policies forward
//! (Envoy Gateway gives them to that hook alone). The other hooks,
//! PostEndpointsModify included, return their input.
//!
//! Every answer depends only on the call in hand: nothing is kept from one
//! call to the next, so Envoy Gateway may translate several Gateways, call
//! hooks concurrently and in any order, and run several replicas of the
//! server, and each translation gets the same wiring.
//!
//! Resources arrive as bytes ([`super::api::raw`]); one that is not changed goes
//! back as the very bytes that came, and one that does not decode is
//! passed through untouched.
//!
//! One file per hook: `post_route.rs`, `post_endpoints.rs`,
//! `post_translate.rs`.

mod post_endpoints;
mod post_route;
mod post_translate;

use super::{select::Policies, wiring::MulliganAddress, ExtensionMetrics};

/// What every hook call shares: where mulligan is, and the metrics. No
/// state from one translation reaches another.
pub struct Hooks {
    mulligan: MulliganAddress,
    metrics: ExtensionMetrics,
}

impl Hooks {
    pub fn new(mulligan: MulliganAddress) -> Self {
        Self {
            mulligan,
            metrics: ExtensionMetrics::new(),
        }
    }

    fn policies<'a>(&self, resources: impl IntoIterator<Item = &'a [u8]>) -> Policies {
        let metrics = &self.metrics;
        Policies::read(resources, &mut |id, reason| {
            tracing::warn!(
                policy = id,
                reason,
                "invalid MulliganPolicy: its routes are left as Envoy Gateway made them"
            );
            metrics.invalid_policy();
        })
    }
}
