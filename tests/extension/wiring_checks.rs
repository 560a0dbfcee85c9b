//! Field-by-field checks of what the server returns against what it was
//! given: the documented wiring (docs/envoy-gateway.md, [1/4]) and nothing
//! else. The numbers here are the documented ones, written out, not read
//! from mulligan's constants.

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

fn strip_marker(route: &mut Route, before: &Route) {
    if let Some(m) = route.metadata.as_mut() {
        let marker = m.filter_metadata.remove("mulligan.dev");
        if marker.is_some()
            && m.filter_metadata.is_empty()
            && m.typed_filter_metadata.is_empty()
            && before.metadata.is_none()
        {
            route.metadata = None;
        }
    }
}

fn check_routes(req: &PostTranslateModifyRequest, resp: &PostTranslateModifyResponse, e: &Expect) {
    assert_eq!(resp.routes.len(), req.routes.len());
    let mut seen = 0;
    for (a, b) in resp.routes.iter().zip(&req.routes) {
        assert_eq!(a.virtual_hosts.len(), b.virtual_hosts.len());
        let (mut a_cfg, mut b_cfg) = (a.clone(), b.clone());
        for (va, vb) in a_cfg.virtual_hosts.iter_mut().zip(&mut b_cfg.virtual_hosts) {
            check_attempt_count(va, vb, e);
            for (ra, rb) in va.routes.iter_mut().zip(&mut vb.routes) {
                strip_marker(ra, rb);
                if !e.routes.contains(&rb.name.as_str()) {
                    continue;
                }
                seen += 1;
                let added = ra
                    .request_headers_to_remove
                    .split_off(rb.request_headers_to_remove.len());
                assert_eq!(
                    added,
                    names::header::FROM_CLIENTS_REMOVED,
                    "{}: client-sent headers removed",
                    rb.name
                );
                let (Some(route::Action::Route(aa)), Some(route::Action::Route(ab))) =
                    (ra.action.as_mut(), rb.action.as_mut())
                else {
                    panic!("{}: not a forwarding route", rb.name);
                };
                let p = aa
                    .retry_policy
                    .take()
                    .unwrap_or_else(|| panic!("{}: no retry policy", rb.name));
                assert_eq!(
                    p.retry_on,
                    "connect-failure,refused-stream,reset-before-request,retriable-headers"
                );
                assert_eq!(p.num_retries.map(|n| n.value), Some(e.num_retries));
                assert_eq!(p.retriable_headers.len(), 1);
                let h = &p.retriable_headers[0];
                assert_eq!(h.name, names::RETRY_HEADER);
                let Some(HeaderMatchSpecifier::StringMatch(m)) = &h.header_match_specifier else {
                    panic!("header match")
                };
                assert_eq!(m.match_pattern, Some(EnvoyMatchPattern::Exact("1".into())));
                assert_eq!(p.retry_host_predicate.len(), 1);
                assert_eq!(
                    p.retry_host_predicate[0].name,
                    "envoy.retry_host_predicates.previous_hosts"
                );
                assert_eq!(p.host_selection_retry_max_attempts, 20);
                let back_off = p.retry_back_off.as_ref().expect("back-off");
                assert_eq!(
                    back_off.base_interval,
                    Some(Duration {
                        seconds: 0,
                        nanos: 10_000_000
                    })
                );
                assert_eq!(
                    back_off.max_interval,
                    Some(Duration {
                        seconds: 0,
                        nanos: 100_000_000
                    })
                );
                assert!(p.retriable_status_codes.is_empty() && p.retry_priority.is_none());
                let before = ab.retry_policy.take();
                assert_eq!(
                    p.per_try_timeout,
                    before.as_ref().and_then(|b| b.per_try_timeout),
                    "per-try timeout kept"
                );
            }
        }
        assert_eq!(
            a_cfg, b_cfg,
            "route config {}: more than the retry policy changed",
            b.name
        );
    }
    assert_eq!(seen, e.routes.len(), "wired routes found");
}

