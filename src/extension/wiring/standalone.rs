//! The reference bootstrap's wiring (`envoy-config/standalone/envoy.yaml`):
//! its app route, listener and cluster wired by the very functions the
//! Extension Server runs on Envoy Gateway's output, with the default
//! settings, and cut into the regions the file marks.

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::Cluster,
        endpoint::v3::ClusterLoadAssignment,
        route::v3::{route, route_action::ClusterSpecifier, Route, RouteAction, VirtualHost},
    },
    extensions::{
        filters::{
            http::router::v3::Router,
            network::http_connection_manager::v3::{HttpConnectionManager, HttpFilter},
        },
        upstreams::http::v3::HttpProtocolOptions,
    },
};
use prost::Message;

use super::{
    envoy, final_filter, hold, http_filter, install_attempt_count, install_route, mulligan_cluster,
    outputs::{Encoded, Output, Placeholder, Region, Shape},
    pack, MulliganAddress,
};
use crate::extension::policy::Settings;

/// The file, from the repository's root.
pub const PATH: &str = "envoy-config/standalone/envoy.yaml";
/// The app cluster's name in the reference bootstrap.
const APP: &str = "app";

const NUM_RETRIES: Placeholder = Placeholder {
    key: "num_retries",
    name: "NUM_RETRIES",
};
const MESSAGE_TIMEOUT: Placeholder = Placeholder {
    key: "message_timeout",
    name: "MESSAGE_TIMEOUT",
};
/// The hold budget, in both places it goes: Envoy's `max_message_timeout`
/// and the `x-mulligan-max-hold` metadata that tells mulligan (its value:
/// the one metadata value printed as the default budget).
const MAX_HOLD: Placeholder = Placeholder {
    key: "max_message_timeout",
    name: "MAX_HOLD",
};
const MAX_HOLD_METADATA: Placeholder = Placeholder {
    key: DEFAULT_MAX_HOLD_VALUE,
    name: "MAX_HOLD",
};
/// `value=` the default budget as printed (`policy::DEFAULT_MAX_HOLD`; a
/// test checks they agree).
const DEFAULT_MAX_HOLD_VALUE: &str = "value=10s";
const MULLIGAN_GRPC_PORT: Placeholder = Placeholder {
    key: "port_value",
    name: "MULLIGAN_GRPC_PORT",
};

fn region(name: &'static str, shape: Shape, messages: Vec<Encoded>) -> Region {
    Region {
        name,
        shape,
        messages,
        placeholders: Vec::new(),
    }
}

fn with(mut r: Region, placeholders: &[Placeholder]) -> Region {
    r.placeholders = placeholders.to_vec();
    r
}

/// The reference bootstrap's regions.
pub fn output() -> Output {
    let settings = Settings::default();
    let mut regions = route_regions(&settings);
    regions.extend(cluster_regions(&settings));
    let mut hcm = HttpConnectionManager {
        http_filters: vec![http_filter(envoy::ROUTER, pack(&Router::default()))],
        ..Default::default()
    };
    final_filter::install_final(&mut hcm);
    let finals = hcm.http_filters.iter().filter(|f| f.name != envoy::ROUTER);
    let finals = finals.map(Encoded::of).collect();
    regions.push(with(
        region("final_filter", Shape::Items, finals),
        &[MESSAGE_TIMEOUT],
    ));
    let listeners = [hold::hold_listener(), hold::hold_answer_listener()];
    let listeners = listeners.iter().map(Encoded::of).collect();
    regions.push(region("hold_listeners", Shape::Items, listeners));
    let grpc = crate::config::Listen::default().grpc;
    let mulligan = MulliganAddress {
        host: grpc.ip().to_string(),
        port: grpc.port(),
    };
    let clusters = [hold::hold_answer_cluster(), mulligan_cluster(&mulligan)];
    let clusters = clusters.iter().map(Encoded::of).collect();
    regions.push(with(
        region("mulligan_clusters", Shape::Items, clusters),
        &[MULLIGAN_GRPC_PORT],
    ));
    Output {
        path: PATH,
        regions,
    }
}

/// The app route and its virtual host, wired: the headers no client may
/// send, the attempt count, the retry policy.
fn route_regions(settings: &Settings) -> Vec<Region> {
    let mut route = Route {
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(APP.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    };
    install_route(&mut route, settings);
    let mut vhost = VirtualHost::default();
    install_attempt_count(&mut vhost);
    let retry = match route.action {
        Some(route::Action::Route(action)) => RouteAction {
            retry_policy: action.retry_policy,
            ..Default::default()
        },
        _ => RouteAction::default(),
    };
    let headers = Route {
        request_headers_to_remove: route.request_headers_to_remove,
        response_headers_to_remove: route.response_headers_to_remove,
        ..Default::default()
    };
    vec![
        region("client_headers", Shape::Fields, vec![Encoded::of(&headers)]),
        region("attempt_count", Shape::Fields, vec![Encoded::of(&vhost)]),
        with(
            region("retry_policy", Shape::Fields, vec![Encoded::of(&retry)]),
            &[NUM_RETRIES],
        ),
    ]
}

/// The app cluster, wired: its outlier, panic and circuit breaker
/// settings, its upstream filters, and the hold endpoint.
fn cluster_regions(settings: &Settings) -> Vec<Region> {
    let mut cluster = super::wired_inline_cluster(APP, settings);
    let filters: Vec<HttpFilter> = cluster
        .typed_extension_protocol_options
        .get(envoy::HTTP_PROTOCOL_OPTIONS)
        .and_then(|any| HttpProtocolOptions::decode(any.value.as_slice()).ok())
        .map(|o| o.http_filters)
        .unwrap_or_default();
    let assignment = cluster.load_assignment.take().unwrap_or_default();
    let policy = ClusterLoadAssignment {
        policy: assignment.policy,
        ..Default::default()
    };
    let holds = assignment.endpoints.iter().filter(|l| hold::is_hold(l));
    let settings_only = Cluster {
        circuit_breakers: cluster.circuit_breakers,
        common_lb_config: cluster.common_lb_config,
        outlier_detection: cluster.outlier_detection,
        ..Default::default()
    };
    vec![
        region(
            "app_cluster",
            Shape::Fields,
            vec![Encoded::of(&settings_only)],
        ),
        with(
            region(
                "upstream_filters",
                Shape::Items,
                filters.iter().map(Encoded::of).collect(),
            ),
            &[MESSAGE_TIMEOUT, MAX_HOLD, MAX_HOLD_METADATA],
        ),
        region("hold_policy", Shape::Fields, vec![Encoded::of(&policy)]),
        region(
            "hold_endpoint",
            Shape::Items,
            holds.map(Encoded::of).collect(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget's metadata placeholder names the default budget.
    #[test]
    fn the_budget_placeholder_matches_the_default() {
        let printed =
            super::super::ext_proc::proto_json(crate::extension::policy::DEFAULT_MAX_HOLD);
        assert_eq!(DEFAULT_MAX_HOLD_VALUE, format!("value={printed}"));
    }
}
