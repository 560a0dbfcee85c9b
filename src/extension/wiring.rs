//! The [1/4] wiring as pure xDS transforms: every name and number mulligan
//! installs into Envoy Gateway's output lives in this file.
//!
//! Each `install_*` function is idempotent: it finds what it installed
//! before by name and replaces it, so output fed back in comes out equal.

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        config::{
            accesslog::v3::{
                access_log_filter::FilterSpecifier, comparison_filter, AccessLogFilter,
                ComparisonFilter, HeaderFilter, StatusCodeFilter,
            },
            cluster::v3::{
                circuit_breakers::Thresholds, cluster::CommonLbConfig, Cluster, OutlierDetection,
            },
            core::v3::{
                address, data_source, envoy_internal_address::AddressNameSpecifier, grpc_service,
                header_value_option::HeaderAppendAction, socket_address, Address, DataSource,
                EnvoyInternalAddress, GrpcService, HeaderValue, HeaderValueOption,
                Http1ProtocolOptions, Http2ProtocolOptions, RuntimeUInt32, SocketAddress,
                TypedExtensionConfig,
            },
            endpoint::v3::{
                cluster_load_assignment::Policy, lb_endpoint, ClusterLoadAssignment, Endpoint,
                LbEndpoint, LocalityLbEndpoints,
            },
            listener::v3::{filter, listener, Filter, FilterChain, Listener},
            route::v3::{
                header_matcher::HeaderMatchSpecifier, retry_policy, route, route_action,
                route_match, DirectResponseAction, HeaderMatcher, RetryPolicy, Route, RouteAction,
                RouteConfiguration, RouteMatch, VirtualHost,
            },
        },
        extensions::{
            common::matching::v3::ExtensionWithMatcher,
            filters::{
                http::{
                    buffer::v3::Buffer,
                    composite::v3::{Composite, ExecuteFilterAction},
                    ext_proc::v3::{ExternalProcessor, ProcessingMode},
                    header_mutation::v3::{HeaderMutation, Mutations},
                    router::v3::Router,
                    upstream_codec::v3::UpstreamCodec,
                },
                network::http_connection_manager::v3::{
                    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
                    HttpFilter, LocalReplyConfig, ResponseMapper,
                },
            },
            retry::host::previous_hosts::v3::PreviousHostsPredicate,
            upstreams::http::v3::{http_protocol_options, HttpProtocolOptions},
        },
        r#type::{
            matcher::v3::{
                string_matcher::MatchPattern, HttpRequestHeaderMatchInput,
                HttpResponseHeaderMatchInput, StringMatcher,
            },
            v3::Percent,
        },
    },
    google::protobuf::{Any, UInt32Value},
};
use prost::{Message, Name};

use crate::extension::policy::Settings;

/// The xDS matcher types the composite filters are built from.
mod xds {
    pub use envoy_types::pb::xds::{
        core::v3::TypedExtensionConfig,
        r#type::matcher::v3::{
            matcher::{
                matcher_list::{
                    predicate::{single_predicate, MatchType, PredicateList, SinglePredicate},
                    FieldMatcher, Predicate,
                },
                on_match, MatcherList, MatcherType, OnMatch,
            },
            regex_matcher,
            string_matcher::MatchPattern,
            Matcher, RegexMatcher, StringMatcher,
        },
    };
}

