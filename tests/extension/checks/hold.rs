//! The hold: the priority-1 endpoint, its two internal listeners and the
//! cluster between them.

use super::*;

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

/// The HCM and routes of an internal listener with one virtual host.
pub(super) fn internal_hcm(l: &Listener, name: &str) -> (HttpConnectionManager, Vec<Route>) {
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
pub(super) fn forwards_to(r: &Route) -> Option<ClusterSpecifier> {
    match &r.action {
        Some(route::Action::Route(a)) => a.cluster_specifier.clone(),
        _ => None,
    }
}

/// The hold endpoint forwards to its answer, a gRPC request without
/// `content-type` (what makes Envoy answer the gRPC way) and marked
/// `x-mulligan-hold-grpc: 1`, any other without that mark.
pub(super) fn check_hold_listeners(hold: &Listener, answer: &Listener) {
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
pub(super) fn check_hold_answer(answer: &Listener) {
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
pub(super) fn check_hold_answer_cluster(c: &Cluster) {
    check_internal_cluster(c, names::hold::ANSWER, names::hold::ANSWER);
}

/// The aggregates' fallback member: a static cluster of one endpoint, the
/// internal listener `mulligan_hold`.
pub(super) fn check_hold_cluster(c: &Cluster) {
    check_internal_cluster(c, "mulligan_hold", names::hold::LISTENER);
}

fn check_internal_cluster(c: &Cluster, name: &str, listener: &str) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    assert_eq!(c.name, name);
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
        Some(AddressNameSpecifier::ServerListenerName(listener.into()))
    );
}
