//! What each hook does to Envoy Gateway's resources, without gRPC.
//!
//! PostTranslateModify does the work: it sees every route, cluster and
//! listener at once, so it can wire a route together with its cluster and
//! its listener. PostRouteModify only carries HTTPRoute policies forward
//! (Envoy Gateway gives them to that hook alone). PostEndpointsModify adds
//! the hold endpoint to EDS clusters, whose endpoints PostTranslateModify
//! never sees. The other hooks return their input.
//!
//! Within one translation Envoy Gateway calls, per route, PostRouteModify
//! and then PostEndpointsModify for the route's clusters, and
//! PostTranslateModify once at the end. So the Endpoints hook knows the
//! clusters of HTTPRoute policies from the same translation, and those of
//! Gateway policies from the previous one.
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

use std::collections::BTreeSet;

use arc_swap::ArcSwap;

use super::{select::Policies, wiring::MulliganAddress, ExtensionMetrics};

/// The hooks' shared state: where mulligan is, and which EDS clusters the
/// last translation wired (for PostEndpointsModify, which has no context).
pub struct Hooks {
    mulligan: MulliganAddress,
    /// EDS clusters the last PostTranslateModify wired.
    eds_wired: ArcSwap<BTreeSet<String>>,
    /// Clusters of routes PostRouteModify wired since then.
    routes_wired: std::sync::Mutex<BTreeSet<String>>,
    metrics: ExtensionMetrics,
}

impl Hooks {
    pub fn new(mulligan: MulliganAddress) -> Self {
        Self {
            mulligan,
            eds_wired: ArcSwap::from_pointee(BTreeSet::new()),
            routes_wired: Default::default(),
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

    /// The clusters PostRouteModify wired in this translation (a poisoned
    /// lock only means another hook panicked: the set is still usable).
    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.routes_wired.lock().unwrap_or_else(|e| e.into_inner())
    }
}