/// Upstream filter on each attempt: ext_proc, only for a retry (the gate)
/// or a 5xx response.
pub const ATTEMPT_FILTER: &str = "mulligan.attempt";
/// Upstream filter removing the retry header from app responses, so only
/// mulligan can ask Envoy for a retry, and the attempt count from requests,
/// so the pod sees what it sees without mulligan.
pub const STRIP_FILTER: &str = "mulligan.strip";
/// Downstream filter on the final response: ext_proc, only for 5xx.
pub const FINAL_FILTER: &str = "mulligan.final";
/// mulligan's own gRPC cluster, which both ext_proc filters call.
pub const MULLIGAN_CLUSTER: &str = "mulligan";
/// The internal listener behind the priority-1 hold endpoint of every wired
/// cluster; it forwards to [`HOLD_ANSWER`].
pub const HOLD_LISTENER: &str = "mulligan_hold";
/// The internal listener (and the cluster to it) answering for the hold
/// endpoint: a 503 that is an upstream answer to [`HOLD_LISTENER`].
pub const HOLD_ANSWER: &str = "mulligan_hold_answer";
/// The request header that makes Envoy answer a request the gRPC way
/// (`application/grpc...`), which the hold endpoint removes.
const GRPC_MARKER_HEADER: &str = "content-type";
/// Tells the hold's answer that the request was gRPC (set by the hold
/// endpoint, never taken from anyone else).
const HOLD_GRPC_HEADER: &str = "x-mulligan-hold-grpc";
/// The hold's 503 body (`grpc-message` for gRPC), Envoy's own words.
const HOLD_BODY: &str = "no healthy upstream";
/// How much of a request body the hold's answer waits for (Envoy's default
/// buffer limit, above which it does not retry anyway).
const HOLD_BUFFER_BYTES: u32 = 1024 * 1024;
/// How long the hold's answer waits for the whole request.
const HOLD_REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Connecting to an internal listener: never slow, only bounded.
const HOLD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The response header by which mulligan asks Envoy to retry an attempt.
pub const RETRY_HEADER: &str = "x-mulligan-retry";
/// Headers no client may send: one would choose an endpoint (Envoy's
/// `override_host` header), the others would speak for mulligan.
pub const CLIENT_HEADERS_REMOVED: [&str; 3] = [
    "x-gateway-destination-endpoint",
    RETRY_HEADER,
    "x-mulligan-attempt",
];
/// The attempt number Envoy adds to each attempt's request when the
/// virtual host has `include_request_attempt_count` (the gate reads it).
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";
/// The request header of an HTTP/1.1 upgrade (WebSocket), which
/// `mulligan.attempt` never matches.
pub const UPGRADE_HEADER: &str = "upgrade";
/// [`ATTEMPT_COUNT_HEADER`] values of a retry: 2 and above.
pub const RETRY_ATTEMPT_REGEX: &str = "[2-9]|[1-9][0-9]+";
/// The name of the composite filters' ext_proc action.
const ACTION_NAME: &str = "mulligan";
/// gRPC metadata telling mulligan which filter is calling.
pub const PHASE_HEADER: &str = "x-mulligan-phase";
/// Status prefix on which the composite filters call ext_proc.
pub const FAILED_STATUS_PREFIX: &str = "5";
/// Route retry triggers; Envoy's own 5xx triggers are dropped on purpose:
/// they would resend POSTs that reached an app.
pub const RETRY_ON: &str = "connect-failure,refused-stream,reset-before-request,retriable-headers";
/// How often Envoy may re-pick a host that `previous_hosts` rejects
/// (drawing is cheap; each retry should really go somewhere new).
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 20;
/// Envoy's pause between attempts: short, since mulligan (not the clock)
/// decides when an endpoint is worth another try.
pub const RETRY_BACK_OFF_BASE: Duration = Duration::from_millis(10);
pub const RETRY_BACK_OFF_MAX: Duration = Duration::from_millis(100);
/// How long Envoy waits for mulligan's first answer before going on.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_millis(200);
/// The cluster's retry circuit breaker: high, so mulligan's budget (not
/// Envoy's default of 3 concurrent retries) is what limits retries.
pub const MAX_RETRIES_CIRCUIT: u32 = 1024;
/// P0 takes all traffic while any of its hosts is healthy.
pub const OVERPROVISIONING_FACTOR: u32 = 100_000;
pub const MULLIGAN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// What mulligan needs to judge a failed attempt (request headers and body
/// are not sent: only these attributes).
pub const ATTEMPT_ATTRIBUTES: [&str; 7] = [
    "response.code",
    "upstream.address",
    "xds.cluster_name",
    "upstream.request_attempt_count",
    "request.method",
    "request.id",
    "request.headers['idempotency-key']",
];
/// What the gate is sent with a retry's request headers: the request id
/// that ties it to the earlier attempts mulligan judged.
pub const RETRY_REQUEST_ATTRIBUTES: [&str; 1] = ["request.id"];
/// For the final response: why Envoy answered as it did (a local "no
/// healthy upstream" versus the app's 503) and the endpoint that answered.
pub const FINAL_ATTRIBUTES: [&str; 7] = [
    "response.code",
    "response.code_details",
    "response.flags",
    "upstream.address",
    "xds.cluster_name",
    "request.method",
    "request.id",
];