/// A virtual host with a wired route gets `include_request_attempt_count`
/// (the gate's input) only when every route of it that forwards is wired;
/// otherwise it is left as it was (docs/envoy-gateway.md).
fn check_attempt_count(after: &mut VirtualHost, before: &VirtualHost, e: &Expect) {
    let wired = |r: &Route| e.routes.contains(&r.name.as_str());
    let forwards = |r: &Route| matches!(r.action, Some(route::Action::Route(_)));
    let gated =
        before.routes.iter().any(wired) && before.routes.iter().filter(|r| forwards(r)).all(wired);
    assert_eq!(
        after.include_request_attempt_count,
        before.include_request_attempt_count || gated,
        "{}: include_request_attempt_count",
        before.name
    );
    after.include_request_attempt_count = before.include_request_attempt_count;
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

/// One matcher of a composite filter: the header it reads, what it looks
/// for, and the ext_proc it runs.
struct Gated {
    header: String,
    /// `request` or `response`: which headers the input reads.
    side: &'static str,
    pattern: MatchPattern,
    /// Never for a request with an `upgrade` header (WebSocket).
    unless_upgrade: bool,
    ext_proc: ExternalProcessor,
}

/// The matchers of a composite filter, in order.
fn gated_ext_procs(f: &HttpFilter) -> Vec<Gated> {
    let any = typed_any(f);
    assert!(any
        .type_url
        .ends_with("envoy.extensions.common.matching.v3.ExtensionWithMatcher"));
    let ewm = ExtensionWithMatcher::decode(any.value.as_slice()).expect("matcher");
    assert_eq!(
        ewm.extension_config.as_ref().map(|c| c.name.as_str()),
        Some("envoy.filters.http.composite")
    );
    let matcher = ewm.xds_matcher.expect("xds_matcher");
    assert!(matcher.on_no_match.is_none(), "no match: no stream");
    let Some(MatcherType::MatcherList(list)) = matcher.matcher_type else {
        panic!("matcher list")
    };
    list.matchers.into_iter().map(gated).collect()
}

/// A single predicate's header, side and pattern.
fn single(p: Predicate) -> (String, &'static str, MatchPattern) {
    let Some(MatchType::SinglePredicate(single)) = p.match_type else {
        panic!("single predicate")
    };
    let input = single.input.and_then(|i| i.typed_config).expect("input");
    let (header, side) = if input.type_url.ends_with("HttpRequestHeaderMatchInput") {
        let i = HttpRequestHeaderMatchInput::decode(input.value.as_slice()).expect("input");
        (i.header_name, "request")
    } else {
        assert!(input.type_url.ends_with("HttpResponseHeaderMatchInput"));
        let i = HttpResponseHeaderMatchInput::decode(input.value.as_slice()).expect("input");
        (i.header_name, "response")
    };
    let Some(single_predicate::Matcher::ValueMatch(value)) = single.matcher else {
        panic!("value match")
    };
    assert!(!value.ignore_case);
    (header, side, value.match_pattern.expect("pattern"))
}

/// A matcher's predicate: a single one, or `and(not(an upgrade), single)`
/// (the `bool`).
fn predicate(p: Predicate) -> ((String, &'static str, MatchPattern), bool) {
    let Some(MatchType::AndMatcher(list)) = p.match_type else {
        return (single(p), false);
    };
    let [not, inner]: [Predicate; 2] = list.predicate.try_into().expect("two predicates");
    let Some(MatchType::NotMatcher(upgrade)) = not.match_type else {
        panic!("not an upgrade")
    };
    let (header, side, pattern) = single(*upgrade);
    assert_eq!((header.as_str(), side), ("upgrade", "request"));
    assert_eq!(regex(&pattern), ".*", "any value: the header is present");
    (single(inner), true)
}

fn gated(m: FieldMatcher) -> Gated {
    let ((header, side, pattern), unless_upgrade) = predicate(m.predicate.expect("predicate"));
    let on = m.on_match.expect("on_match");
    assert!(!on.keep_matching);
    let Some(on_match::OnMatch::Action(action)) = on.on_match else {
        panic!("action")
    };
    let action = ExecuteFilterAction::decode(action.typed_config.expect("action").value.as_slice())
        .expect("execute");
    let proc = action
        .typed_config
        .and_then(|t| t.typed_config)
        .expect("ext_proc");
    Gated {
        header,
        side,
        pattern,
        unless_upgrade,
        ext_proc: ExternalProcessor::decode(proc.value.as_slice()).expect("ext_proc"),
    }
}

fn regex(pattern: &MatchPattern) -> &str {
    match pattern {
        MatchPattern::SafeRegex(r) => {
            assert!(
                matches!(r.engine_type, Some(EngineType::GoogleRe2(_))),
                "RE2"
            );
            &r.regex
        }
        other => panic!("not a regex: {other:?}"),
    }
}

/// `mulligan.attempt`: first the gate on a retry, then a 5xx answer.
fn check_attempt_filter(f: &HttpFilter, max_hold_s: i64) {
    let m = gated_ext_procs(f);
    assert_eq!(m.len(), 2, "the retry gate, then the 5xx matcher");
    assert!(
        m[0].unless_upgrade && m[1].unless_upgrade,
        "an upgrade is Envoy's alone (an upgrade's 5xx seen here crashes Envoy 1.40)"
    );
    assert_eq!(
        (m[0].header.as_str(), m[0].side),
        (names::header::ATTEMPT_COUNT, "request")
    );
    assert_eq!(regex(&m[0].pattern), "[2-9]|[1-9][0-9]+");
    check_ext_proc(&m[0].ext_proc, names::phase::RETRY, Some(max_hold_s), 1);
    assert_eq!(
        m[0].ext_proc.request_attributes,
        names::attribute::RETRY_REQUEST
    );
    // The full list is compared with the reference bootstrap's in
    // reference.rs; here, what the safety rule cannot do without.
    let attributes = &m[0].ext_proc.response_attributes;
    for needed in [
        names::attribute::REQUEST_METHOD,
        names::attribute::REQUEST_ID,
        names::attribute::IDEMPOTENCY_KEY,
    ] {
        assert!(
            attributes.iter().any(|a| a == needed),
            "{needed}: {attributes:?}"
        );
    }
    assert_eq!((m[1].header.as_str(), m[1].side), (":status", "response"));
    assert_eq!(m[1].pattern, MatchPattern::Prefix("5".into()));
    check_ext_proc(&m[1].ext_proc, names::phase::ATTEMPT, Some(max_hold_s), 2);
    assert!(m[1].ext_proc.request_attributes.is_empty());
    assert_eq!(&m[1].ext_proc.response_attributes, attributes);
}

/// `mulligan.final`: a 5xx on its way to the client.
fn check_final_filter(f: &HttpFilter) {
    let m = gated_ext_procs(f);
    assert_eq!(m.len(), 1);
    assert!(!m[0].unless_upgrade, "mulligan.final sees every 5xx");
    assert_eq!((m[0].header.as_str(), m[0].side), (":status", "response"));
    assert_eq!(m[0].pattern, MatchPattern::Prefix("5".into()));
    check_ext_proc(&m[0].ext_proc, names::phase::FINAL, None, 2);
    assert!(m[0].ext_proc.request_attributes.is_empty());
    // The full list is compared with the reference bootstrap's in
    // reference.rs; here, what mulligan learns from: the status and the
    // endpoint that answered.
    let attributes = &m[0].ext_proc.response_attributes;
    for needed in [
        names::attribute::RESPONSE_CODE,
        names::attribute::UPSTREAM_ADDRESS,
    ] {
        assert!(
            attributes.iter().any(|a| a == needed),
            "{needed}: {attributes:?}"
        );
    }
}

/// `request_header_mode`: 1 SEND (the gate), 2 SKIP.
fn check_ext_proc(p: &ExternalProcessor, phase: &str, max_hold_s: Option<i64>, request_mode: i32) {
    let grpc = p.grpc_service.as_ref().expect("grpc");
    let Some(TargetSpecifier::EnvoyGrpc(g)) = &grpc.target_specifier else {
        panic!("envoy_grpc")
    };
    assert_eq!(g.cluster_name, names::CLUSTER);
    assert_eq!(grpc.initial_metadata.len(), 1);
    assert_eq!(
        (
            grpc.initial_metadata[0].key.as_str(),
            grpc.initial_metadata[0].value.as_str()
        ),
        (names::phase::HEADER, phase)
    );
    assert!(p.failure_mode_allow);
    assert_eq!(
        p.message_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 200_000_000
        })
    );
    assert_eq!(
        p.max_message_timeout,
        max_hold_s.map(|s| Duration {
            seconds: s,
            nanos: 0
        })
    );
    let mode = p.processing_mode.as_ref().expect("mode");
    assert_eq!(
        (mode.request_header_mode, mode.response_header_mode),
        (request_mode, 1),
        "{phase}: request headers, response SEND"
    );
    assert_eq!(
        (mode.request_body_mode, mode.response_body_mode),
        (0, 0),
        "no bodies"
    );
    assert_eq!(
        (mode.request_trailer_mode, mode.response_trailer_mode),
        (2, 2),
        "no trailers"
    );
}

