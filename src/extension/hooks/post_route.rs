//! PostRouteModify: Envoy Gateway gives HTTPRoute and GRPCRoute policies
//! (on a whole route, or on one rule by `sectionName`) to this hook alone, so it carries their decision on the route (a marker in its
//! metadata, read again by PostTranslateModify) and installs the route's
//! retry policy.

use envoy_types::pb::envoy::config::route::v3::Route;
use prost::Message;

use super::Hooks;
use crate::extension::{api::raw, policy::Mode, select, wiring};

impl Hooks {
    /// Carries a route policy's decision on the route (a marker in its
    /// metadata) and installs the route's retry policy.
    pub fn post_route(&self, req: raw::PostRouteModifyRequest) -> raw::PostRouteModifyResponse {
        let resources = req.post_route_context.iter().flat_map(|c| {
            c.extension_policies
                .iter()
                .chain(&c.extension_resources)
                .map(|r| r.unstructured_bytes.as_slice())
        });
        let policies = self.policies(resources);
        if policies.is_empty() {
            return raw::PostRouteModifyResponse { route: req.route };
        }
        let decoded = req.route.as_deref().map(Route::decode);
        let route = match decoded {
            Some(Ok(mut route)) => match policies.for_route(route.metadata.as_ref()) {
                Some(Ok(policy)) => {
                    select::write_marker(
                        route.metadata.get_or_insert_with(Default::default),
                        policy,
                    );
                    if policy.mode == Mode::Decide {
                        wiring::install_route(&mut route, &policy.settings);
                    }
                    Some(route.encode_to_vec())
                }
                // An invalid policy decides (reported), or none applies.
                Some(Err(())) | None => req.route,
            },
            _ => req.route,
        };
        raw::PostRouteModifyResponse { route }
    }
}