const UPSTREAM_CODEC: &str = "envoy.filters.http.upstream_codec";
const ROUTER: &str = "envoy.filters.http.router";
const BUFFER: &str = "envoy.filters.http.buffer";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// Where Envoy reaches mulligan's gRPC port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulliganAddress {
    pub host: String,
    pub port: u16,
}

/// Why a resource could not be wired; it is then left as it was.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("cluster {cluster}: its HttpProtocolOptions do not decode: {source}")]
    ProtocolOptions {
        cluster: String,
        source: prost::DecodeError,
    },
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn typed(name: &str, config: Any) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(config),
    }
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// The route retry policy: Envoy retries connect failures and whatever
/// mulligan marks with the retry header. A per-try timeout set by Envoy
/// Gateway (BackendTrafficPolicy) is kept: it is the user's choice.
pub fn retry_policy(settings: &Settings, previous: Option<&RetryPolicy>) -> RetryPolicy {
    let predicate = retry_policy::RetryHostPredicate {
        name: PREVIOUS_HOSTS.to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            pack(&PreviousHostsPredicate {}),
        )),
    };
    RetryPolicy {
        retry_on: RETRY_ON.to_string(),
        num_retries: u32v(settings.num_retries),
        per_try_timeout: previous.and_then(|p| p.per_try_timeout),
        retriable_headers: vec![HeaderMatcher {
            name: RETRY_HEADER.to_string(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("1".to_string())),
                ignore_case: false,
            })),
            ..Default::default()
        }],
        retry_host_predicate: vec![predicate],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(RETRY_BACK_OFF_BASE)),
            max_interval: Some(duration(RETRY_BACK_OFF_MAX)),
        }),
        ..Default::default()
    }
}

/// Installs the retry policy on a forwarding route, and removes the
/// [`CLIENT_HEADERS_REMOVED`] from its requests; returns the clusters it
/// forwards to (empty for redirects and direct responses, left untouched).
pub fn install_route(route: &mut Route, settings: &Settings) -> Vec<String> {
    let Some(route::Action::Route(action)) = route.action.as_mut() else {
        return Vec::new();
    };
    action.retry_policy = Some(retry_policy(settings, action.retry_policy.as_ref()));
    let clusters = route_clusters(action);
    for name in CLIENT_HEADERS_REMOVED {
        if !route.request_headers_to_remove.iter().any(|h| h == name) {
            route.request_headers_to_remove.push(name.to_string());
        }
    }
    clusters
}

/// Turns the gate on for a virtual host: Envoy then adds
/// [`ATTEMPT_COUNT_HEADER`] to every attempt of every route of it. Only for
/// a virtual host whose forwarding routes are all wired (their clusters'
/// `mulligan.strip` removes the header before the pod); see
/// docs/envoy-gateway.md.
pub fn install_attempt_count(vhost: &mut VirtualHost) {
    vhost.include_request_attempt_count = true;
}

/// The clusters a forwarding route sends to (none for other routes).
pub fn forwarded_clusters(route: &Route) -> Vec<String> {
    match route.action.as_ref() {
        Some(route::Action::Route(action)) => route_clusters(action),
        _ => Vec::new(),
    }
}

fn route_clusters(action: &envoy_types::pb::envoy::config::route::v3::RouteAction) -> Vec<String> {
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) => vec![name.clone()],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| c.name.clone()).collect()
        }
        _ => Vec::new(),
    }
}