fn check_clusters(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_eq!(
        resp.clusters.len(),
        req.clusters.len() + 2,
        "two clusters added: mulligan's, and the hold's to its answer"
    );
    for (a, b) in resp.clusters.iter().zip(&req.clusters) {
        if e.clusters.contains(&b.name.as_str()) {
            check_cluster(b, a, e);
        } else {
            assert_eq!(a, b, "cluster {} must be untouched", b.name);
        }
    }
    check_hold_answer_cluster(resp.clusters.last().expect("hold answer cluster"));
    let m = &resp.clusters[resp.clusters.len() - 2];
    assert_eq!(m.name, names::CLUSTER);
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let kind = if e.mulligan.2 {
        DiscoveryType::StrictDns
    } else {
        DiscoveryType::Static
    };
    assert_eq!(
        m.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(kind as i32))
    );
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(x)) =
        hpo(m).and_then(|h| h.upstream_protocol_options)
    else {
        panic!("mulligan HPO")
    };
    assert!(
        matches!(
            x.protocol_config,
            Some(ProtocolConfig::Http2ProtocolOptions(_))
        ),
        "mulligan speaks HTTP/2"
    );
    let ep = &m
        .load_assignment
        .as_ref()
        .expect("load assignment")
        .endpoints[0]
        .lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(ep)) = &ep.host_identifier else {
        panic!("endpoint")
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("socket")
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier),
        (
            e.mulligan.0,
            Some(socket_address::PortSpecifier::PortValue(e.mulligan.1))
        )
    );
}

