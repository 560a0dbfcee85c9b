//! The hold: where a wired cluster's request goes when the cluster has no
//! healthy endpoint. Its 503 is an upstream answer that reaches
//! `mulligan.attempt` like any other, so mulligan can hold it until an
//! endpoint can serve, then ask for a retry.
//!
//! A cluster whose endpoints are in its own configuration gets the hold as
//! a priority-1 endpoint ([`install_hold_endpoint`]). An EDS cluster's
//! endpoints come from Envoy Gateway's EDS, which the Extension Server sees
//! (PostEndpointsModify) without knowing whether the cluster is wired: so
//! an EDS cluster becomes an aggregate of itself and [`hold_cluster`]
//! (`super::cluster::install_eds_cluster`), decided from the translation in
//! hand alone.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::{
        accesslog::v3::{
            access_log_filter::FilterSpecifier, comparison_filter, AccessLogFilter,
            ComparisonFilter, HeaderFilter, StatusCodeFilter,
        },
        cluster::v3::Cluster,
        core::v3::{
            address, envoy_internal_address::AddressNameSpecifier, Address, EnvoyInternalAddress,
            RuntimeUInt32,
        },
        endpoint::v3::{
            cluster_load_assignment::Policy, lb_endpoint, ClusterLoadAssignment, Endpoint,
            LbEndpoint, LocalityLbEndpoints,
        },
        listener::v3::{filter, listener, Filter, FilterChain, Listener},
        route::v3::{
            header_matcher::HeaderMatchSpecifier, route, route_action, route_match,
            DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration,
            RouteMatch, VirtualHost,
        },
    },
    extensions::filters::{
        http::{buffer::v3::Buffer, router::v3::Router},
        network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager, LocalReplyConfig,
            ResponseMapper,
        },
    },
};

use super::{duration, envoy, http_filter, inline, pack, set_header, u32v};
use crate::names::hold::{ANSWER, GRPC_HEADER, LISTENER};

/// The cluster whose one endpoint is the hold listener: an aggregate's
/// fallback member.
pub const HOLD_CLUSTER: &str = "mulligan_hold";

/// The request header that makes Envoy answer a request the gRPC way
/// (`application/grpc...`), which the hold listener removes.
const GRPC_MARKER_HEADER: &str = "content-type";
/// The hold's 503 body (`grpc-message` for gRPC), Envoy's own words.
const HOLD_BODY: &str = "no healthy upstream";
/// How much of a request body the hold's answer waits for (Envoy's default
/// buffer limit, above which it does not retry anyway).
const HOLD_BUFFER_BYTES: u32 = 1024 * 1024;
/// How long the hold's answer waits for the whole request.
const HOLD_REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Connecting to an internal listener: never slow, only bounded.
const HOLD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// P0 takes all traffic while any of its hosts is healthy.
pub const OVERPROVISIONING_FACTOR: u32 = 100_000;

/// Whether `locality` holds the hold endpoint.
pub fn is_hold(locality: &LocalityLbEndpoints) -> bool {
    locality
        .lb_endpoints
        .iter()
        .any(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => matches!(
                ep.address.as_ref().and_then(|a| a.address.as_ref()),
                Some(address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
                    address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(n)),
                    ..
                })) if n == LISTENER
            ),
            _ => false,
        })
}

/// Adds the hold endpoint one priority below the app's endpoints, and the
/// overprovisioning factor that keeps every request on the app while any
/// app host is healthy.
pub fn install_hold_endpoint(assignment: &mut ClusterLoadAssignment) {
    assignment.endpoints.retain(|l| !is_hold(l));
    let priority = assignment
        .endpoints
        .iter()
        .map(|l| l.priority)
        .max()
        .map_or(1, |p| p + 1);
    let hold = Endpoint {
        address: Some(Address {
            address: Some(address::Address::EnvoyInternalAddress(
                EnvoyInternalAddress {
                    address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(
                        LISTENER.to_string(),
                    )),
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    };
    assignment.endpoints.push(LocalityLbEndpoints {
        priority,
        lb_endpoints: vec![LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(hold)),
            ..Default::default()
        }],
        ..Default::default()
    });
    let policy = assignment.policy.get_or_insert_with(Policy::default);
    policy.overprovisioning_factor = u32v(OVERPROVISIONING_FACTOR);
}

/// The internal listener behind the hold endpoint. It only forwards, to
/// [`ANSWER`]: Envoy turns a local reply to a gRPC request (the direct
/// 503 included) into a trailers-only HTTP 200 that mulligan.attempt never
/// sees, deciding on the request's `content-type` before any filter runs; an
/// upstream 503 passes on as it is. A gRPC request goes without its
/// `content-type` and with [`GRPC_HEADER`], so its answer still reads as
/// gRPC's.
pub fn hold_listener() -> Listener {
    let forward = || {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(ANSWER.to_string())),
            ..Default::default()
        })
    };
    let mut grpc = catch_all(forward());
    if let Some(m) = grpc.r#match.as_mut() {
        m.grpc = Some(route_match::GrpcRouteMatchOptions {});
    }
    grpc.request_headers_to_remove = vec![GRPC_MARKER_HEADER.to_string()];
    grpc.request_headers_to_add = vec![set_header(GRPC_HEADER, "1")];
    let mut other = catch_all(forward());
    other.request_headers_to_remove = vec![GRPC_HEADER.to_string()];
    internal_listener(LISTENER, hold_hcm(LISTENER, vec![grpc, other]))
}