/// One ext_proc call to mulligan: its role (`phase`), which headers it is
/// sent, the attributes it gets, and how long mulligan may hold its answer.
struct Call<'a> {
    phase: &'a str,
    /// Request headers SEND (the gate) or SKIP (a response is judged).
    request_headers: bool,
    request_attributes: &'a [&'a str],
    response_attributes: &'a [&'a str],
    max_hold: Option<Duration>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|a| a.to_string()).collect()
}

/// The ext_proc filter of a [`Call`], as a composite filter's action.
fn ext_proc_action(call: &Call) -> xds::TypedExtensionConfig {
    let ext_proc = ExternalProcessor {
        grpc_service: Some(GrpcService {
            initial_metadata: vec![HeaderValue {
                key: PHASE_HEADER.to_string(),
                value: call.phase.to_string(),
                ..Default::default()
            }],
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: MULLIGAN_CLUSTER.to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        failure_mode_allow: true,
        message_timeout: Some(duration(MESSAGE_TIMEOUT)),
        max_message_timeout: call.max_hold.map(duration),
        processing_mode: Some(ProcessingMode {
            request_header_mode: if call.request_headers { SEND } else { SKIP },
            response_header_mode: SEND,
            request_trailer_mode: SKIP,
            response_trailer_mode: SKIP,
            ..Default::default()
        }),
        request_attributes: strings(call.request_attributes),
        response_attributes: strings(call.response_attributes),
        ..Default::default()
    };
    let action = ExecuteFilterAction {
        typed_config: Some(typed("envoy.filters.http.ext_proc", pack(&ext_proc))),
        ..Default::default()
    };
    xds_typed(ACTION_NAME, pack(&action))
}

/// ext_proc's `ProcessingMode.HeaderSendMode` values.
const SEND: i32 = 1;
const SKIP: i32 = 2;

/// A composite filter calling mulligan on the first of `matchers` that
/// matches, and opening nothing when none does.
fn composite(matchers: Vec<xds::FieldMatcher>) -> Any {
    pack(&ExtensionWithMatcher {
        xds_matcher: Some(xds::Matcher {
            matcher_type: Some(xds::MatcherType::MatcherList(xds::MatcherList { matchers })),
            on_no_match: None,
        }),
        extension_config: Some(typed(
            "envoy.filters.http.composite",
            pack(&Composite::default()),
        )),
        ..Default::default()
    })
}

/// A matcher: when `input` (named `name`) matches `pattern`, make `call`.
fn when(name: &str, input: Any, pattern: xds::MatchPattern, call: &Call) -> xds::FieldMatcher {
    use xds::{single_predicate, MatchType, Predicate, SinglePredicate};
    let predicate = SinglePredicate {
        input: Some(xds_typed(name, input)),
        matcher: Some(single_predicate::Matcher::ValueMatch(xds::StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        })),
    };
    xds::FieldMatcher {
        predicate: Some(Predicate {
            match_type: Some(MatchType::SinglePredicate(predicate)),
        }),
        on_match: Some(xds::OnMatch {
            on_match: Some(xds::on_match::OnMatch::Action(ext_proc_action(call))),
            keep_matching: false,
        }),
    }
}

/// Matches a response whose status starts with [`FAILED_STATUS_PREFIX`].
fn on_failed_status(call: &Call) -> xds::FieldMatcher {
    let input = HttpResponseHeaderMatchInput {
        header_name: ":status".to_string(),
    };
    let prefix = xds::MatchPattern::Prefix(FAILED_STATUS_PREFIX.to_string());
    when("status", pack(&input), prefix, call)
}

/// Matches a retry: an attempt whose [`ATTEMPT_COUNT_HEADER`] is 2 or more.
fn on_retry(call: &Call) -> xds::FieldMatcher {
    let input = HttpRequestHeaderMatchInput {
        header_name: ATTEMPT_COUNT_HEADER.to_string(),
    };
    let regex = xds::MatchPattern::SafeRegex(xds::RegexMatcher {
        regex: RETRY_ATTEMPT_REGEX.to_string(),
        engine_type: Some(xds::regex_matcher::EngineType::GoogleRe2(
            xds::regex_matcher::GoogleRe2 {},
        )),
    });
    when("attempt", pack(&input), regex, call)
}

/// `matcher`, for requests that are not an upgrade (WebSocket): Envoy 1.40
/// crashes (SIGSEGV) when an ext_proc upstream filter sees the 5xx answer
/// to one, so an upgrade is left to Envoy alone.
fn unless_upgrade(matcher: xds::FieldMatcher) -> xds::FieldMatcher {
    use xds::{single_predicate, MatchType, Predicate, PredicateList, SinglePredicate};
    let input = HttpRequestHeaderMatchInput {
        header_name: UPGRADE_HEADER.to_string(),
    };
    let any_value = xds::MatchPattern::SafeRegex(xds::RegexMatcher {
        regex: ".*".to_string(),
        engine_type: Some(xds::regex_matcher::EngineType::GoogleRe2(
            xds::regex_matcher::GoogleRe2 {},
        )),
    });
    let upgrade = Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(xds_typed("upgrade", pack(&input))),
            matcher: Some(single_predicate::Matcher::ValueMatch(xds::StringMatcher {
                match_pattern: Some(any_value),
                ignore_case: false,
            })),
        })),
    };
    let not_upgrade = Predicate {
        match_type: Some(MatchType::NotMatcher(Box::new(upgrade))),
    };
    let predicate = Predicate {
        match_type: Some(MatchType::AndMatcher(PredicateList {
            predicate: vec![not_upgrade, matcher.predicate.unwrap_or_default()],
        })),
    };
    xds::FieldMatcher {
        predicate: Some(predicate),
        on_match: matcher.on_match,
    }
}