fn check_cluster(before: &Cluster, after: &Cluster, e: &Expect) {
    let mut after = after.clone();
    let mut options = hpo(&after).expect("HttpProtocolOptions installed");
    let names: Vec<&str> = options
        .http_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let before_options = hpo(before);
    let mut want: Vec<String> = before_options
        .iter()
        .flat_map(|o| o.http_filters.iter().map(|f| f.name.clone()))
        .filter(|n| n != "envoy.filters.http.upstream_codec")
        .collect();
    want.extend(
        [
            names::filter::ATTEMPT,
            names::filter::STRIP,
            "envoy.filters.http.upstream_codec",
        ]
        .map(String::from),
    );
    assert_eq!(names, want, "{}: upstream filters", before.name);
    let at = names
        .iter()
        .position(|n| *n == names::filter::ATTEMPT)
        .expect("attempt");
    check_attempt_filter(&options.http_filters[at], e.max_hold_s);
    let strip = HeaderMutation::decode(typed_any(&options.http_filters[at + 1]).value.as_slice())
        .expect("strip");
    let m = strip.mutations.expect("mutations");
    assert_eq!(m.response_mutations.len(), 1);
    assert_eq!(m.request_mutations.len(), 1);
    assert_eq!(
        format!("{:?}", m.request_mutations[0].action),
        format!("Some(Remove({:?}))", names::header::ATTEMPT_COUNT)
    );
    assert_eq!(
        format!("{:?}", m.response_mutations[0].action),
        format!("Some(Remove({:?}))", names::RETRY_HEADER)
    );
    // Beyond the filters, the options are Envoy Gateway's (HTTP/1.1 when it had none).
    options.http_filters.retain(|f| {
        !f.name.starts_with("mulligan.")
            && (f.name != "envoy.filters.http.upstream_codec"
                || before_options
                    .as_ref()
                    .is_some_and(|o| !o.http_filters.is_empty()))
    });
    match before_options {
        Some(b) => assert_eq!(options, b, "{}: HttpProtocolOptions merged", before.name),
        None => {
            let Some(UpstreamProtocolOptions::ExplicitHttpConfig(x)) =
                &options.upstream_protocol_options
            else {
                panic!("explicit")
            };
            assert!(matches!(
                x.protocol_config,
                Some(ProtocolConfig::HttpProtocolOptions(_))
            ));
            options.upstream_protocol_options = None;
            assert_eq!(options, HttpProtocolOptions::default());
        }
    }
    let od = after.outlier_detection.take().expect("outlier detection");
    let v = |x: Option<envoy_types::pb::google::protobuf::UInt32Value>| x.map(|x| x.value);
    assert!(od.split_external_local_origin_errors);
    assert_eq!(v(od.consecutive_local_origin_failure), Some(1));
    assert_eq!(v(od.enforcing_consecutive_local_origin_failure), Some(100));
    for (name, x) in [
        ("5xx", od.enforcing_consecutive_5xx),
        ("gateway", od.enforcing_consecutive_gateway_failure),
        ("success rate", od.enforcing_success_rate),
        ("local success rate", od.enforcing_local_origin_success_rate),
        ("failure %", od.enforcing_failure_percentage),
        (
            "local failure %",
            od.enforcing_failure_percentage_local_origin,
        ),
    ] {
        assert_eq!(v(x), Some(0), "enforcing {name}");
    }
    assert_eq!(
        od.interval,
        Some(Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
    assert_eq!(
        od.base_ejection_time,
        Some(Duration {
            seconds: 0,
            nanos: 100_000_000
        })
    );
    assert_eq!(
        od.max_ejection_time,
        Some(Duration {
            seconds: 1,
            nanos: 0
        })
    );
    assert_eq!(v(od.max_ejection_percent), Some(100));
    let lb = after.common_lb_config.as_mut().expect("lb config");
    assert_eq!(
        lb.healthy_panic_threshold.take().map(|p| p.value),
        Some(0.0)
    );
    if before.common_lb_config.is_none() && *lb == Default::default() {
        after.common_lb_config = None;
    }
    let cb = after.circuit_breakers.as_mut().expect("breakers");
    let t = cb
        .thresholds
        .iter_mut()
        .find(|t| t.priority == 0)
        .expect("default priority");
    assert_eq!(t.max_retries.take().map(|m| m.value), Some(1024));
    t.max_retries = before
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.max_retries);
    if let (Some(a), Some(b)) = (
        after.load_assignment.as_ref(),
        before.load_assignment.as_ref(),
    ) {
        assert_hold(b, a);
        after.load_assignment = before.load_assignment.clone();
    }
    after.typed_extension_protocol_options = before.typed_extension_protocol_options.clone();
    after.outlier_detection = before.outlier_detection.clone();
    assert_eq!(
        &after, before,
        "{}: more than the documented wiring changed",
        before.name
    );
}

/// The hold endpoint one priority below the app's, and the
/// overprovisioning factor; nothing else.
pub fn assert_hold(before: &ClusterLoadAssignment, after: &ClusterLoadAssignment) {
    assert_eq!(after.endpoints.len(), before.endpoints.len() + 1);
    let hold = after.endpoints.last().expect("hold");
    let top = before
        .endpoints
        .iter()
        .map(|l| l.priority)
        .max()
        .unwrap_or(0);
    assert_eq!(hold.priority, top + 1);
    assert_eq!(hold.lb_endpoints.len(), 1);
    let Some(HostIdentifier::Endpoint(ep)) = &hold.lb_endpoints[0].host_identifier else {
        panic!("endpoint")
    };
    let Some(address::Address::EnvoyInternalAddress(internal)) =
        ep.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("internal address")
    };
    assert_eq!(
        internal.address_name_specifier,
        Some(AddressNameSpecifier::ServerListenerName(
            names::hold::LISTENER.into()
        ))
    );
    assert_eq!(
        after
            .policy
            .as_ref()
            .and_then(|p| p.overprovisioning_factor)
            .map(|f| f.value),
        Some(100_000)
    );
    let mut rest = after.clone();
    rest.endpoints.pop();
    if let Some(p) = rest.policy.as_mut() {
        p.overprovisioning_factor = before
            .policy
            .as_ref()
            .and_then(|p| p.overprovisioning_factor);
        if before.policy.is_none() && *p == Default::default() {
            rest.policy = None;
        }
    }
    assert_eq!(
        &rest, before,
        "{}: more than the hold changed",
        before.cluster_name
    );
}