/// The hold's answer: 503 "no healthy upstream"; to a gRPC request, 503
/// with `grpc-status: 14` and no body (a gRPC client reads UNAVAILABLE).
/// It answers once the whole request is in: over HTTP/2, an answer ending
/// before its request makes the hold reset the stream, and that reset
/// ends the request at once while mulligan.attempt holds the 503. A request
/// larger or slower than [`HOLD_BUFFER_BYTES`] / [`HOLD_REQUEST_TIMEOUT`]
/// gets the 503 at once.
pub fn hold_answer_listener() -> Listener {
    let action = route::Action::DirectResponse(DirectResponseAction {
        status: 503,
        body: Some(inline(HOLD_BODY)),
        ..Default::default()
    });
    let mut hcm = hold_hcm(ANSWER, vec![catch_all(action)]);
    hcm.request_timeout = Some(duration(HOLD_REQUEST_TIMEOUT));
    hcm.local_reply_config = Some(hold_answer_replies());
    let buffer = Buffer {
        max_request_bytes: u32v(HOLD_BUFFER_BYTES),
    };
    hcm.http_filters
        .insert(0, http_filter(envoy::BUFFER, pack(&buffer)));
    internal_listener(ANSWER, hcm)
}

/// Every local reply of the hold's answer (a request too large or too slow
/// included) is the hold's 503, the gRPC form to a gRPC request.
fn hold_answer_replies() -> LocalReplyConfig {
    let grpc = ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::HeaderFilter(HeaderFilter {
                header: Some(HeaderMatcher {
                    name: GRPC_HEADER.to_string(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                    ..Default::default()
                }),
            })),
        }),
        status_code: u32v(503),
        body: Some(inline("")),
        headers_to_add: vec![
            set_header("grpc-status", "14"),
            set_header("grpc-message", HOLD_BODY),
        ],
        ..Default::default()
    };
    let comparison = ComparisonFilter {
        op: comparison_filter::Op::Ge as i32,
        value: Some(RuntimeUInt32 {
            default_value: 400,
            runtime_key: format!("{ANSWER}.min_status"),
        }),
    };
    let other = ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
                comparison: Some(comparison),
            })),
        }),
        status_code: u32v(503),
        body: Some(inline(HOLD_BODY)),
        ..Default::default()
    };
    LocalReplyConfig {
        mappers: vec![grpc, other],
        ..Default::default()
    }
}

/// The cluster from the hold endpoint to [`hold_answer_listener`].
pub fn hold_answer_cluster() -> Cluster {
    internal_cluster(ANSWER, ANSWER)
}

/// The hold as a cluster: its one endpoint is [`hold_listener`]. An
/// aggregate lists it after the app's cluster, so it takes a request only
/// when the app's endpoints cannot.
pub fn hold_cluster() -> Cluster {
    internal_cluster(HOLD_CLUSTER, LISTENER)
}

/// A static cluster `name` whose one endpoint is the internal listener
/// `listener`.
fn internal_cluster(name: &str, listener: &str) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let address = Address {
        address: Some(address::Address::EnvoyInternalAddress(
            EnvoyInternalAddress {
                address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(
                    listener.to_string(),
                )),
                ..Default::default()
            },
        )),
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(address),
            ..Default::default()
        })),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(HOLD_CONNECT_TIMEOUT)),
        circuit_breakers: Some(super::cluster::in_flight_breakers()),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A route taking every path.
fn catch_all(action: route::Action) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

/// An HTTP connection manager with one virtual host of `routes`, and the
/// router.
fn hold_hcm(name: &str, routes: Vec<Route>) -> HttpConnectionManager {
    let route_config = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
        http_filters: vec![http_filter(envoy::ROUTER, pack(&Router::default()))],
        ..Default::default()
    }
}

/// An internal listener `name` (no address) running `hcm`.
fn internal_listener(name: &str, hcm: HttpConnectionManager) -> Listener {
    Listener {
        name: name.to_string(),
        listener_specifier: Some(listener::ListenerSpecifier::InternalListener(
            listener::InternalListenerConfig {},
        )),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: envoy::HCM.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