/// `mulligan.attempt`: the gate on every retry (role `retry`: it sees the
/// retry's request headers, and its answer), then a failed first attempt
/// (role `attempt`: its response only); never for an upgrade.
fn attempt_filter(settings: &Settings) -> Any {
    let retry = Call {
        phase: "retry",
        request_headers: true,
        request_attributes: &RETRY_REQUEST_ATTRIBUTES,
        response_attributes: &ATTEMPT_ATTRIBUTES,
        max_hold: Some(settings.max_hold),
    };
    let attempt = Call {
        phase: "attempt",
        request_headers: false,
        request_attributes: &[],
        response_attributes: &ATTEMPT_ATTRIBUTES,
        max_hold: Some(settings.max_hold),
    };
    composite(vec![
        unless_upgrade(on_retry(&retry)),
        unless_upgrade(on_failed_status(&attempt)),
    ])
}

/// `mulligan.final`: a 5xx on its way to the client.
fn final_filter() -> Any {
    let call = Call {
        phase: "final",
        request_headers: false,
        request_attributes: &[],
        response_attributes: &FINAL_ATTRIBUTES,
        max_hold: None,
    };
    composite(vec![on_failed_status(&call)])
}

fn xds_typed(name: &str, config: Any) -> xds::TypedExtensionConfig {
    xds::TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(config),
    }
}