/// Each HTTP connection manager in the listener, decoded, with where it is.
fn hcms(l: &Listener) -> Vec<HttpConnectionManager> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(|c| &c.filters)
        .filter(|f| f.name == "envoy.filters.network.http_connection_manager")
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => {
                Some(HttpConnectionManager::decode(a.value.as_slice()).expect("hcm"))
            }
            _ => None,
        })
        .collect()
}

fn without_final(l: &Listener) -> Listener {
    let mut l = l.clone();
    for chain in l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut())
    {
        for f in &mut chain.filters {
            if let Some(filter::ConfigType::TypedConfig(a)) = &mut f.config_type {
                if f.name == "envoy.filters.network.http_connection_manager" {
                    let mut h = HttpConnectionManager::decode(a.value.as_slice()).expect("hcm");
                    if h.http_filters
                        .iter()
                        .any(|x| x.name == names::filter::FINAL)
                    {
                        h.http_filters.retain(|x| x.name != names::filter::FINAL);
                        a.value = h.encode_to_vec();
                    }
                }
            }
        }
    }
    l
}

fn check_listeners(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_eq!(
        resp.listeners.len(),
        req.listeners.len() + 2,
        "two listeners added: the hold and its answer"
    );
    for (a, b) in resp.listeners.iter().zip(&req.listeners) {
        if !e.listeners.contains(&b.name.as_str()) {
            assert_eq!(a, b, "listener {} must be untouched", b.name);
            continue;
        }
        let wired: Vec<_> = hcms(a)
            .into_iter()
            .filter(|h| {
                h.http_filters
                    .iter()
                    .any(|f| f.name == names::filter::FINAL)
            })
            .collect();
        assert_eq!(wired.len(), 1, "{}: one HCM wired", b.name);
        let names: Vec<&str> = wired[0]
            .http_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let at = names
            .iter()
            .position(|n| *n == names::filter::FINAL)
            .expect("final");
        assert_eq!(
            names[at + 1],
            "envoy.filters.http.router",
            "{}: final right before the router",
            b.name
        );
        assert_eq!(
            names.iter().filter(|n| **n == names::filter::FINAL).count(),
            1
        );
        check_final_filter(&wired[0].http_filters[at]);
        let routes = match &wired[0].route_specifier {
            Some(RouteSpecifier::Rds(r)) => r.route_config_name.clone(),
            _ => panic!("rds"),
        };
        assert!(req.routes.iter().any(|c| c.name == routes));
        // Decoding and re-encoding an untouched HCM is lossless, so compare whole.
        let (a_plain, b_plain) = (without_final(a), b.clone());
        assert_eq!(
            hcms(&a_plain),
            hcms(&b_plain),
            "{}: HCMs beyond the final filter",
            b.name
        );
        let strip = |l: &Listener| {
            let mut l = l.clone();
            for c in l
                .filter_chains
                .iter_mut()
                .chain(l.default_filter_chain.as_mut())
            {
                c.filters
                    .retain(|f| f.name != "envoy.filters.network.http_connection_manager");
            }
            l
        };
        assert_eq!(strip(a), strip(b), "{}: beyond its HCMs", b.name);
    }
    let n = resp.listeners.len();
    check_hold_listeners(&resp.listeners[n - 2], &resp.listeners[n - 1]);
}

