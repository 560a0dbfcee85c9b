//! The EnvoyPatchPolicy manifest (`envoy-config/gateway/patch-policy.yaml`):
//! the value of each of its JSON Patches, built by the functions the
//! Extension Server runs on Envoy Gateway's output, with the default
//! settings, one region per value.
//!
//! The patches themselves (which resource, and where in it) stay the
//! manifest's own: they name resources of Envoy Gateway's translation (the
//! user's Gateway, virtual host and route cluster), which the wiring never
//! makes, and a user edits those names for their own Gateway. A patch
//! replaces one field (a JSON Patch `add` sets a value, it does not merge),
//! so a value that is one scalar (a header, a count) is printed from its
//! protobuf wrapper, whose proto JSON is that scalar.

use envoy_types::pb::{
    envoy::{
        config::route::v3::{route, Route, RouteAction, VirtualHost},
        extensions::{
            filters::{
                http::router::v3::Router,
                network::http_connection_manager::v3::{
                    http_filter::ConfigType, HttpConnectionManager, HttpFilter,
                },
            },
            upstreams::http::v3::HttpProtocolOptions,
        },
    },
    google::protobuf::{Any, BoolValue, StringValue},
};
use prost::{Message, Name};

use super::{
    policy::Settings,
    wiring::{
        final_filter, hold, install_attempt_count, install_route, mulligan_cluster,
        outputs::{Encoded, Output, Region, Shape},
        wired_inline_cluster, MulliganAddress,
    },
};

/// The file, from the repository's root.
pub const PATH: &str = "envoy-config/gateway/patch-policy.yaml";
/// Where Envoy reaches mulligan from a Gateway's proxies: the Service of
/// `envoy-config/gateway/kubernetes/`, by its cluster DNS name.
pub const MULLIGAN_SERVICE: &str = "mulligan.mulligan-system.svc.cluster.local";
/// The route cluster the wiring is installed on (any name: the values do
/// not carry it).
const APP: &str = "app";
/// Envoy's router, which `mulligan.final` goes right before.
const ROUTER: &str = "envoy.filters.http.router";

/// The regions of the headers no client may send
/// ([`crate::names::header::FROM_CLIENTS_REMOVED`], in its order): a JSON Patch
/// appends one item to the route's list, so each header is a patch.
pub const CLIENT_HEADERS: [&str; 2] = ["client_header_override_host", "client_header_retry"];
/// The regions of the headers no client may receive
/// ([`crate::names::header::TO_CLIENTS_REMOVED`]), a patch each likewise.
pub const CLIENT_RESPONSE_HEADERS: [&str; 1] = ["client_response_header_retry"];

fn region(name: &'static str, message: Encoded) -> Region {
    regions(name, vec![message])
}

fn regions(name: &'static str, messages: Vec<Encoded>) -> Region {
    Region {
        name,
        shape: Shape::Fields,
        messages,
        placeholders: Vec::new(),
    }
}

/// The manifest's regions: each patch's value.
pub fn output() -> Output {
    let settings = Settings::default();
    let mut regions = vec![final_filter_region()];
    regions.extend(route_regions(&settings));
    regions.extend(cluster_regions(&settings));
    let grpc = crate::config::Listen::default().grpc;
    let mulligan = MulliganAddress {
        host: MULLIGAN_SERVICE.to_string(),
        port: grpc.port(),
    };
    let added = [
        (
            "mulligan_cluster",
            Encoded::of(&mulligan_cluster(&mulligan)),
        ),
        ("hold_listener", Encoded::of(&hold::hold_listener())),
        (
            "hold_answer_listener",
            Encoded::of(&hold::hold_answer_listener()),
        ),
        (
            "hold_answer_cluster",
            Encoded::of(&hold::hold_answer_cluster()),
        ),
    ];
    regions.extend(added.into_iter().map(|(name, m)| region(name, m)));
    Output {
        path: PATH,
        regions,
    }
}