fn strip_filter() -> Any {
    use envoy_types::pb::envoy::config::common::mutation_rules::v3::{
        header_mutation::Action, HeaderMutation as Mutation,
    };
    let remove = |name: &str| Mutation {
        action: Some(Action::Remove(name.to_string())),
    };
    pack(&HeaderMutation {
        mutations: Some(Mutations {
            request_mutations: vec![remove(ATTEMPT_COUNT_HEADER)],
            response_mutations: vec![remove(RETRY_HEADER)],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The upstream filter chain: mulligan's two filters right before the
/// codec, after any filter Envoy Gateway put there.
fn install_upstream_filters(filters: &mut Vec<HttpFilter>, settings: &Settings) {
    filters.retain(|f| f.name != ATTEMPT_FILTER && f.name != STRIP_FILTER);
    let codec = match filters.iter().position(|f| f.name == UPSTREAM_CODEC) {
        Some(at) => at,
        None => {
            filters.push(http_filter(UPSTREAM_CODEC, pack(&UpstreamCodec {})));
            filters.len() - 1
        }
    };
    filters.insert(codec, http_filter(STRIP_FILTER, strip_filter()));
    filters.insert(codec, http_filter(ATTEMPT_FILTER, attempt_filter(settings)));
}

/// Wires an app cluster: upstream filters (merged into any existing
/// HttpProtocolOptions), outlier detection on local-origin failures only,
/// panic threshold 0, the retry circuit breaker, and, for clusters with an
/// inline load assignment, the hold endpoint.
pub fn install_cluster(cluster: &mut Cluster, settings: &Settings) -> Result<(), WiringError> {
    let mut options = match cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        Some(any) => HttpProtocolOptions::decode(any.value.as_slice()).map_err(|source| {
            WiringError::ProtocolOptions {
                cluster: cluster.name.clone(),
                source,
            }
        })?,
        None => HttpProtocolOptions::default(),
    };
    if options.upstream_protocol_options.is_none() {
        options.upstream_protocol_options = Some(explicit_http1());
    }
    install_upstream_filters(&mut options.http_filters, settings);
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
    cluster.outlier_detection = Some(outlier_detection());
    let lb = cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default);
    lb.healthy_panic_threshold = Some(Percent { value: 0.0 });
    install_max_retries(cluster);
    if let Some(assignment) = cluster.load_assignment.as_mut() {
        install_hold_endpoint(assignment);
    }
    Ok(())
}

fn explicit_http1() -> http_protocol_options::UpstreamProtocolOptions {
    use http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig};
    http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
        protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
            Http1ProtocolOptions::default(),
        )),
    })
}

fn outlier_detection() -> OutlierDetection {
    OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: u32v(1),
        enforcing_consecutive_local_origin_failure: u32v(100),
        enforcing_consecutive_5xx: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(0),
        enforcing_success_rate: u32v(0),
        enforcing_local_origin_success_rate: u32v(0),
        enforcing_failure_percentage: u32v(0),
        enforcing_failure_percentage_local_origin: u32v(0),
        interval: Some(duration(Duration::from_millis(100))),
        base_ejection_time: Some(duration(Duration::from_millis(100))),
        max_ejection_time: Some(duration(Duration::from_secs(1))),
        max_ejection_percent: u32v(100),
        ..Default::default()
    }
}

fn install_max_retries(cluster: &mut Cluster) {
    let breakers = cluster
        .circuit_breakers
        .get_or_insert_with(Default::default);
    // Priority 0 (DEFAULT) is the one app traffic uses.
    match breakers.thresholds.iter_mut().find(|t| t.priority == 0) {
        Some(t) => t.max_retries = u32v(MAX_RETRIES_CIRCUIT),
        None => breakers.thresholds.push(Thresholds {
            max_retries: u32v(MAX_RETRIES_CIRCUIT),
            ..Default::default()
        }),
    }
}

fn is_hold(locality: &LocalityLbEndpoints) -> bool {
    locality
        .lb_endpoints
        .iter()
        .any(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => matches!(
                ep.address.as_ref().and_then(|a| a.address.as_ref()),
                Some(address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
                    address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(n)),
                    ..
                })) if n == HOLD_LISTENER
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
                        HOLD_LISTENER.to_string(),
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

/// Puts [`FINAL_FILTER`] right before the router of every HTTP connection
/// manager of `listener` whose routes are in `route_configs`. Returns
/// whether anything changed. An HCM that does not decode is left alone.
pub fn install_listener(listener: &mut Listener, wired: &dyn Fn(&str) -> bool) -> bool {
    let mut changed = false;
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut());
    for chain in chains {
        for f in chain.filters.iter_mut().filter(|f| f.name == HCM) {
            changed |= install_final_filter(f, wired);
        }
    }
    changed
}