/// The HCM and routes of an internal listener with one virtual host.
fn internal_hcm(l: &Listener, name: &str) -> (HttpConnectionManager, Vec<Route>) {
    assert_eq!(l.name, name);
    assert!(matches!(
        l.listener_specifier,
        Some(ListenerSpecifier::InternalListener(_))
    ));
    assert!(l.address.is_none());
    let h = hcms(l).into_iter().next().expect("HCM");
    let Some(RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!("inline routes")
    };
    assert_eq!(rc.virtual_hosts.len(), 1);
    let routes = rc.virtual_hosts[0].routes.clone();
    (h, routes)
}

/// Where a route forwards to.
fn forwards_to(r: &Route) -> Option<ClusterSpecifier> {
    match &r.action {
        Some(route::Action::Route(a)) => a.cluster_specifier.clone(),
        _ => None,
    }
}

/// The hold endpoint forwards to its answer, a gRPC request without
/// `content-type` (what makes Envoy answer the gRPC way) and marked
/// `x-mulligan-hold-grpc: 1`, any other without that mark.
fn check_hold_listeners(hold: &Listener, answer: &Listener) {
    let to_answer = Some(ClusterSpecifier::Cluster(names::hold::ANSWER.into()));
    let (_, routes) = internal_hcm(hold, names::hold::LISTENER);
    assert_eq!(routes.len(), 2);
    let (grpc, other) = (&routes[0], &routes[1]);
    assert!(grpc.r#match.as_ref().is_some_and(|m| m.grpc.is_some()));
    assert_eq!(forwards_to(grpc), to_answer);
    assert_eq!(
        grpc.request_headers_to_remove,
        vec!["content-type".to_string()]
    );
    let marks: Vec<(String, String, i32)> = grpc
        .request_headers_to_add
        .iter()
        .filter_map(|o| {
            o.header
                .as_ref()
                .map(|h| (h.key.clone(), h.value.clone(), o.append_action))
        })
        .collect();
    assert_eq!(
        marks,
        vec![(names::hold::GRPC_HEADER.into(), "1".into(), 2)]
    );
    assert!(other.r#match.as_ref().is_some_and(|m| m.grpc.is_none()));
    assert_eq!(forwards_to(other), to_answer);
    assert_eq!(
        other.request_headers_to_remove,
        vec![names::hold::GRPC_HEADER.to_string()]
    );
    check_hold_answer(answer);
}

/// The answer: a direct 503 "no healthy upstream" once the request is in
/// (buffer filter, 1 MiB, 0.2 s), every local reply mapped to 503, the
/// gRPC form (`grpc-status: 14`, no body) to a marked request.
fn check_hold_answer(answer: &Listener) {
    let (h, routes) = internal_hcm(answer, names::hold::ANSWER);
    assert_eq!(routes.len(), 1);
    let Some(route::Action::DirectResponse(d)) = &routes[0].action else {
        panic!("direct response")
    };
    assert_eq!(d.status, 503);
    assert_eq!(
        format!("{:?}", d.body.as_ref().and_then(|b| b.specifier.clone())),
        r#"Some(InlineString("no healthy upstream"))"#
    );
    let names: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["envoy.filters.http.buffer", "envoy.filters.http.router"]
    );
    let buffer = Buffer::decode(typed_any(&h.http_filters[0]).value.as_slice()).expect("buffer");
    assert_eq!(buffer.max_request_bytes.map(|v| v.value), Some(1_048_576));
    assert_eq!(
        h.request_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 200_000_000
        })
    );
    let mappers = h.local_reply_config.expect("local replies").mappers;
    assert_eq!(mappers.len(), 2);
    assert!(mappers
        .iter()
        .all(|m| m.status_code.map(|c| c.value) == Some(503)));
    let grpc_headers: Vec<(String, String)> = mappers[0]
        .headers_to_add
        .iter()
        .filter_map(|o| o.header.as_ref().map(|h| (h.key.clone(), h.value.clone())))
        .collect();
    assert_eq!(
        grpc_headers,
        vec![
            ("grpc-status".to_string(), "14".to_string()),
            (
                "grpc-message".to_string(),
                "no healthy upstream".to_string()
            )
        ]
    );
    assert_eq!(
        format!(
            "{:?}",
            mappers[1].body.as_ref().and_then(|b| b.specifier.clone())
        ),
        r#"Some(InlineString("no healthy upstream"))"#
    );
}

