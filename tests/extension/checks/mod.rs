//! Field-by-field checks of what the server returns against what it was
//! given: the documented wiring (docs/envoy-gateway.md) and nothing else,
//! one file per part of the wiring. Names come from `mulligan::names` (a
//! name is a contract with the code that reads Envoy's messages, not a
//! setting); the numbers are the documented ones, written out, not read
//! from mulligan's constants.

mod api;
mod clusters;
mod filters;
mod hold;
mod listeners;
mod routes;

pub use api::wire_format_matches_vendored_proto;
pub use hold::assert_hold;

use clusters::check_clusters;
use filters::{check_attempt_filter, check_final_filter};
use hold::{check_hold_answer_cluster, check_hold_cluster, check_hold_listeners};
use listeners::check_listeners;
use listeners::hcms;
use routes::check_routes;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster,
            core::v3::{
                address, envoy_internal_address::AddressNameSpecifier,
                grpc_service::TargetSpecifier, socket_address,
            },
            endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment},
            listener::v3::{filter, listener::ListenerSpecifier, Listener},
            route::v3::{
                header_matcher::HeaderMatchSpecifier, route, route_action::ClusterSpecifier, Route,
                VirtualHost,
            },
        },
        extensions::{
            common::matching::v3::ExtensionWithMatcher,
            filters::{
                http::{
                    buffer::v3::Buffer, composite::v3::ExecuteFilterAction,
                    ext_proc::v3::ExternalProcessor, header_mutation::v3::HeaderMutation,
                },
                network::http_connection_manager::v3::{
                    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
                    HttpFilter,
                },
            },
            upstreams::http::v3::{
                http_protocol_options::{
                    explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
                },
                HttpProtocolOptions,
            },
        },
        r#type::matcher::v3::{
            string_matcher::MatchPattern as EnvoyMatchPattern, HttpRequestHeaderMatchInput,
            HttpResponseHeaderMatchInput,
        },
    },
    google::protobuf::Duration,
    xds::r#type::matcher::v3::{
        matcher::{
            matcher_list::{
                predicate::{single_predicate, MatchType},
                FieldMatcher, Predicate,
            },
            on_match, MatcherType,
        },
        regex_matcher::EngineType,
        string_matcher::MatchPattern,
    },
};
use mulligan::{
    extension::api::{PostTranslateModifyRequest, PostTranslateModifyResponse},
    names,
};
use prost::Message;

const HPO: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub struct Expect<'a> {
    pub routes: &'a [&'a str],
    pub clusters: &'a [&'a str],
    pub listeners: &'a [&'a str],
    pub num_retries: u32,
    pub max_hold_s: i64,
    /// host, port, whether a hostname (STRICT_DNS).
    pub mulligan: (&'a str, u32, bool),
}

pub fn assert_unchanged(
    what: &str,
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
) {
    assert_eq!(resp.clusters, req.clusters, "{what}: clusters changed");
    assert_eq!(resp.secrets, req.secrets, "{what}: secrets changed");
    assert_eq!(resp.listeners, req.listeners, "{what}: listeners changed");
    assert_eq!(resp.routes, req.routes, "{what}: routes changed");
}

pub fn assert_wired(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_eq!(resp.secrets, req.secrets);
    check_routes(req, resp, e);
    check_clusters(req, resp, e);
    check_listeners(req, resp, e);
}

/// As [`assert_wired`], where PostRouteModify already ran: the routes also
/// carry its marker, and `before` is the request before that hook.
pub fn assert_wired_after_route_hook(
    before: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_wired(before, resp, e);
}

fn hpo(c: &Cluster) -> Option<HttpProtocolOptions> {
    c.typed_extension_protocol_options
        .get(HPO)
        .map(|a| HttpProtocolOptions::decode(a.value.as_slice()).expect("HPO"))
}

fn typed_any(f: &HttpFilter) -> &envoy_types::pb::google::protobuf::Any {
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(a)) => a,
        _ => panic!("{}: no typed config", f.name),
    }
}