fn install_final_filter(hcm_filter: &mut Filter, wired: &dyn Fn(&str) -> bool) -> bool {
    let Some(filter::ConfigType::TypedConfig(any)) = hcm_filter.config_type.as_mut() else {
        return false;
    };
    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
        return false;
    };
    let name = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name.as_str(),
        Some(RouteSpecifier::RouteConfig(rc)) => rc.name.as_str(),
        _ => return false,
    };
    if !wired(name) {
        return false;
    }
    hcm.http_filters.retain(|f| f.name != FINAL_FILTER);
    let Some(at) = hcm.http_filters.iter().position(|f| f.name == ROUTER) else {
        return false;
    };
    hcm.http_filters
        .insert(at, http_filter(FINAL_FILTER, final_filter()));
    *any = pack(&hcm);
    true
}

/// mulligan's gRPC cluster (HTTP/2). A hostname resolves by DNS (a
/// Kubernetes Service), an IP address is static.
pub fn mulligan_cluster(addr: &MulliganAddress) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    };
    let kind = if addr.host.parse::<std::net::IpAddr>().is_ok() {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    let socket = SocketAddress {
        address: addr.host.clone(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port.into())),
        ..Default::default()
    };
    Cluster {
        name: MULLIGAN_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(MULLIGAN_CONNECT_TIMEOUT)),
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options))]
            .into_iter()
            .collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: MULLIGAN_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(socket)),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The internal listener behind the hold endpoint. It only forwards, to
/// [`HOLD_ANSWER`]: Envoy turns a local reply to a gRPC request (the direct
/// 503 included) into a trailers-only HTTP 200 that mulligan.attempt never
/// sees, deciding on the request's `content-type` before any filter runs; an
/// upstream 503 passes on as it is. A gRPC request goes without its
/// `content-type` and with [`HOLD_GRPC_HEADER`], so its answer still reads as
/// gRPC's.
pub fn hold_listener() -> Listener {
    let forward = || {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                HOLD_ANSWER.to_string(),
            )),
            ..Default::default()
        })
    };
    let mut grpc = catch_all(forward());
    if let Some(m) = grpc.r#match.as_mut() {
        m.grpc = Some(route_match::GrpcRouteMatchOptions {});
    }
    grpc.request_headers_to_remove = vec![GRPC_MARKER_HEADER.to_string()];
    grpc.request_headers_to_add = vec![set_header(HOLD_GRPC_HEADER, "1")];
    let mut other = catch_all(forward());
    other.request_headers_to_remove = vec![HOLD_GRPC_HEADER.to_string()];
    internal_listener(HOLD_LISTENER, hold_hcm(HOLD_LISTENER, vec![grpc, other]))
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
    let mut hcm = hold_hcm(HOLD_ANSWER, vec![catch_all(action)]);
    hcm.request_timeout = Some(duration(HOLD_REQUEST_TIMEOUT));
    hcm.local_reply_config = Some(hold_answer_replies());
    let buffer = Buffer {
        max_request_bytes: u32v(HOLD_BUFFER_BYTES),
    };
    hcm.http_filters
        .insert(0, http_filter(BUFFER, pack(&buffer)));
    internal_listener(HOLD_ANSWER, hcm)
}

/// Every local reply of the hold's answer (a request too large or too slow
/// included) is the hold's 503, the gRPC form to a gRPC request.
fn hold_answer_replies() -> LocalReplyConfig {
    let grpc = ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::HeaderFilter(HeaderFilter {
                header: Some(HeaderMatcher {
                    name: HOLD_GRPC_HEADER.to_string(),
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
            runtime_key: format!("{HOLD_ANSWER}.min_status"),
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

/// `text` as an inline data source.
fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    }
}

/// Header `key: value`, replacing any `key` already there.
fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The cluster from the hold endpoint to [`hold_answer_listener`].
pub fn hold_answer_cluster() -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let address = Address {
        address: Some(address::Address::EnvoyInternalAddress(
            EnvoyInternalAddress {
                address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(
                    HOLD_ANSWER.to_string(),
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
        name: HOLD_ANSWER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(HOLD_CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: HOLD_ANSWER.to_string(),
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
        http_filters: vec![http_filter(ROUTER, pack(&Router::default()))],
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
                name: HCM.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