/// A static cluster of one endpoint, the internal listener
/// `mulligan_hold_answer`, over Envoy's default HTTP/1.1.
fn check_hold_answer_cluster(c: &Cluster) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    assert_eq!(c.name, names::hold::ANSWER);
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
    );
    assert!(c.typed_extension_protocol_options.is_empty());
    let cla = c.load_assignment.as_ref().expect("endpoints");
    assert_eq!(cla.endpoints.len(), 1);
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    let Some(HostIdentifier::Endpoint(e)) = &cla.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!("endpoint")
    };
    let Some(address::Address::EnvoyInternalAddress(a)) =
        e.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("internal address")
    };
    assert_eq!(
        a.address_name_specifier,
        Some(AddressNameSpecifier::ServerListenerName(
            names::hold::ANSWER.into()
        ))
    );
}

/// Every message of the vendored `envoygateway.extension` package, with all
/// its fields set, decodes into the hand-declared Rust type and encodes back
/// to the same message: same field numbers, same types, nothing dropped.
pub fn wire_format_matches_vendored_proto() {
    use mulligan::extension::api as a;
    use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
    fn roundtrip<M: Message + Default>(bytes: &[u8]) -> Vec<u8> {
        M::decode(bytes).expect("decode").encode_to_vec()
    }
    let pool = super::xds::pool();
    type Check = (&'static str, fn(&[u8]) -> Vec<u8>);
    let checks: Vec<Check> = vec![
        ("ExtensionResource", roundtrip::<a::ExtensionResource>),
        (
            "PostRouteExtensionContext",
            roundtrip::<a::PostRouteExtensionContext>,
        ),
        (
            "PostVirtualHostExtensionContext",
            roundtrip::<a::PostVirtualHostExtensionContext>,
        ),
        (
            "PostClusterExtensionContext",
            roundtrip::<a::PostClusterExtensionContext>,
        ),
        (
            "PostEndpointsExtensionContext",
            roundtrip::<a::PostEndpointsExtensionContext>,
        ),
        (
            "PostHTTPListenerExtensionContext",
            roundtrip::<a::PostHTTPListenerExtensionContext>,
        ),
        (
            "PostTranslateExtensionContext",
            roundtrip::<a::PostTranslateExtensionContext>,
        ),
        (
            "PostRouteModifyRequest",
            roundtrip::<a::PostRouteModifyRequest>,
        ),
        (
            "PostRouteModifyResponse",
            roundtrip::<a::PostRouteModifyResponse>,
        ),
        (
            "PostClusterModifyRequest",
            roundtrip::<a::PostClusterModifyRequest>,
        ),
        (
            "PostClusterModifyResponse",
            roundtrip::<a::PostClusterModifyResponse>,
        ),
        (
            "PostEndpointsModifyRequest",
            roundtrip::<a::PostEndpointsModifyRequest>,
        ),
        (
            "PostEndpointsModifyResponse",
            roundtrip::<a::PostEndpointsModifyResponse>,
        ),
        (
            "PostVirtualHostModifyRequest",
            roundtrip::<a::PostVirtualHostModifyRequest>,
        ),
        (
            "PostVirtualHostModifyResponse",
            roundtrip::<a::PostVirtualHostModifyResponse>,
        ),
        (
            "PostHTTPListenerModifyRequest",
            roundtrip::<a::PostHTTPListenerModifyRequest>,
        ),
        (
            "PostHTTPListenerModifyResponse",
            roundtrip::<a::PostHTTPListenerModifyResponse>,
        ),
        (
            "PostTranslateModifyRequest",
            roundtrip::<a::PostTranslateModifyRequest>,
        ),
        (
            "PostTranslateModifyResponse",
            roundtrip::<a::PostTranslateModifyResponse>,
        ),
    ];
    // The server's byte-keeping twins, too.
    let raw_checks: Vec<Check> = vec![
        (
            "PostRouteModifyRequest",
            roundtrip::<a::raw::PostRouteModifyRequest>,
        ),
        (
            "PostRouteModifyResponse",
            roundtrip::<a::raw::PostRouteModifyResponse>,
        ),
        (
            "PostClusterModifyRequest",
            roundtrip::<a::raw::PostClusterModifyRequest>,
        ),
        (
            "PostClusterModifyResponse",
            roundtrip::<a::raw::PostClusterModifyResponse>,
        ),
        (
            "PostEndpointsModifyRequest",
            roundtrip::<a::raw::PostEndpointsModifyRequest>,
        ),
        (
            "PostEndpointsModifyResponse",
            roundtrip::<a::raw::PostEndpointsModifyResponse>,
        ),
        (
            "PostVirtualHostModifyRequest",
            roundtrip::<a::raw::PostVirtualHostModifyRequest>,
        ),
        (
            "PostVirtualHostModifyResponse",
            roundtrip::<a::raw::PostVirtualHostModifyResponse>,
        ),
        (
            "PostHTTPListenerModifyRequest",
            roundtrip::<a::raw::PostHTTPListenerModifyRequest>,
        ),
        (
            "PostHTTPListenerModifyResponse",
            roundtrip::<a::raw::PostHTTPListenerModifyResponse>,
        ),
        (
            "PostTranslateModifyRequest",
            roundtrip::<a::raw::PostTranslateModifyRequest>,
        ),
        (
            "PostTranslateModifyResponse",
            roundtrip::<a::raw::PostTranslateModifyResponse>,
        ),
    ];
    let in_package = pool
        .all_messages()
        .filter(|m| m.package_name() == "envoygateway.extension")
        .count();
    assert_eq!(
        in_package,
        checks.len(),
        "every vendored message has a Rust twin"
    );
    let service = pool
        .get_service_by_name("envoygateway.extension.EnvoyGatewayExtension")
        .expect("service");
    assert_eq!(service.methods().count(), 6);
    for (name, check) in checks.into_iter().chain(raw_checks) {
        let desc = pool
            .get_message_by_name(&format!("envoygateway.extension.{name}"))
            .expect("message");
        let mut msg = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let one = match field.kind() {
                Kind::Message(m) => {
                    // A nested message with a named field set, so it is not empty.
                    let mut inner = DynamicMessage::new(m.clone());
                    if let Some(f) = m
                        .fields()
                        .find(|f| f.kind() == Kind::String && !f.is_list())
                    {
                        inner.set_field(&f, Value::String(format!("{name}.{}", field.name())));
                    }
                    Value::Message(inner)
                }
                Kind::String => Value::String(field.name().to_string()),
                Kind::Bytes => Value::Bytes(field.name().as_bytes().to_vec().into()),
                other => panic!("{name}.{}: unexpected kind {other:?}", field.name()),
            };
            let value = if field.is_list() {
                Value::List(vec![one.clone(), one])
            } else {
                one
            };
            msg.set_field(&field, value);
        }
        let bytes = msg.encode_to_vec();
        let back = DynamicMessage::decode(desc, check(&bytes).as_slice()).expect("decode back");
        assert_eq!(back, msg, "{name}: the Rust type lost or changed a field");
        let _ = msg.descriptor();
    }
}