/// `mulligan.final`, as the listener gets it (before the router).
fn final_filter_region() -> Region {
    let router = HttpFilter {
        name: ROUTER.to_string(),
        config_type: Some(ConfigType::TypedConfig(Any {
            type_url: Router::type_url(),
            value: Router::default().encode_to_vec(),
        })),
        ..Default::default()
    };
    let mut hcm = HttpConnectionManager {
        http_filters: vec![router],
        ..Default::default()
    };
    final_filter::install_final(&mut hcm);
    let finals = hcm.http_filters.iter().filter(|f| f.name != ROUTER);
    regions("final_filter", finals.map(Encoded::of).collect())
}

/// A route wired as the Extension Server wires it: its retry policy, each
/// header no client may send, and the virtual host's attempt count.
fn route_regions(settings: &Settings) -> Vec<Region> {
    let mut route = Route {
        action: Some(route::Action::Route(RouteAction::default())),
        ..Default::default()
    };
    install_route(&mut route, settings);
    let retry = match &route.action {
        Some(route::Action::Route(action)) => action.retry_policy.clone().unwrap_or_default(),
        _ => Default::default(),
    };
    let mut vhost = VirtualHost::default();
    install_attempt_count(&mut vhost);
    let mut out = vec![region("retry_policy", Encoded::of(&retry))];
    let headers = CLIENT_HEADERS.iter().zip(&route.request_headers_to_remove);
    out.extend(
        headers.map(|(name, h)| region(name, Encoded::of(&StringValue { value: h.clone() }))),
    );
    let responses = CLIENT_RESPONSE_HEADERS
        .iter()
        .zip(&route.response_headers_to_remove);
    out.extend(
        responses.map(|(name, h)| region(name, Encoded::of(&StringValue { value: h.clone() }))),
    );
    out.push(region(
        "attempt_count",
        Encoded::of(&BoolValue {
            value: vhost.include_request_attempt_count,
        }),
    ));
    out
}

/// A route cluster wired as the Extension Server wires it: its protocol
/// options (the upstream filters), outlier detection, circuit breakers,
/// and the hold endpoint of its load assignment.
fn cluster_regions(settings: &Settings) -> Vec<Region> {
    let mut cluster = wired_inline_cluster(APP, settings);
    let options = cluster
        .typed_extension_protocol_options
        .get(&HttpProtocolOptions::full_name())
        .cloned()
        .unwrap_or_default();
    let breakers = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|b| b.thresholds.first())
        .cloned()
        .unwrap_or_default();
    let assignment = cluster.load_assignment.take().unwrap_or_default();
    let hold = assignment.endpoints.iter().find(|l| hold::is_hold(l));
    let factor = assignment
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor)
        .unwrap_or_default();
    let limits = [
        ("max_retries", breakers.max_retries),
        ("max_requests", breakers.max_requests),
        ("max_pending_requests", breakers.max_pending_requests),
        ("max_connections", breakers.max_connections),
    ];
    let mut regions = vec![
        region("protocol_options", any(&options)),
        region(
            "outlier_detection",
            Encoded::of(&cluster.outlier_detection.unwrap_or_default()),
        ),
    ];
    regions.extend(
        limits
            .into_iter()
            .map(|(name, limit)| region(name, Encoded::of(&limit.unwrap_or_default()))),
    );
    regions.push(region(
        "hold_endpoint",
        Encoded::of(&hold.cloned().unwrap_or_default()),
    ));
    regions.push(region("overprovisioning_factor", Encoded::of(&factor)));
    regions
}

/// An `Any` as a message of its own (printed with its `@type`).
fn any(a: &Any) -> Encoded {
    Encoded {
        type_name: Any::full_name(),
        bytes: a.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every header the wiring removes from clients' requests has a patch
    /// (a region) of its own: one more header needs one more patch.
    #[test]
    fn every_client_header_has_a_patch() {
        assert_eq!(
            CLIENT_HEADERS.len(),
            crate::names::header::FROM_CLIENTS_REMOVED.len()
        );
        assert_eq!(
            CLIENT_RESPONSE_HEADERS.len(),
            crate::names::header::TO_CLIENTS_REMOVED.len()
        );
    }
}
