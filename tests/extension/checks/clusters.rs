//! The app clusters (upstream filters, outlier, panic and breaker
//! settings, the hold endpoint, or for an EDS cluster the aggregate with
//! the hold cluster) and mulligan's own cluster.

use super::*;

pub(super) fn check_clusters(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    let eds: Vec<&Cluster> = req
        .clusters
        .iter()
        .filter(|c| e.clusters.contains(&c.name.as_str()) && is_eds(c))
        .collect();
    assert_eq!(
        resp.clusters.len(),
        req.clusters.len() + eds.len() + 3,
        "added: an app member per wired EDS cluster, mulligan's cluster, the hold's and its answer's"
    );
    for (a, b) in resp.clusters.iter().zip(&req.clusters) {
        if !e.clusters.contains(&b.name.as_str()) {
            assert_eq!(a, b, "cluster {} must be untouched", b.name);
        } else if is_eds(b) {
            let app = format!("{}/mulligan_app", b.name);
            let app = resp
                .clusters
                .iter()
                .find(|c| c.name == app)
                .unwrap_or_else(|| panic!("{app} added"));
            check_eds_cluster(b, a, app, e);
        } else {
            check_cluster(b, a, e);
        }
    }
    let n = resp.clusters.len();
    check_hold_answer_cluster(&resp.clusters[n - 1]);
    check_hold_cluster(&resp.clusters[n - 2]);
    let m = &resp.clusters[n - 3];
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

fn is_eds(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
}

pub(super) fn check_cluster(before: &Cluster, after: &Cluster, e: &Expect) {
    let mut after = after.clone();
    check_filters(before, &after, e);
    check_health(before, &mut after);
    check_breaker(before, &mut after);
    if let (Some(a), Some(b)) = (
        after.load_assignment.as_ref(),
        before.load_assignment.as_ref(),
    ) {
        assert_hold(b, a);
        after.load_assignment = before.load_assignment.clone();
    }
    after.typed_extension_protocol_options = before.typed_extension_protocol_options.clone();
    assert_eq!(
        &after, before,
        "{}: more than the documented wiring changed",
        before.name
    );
}

/// An EDS cluster becomes an aggregate of the same name (the upstream
/// filters, the retry breaker, no panic routing) whose members are the app
/// cluster, renamed and still asking EDS for the old name, and the hold
/// cluster; the app member keeps Envoy Gateway's settings but for the
/// endpoint health ones.
pub(super) fn check_eds_cluster(before: &Cluster, aggregate: &Cluster, app: &Cluster, e: &Expect) {
    use envoy_types::pb::envoy::{
        config::cluster::v3::cluster::{ClusterDiscoveryType, LbPolicy},
        extensions::clusters::aggregate::v3::ClusterConfig,
    };
    assert_eq!(aggregate.name, before.name);
    let Some(ClusterDiscoveryType::ClusterType(t)) = &aggregate.cluster_discovery_type else {
        panic!("{}: an aggregate", before.name)
    };
    assert_eq!(t.name, "envoy.clusters.aggregate");
    let members = ClusterConfig::decode(t.typed_config.as_ref().expect("config").value.as_slice())
        .expect("aggregate config");
    assert_eq!(
        members.clusters,
        [app.name.clone(), "mulligan_hold".to_string()]
    );
    assert_eq!(aggregate.lb_policy, LbPolicy::ClusterProvided as i32);
    check_filters(before, aggregate, e);
    let mut rest = aggregate.clone();
    check_breaker(before, &mut rest);
    let lb = rest.common_lb_config.take().expect("lb config");
    assert_eq!(lb.healthy_panic_threshold.map(|p| p.value), Some(0.0));
    assert!(
        rest.outlier_detection.is_none(),
        "outlier detection is the app member's"
    );
    assert_eq!(rest.connect_timeout, before.connect_timeout);
    assert_eq!(rest.metadata, before.metadata);
    assert_eq!(
        rest.per_connection_buffer_limit_bytes,
        before.per_connection_buffer_limit_bytes
    );

    let mut app = app.clone();
    let service = app.eds_cluster_config.as_mut().expect("eds config");
    assert_eq!(
        service.service_name,
        eds_name(before),
        "the app member asks EDS for the old name"
    );
    service.service_name = before
        .eds_cluster_config
        .as_ref()
        .map(|c| c.service_name.clone())
        .unwrap_or_default();
    app.name = before.name.clone();
    check_health(before, &mut app);
    check_breaker(before, &mut app);
    let mut want = hpo(before).unwrap_or_default();
    if want.upstream_protocol_options.is_none() {
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig;
        want.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
            },
        ));
    }
    assert_eq!(
        hpo(&app),
        Some(want),
        "{}: the app member keeps Envoy Gateway's options and runs no mulligan filter",
        before.name
    );
    app.typed_extension_protocol_options = before.typed_extension_protocol_options.clone();
    assert_eq!(
        &app, before,
        "{}: more than the documented wiring changed on the app member",
        before.name
    );
}

/// The name the cluster's endpoints come under from EDS.
fn eds_name(c: &Cluster) -> String {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.name.clone())
}

/// `mulligan.attempt` and `mulligan.strip` right before the codec, after
/// Envoy Gateway's own upstream filters; the rest of the options as Envoy
/// Gateway had them (HTTP/1.1 when it named no protocol).
fn check_filters(before: &Cluster, after: &Cluster, e: &Expect) {
    let mut options = hpo(after).expect("HttpProtocolOptions installed");
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
}

/// Outlier detection on local-origin failures only, and no panic routing;
/// both taken out of `after`.
fn check_health(before: &Cluster, after: &mut Cluster) {
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
    after.outlier_detection = before.outlier_detection.clone();
}

/// The circuit breakers: retries at 50,000; requests, pending requests
/// and connections at 50,000 where the cluster set none, as Envoy Gateway
/// sets none (its own stay). Put back as they were in `after`.
fn check_breaker(before: &Cluster, after: &mut Cluster) {
    let was = before
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.iter().find(|t| t.priority == 0))
        .cloned()
        .unwrap_or_default();
    let cb = after.circuit_breakers.as_mut().expect("breakers");
    let t = cb
        .thresholds
        .iter_mut()
        .find(|t| t.priority == 0)
        .expect("default priority");
    assert_eq!(t.max_retries.take().map(|m| m.value), Some(50_000));
    t.max_retries = was.max_retries;
    for (name, now, then) in [
        ("max_requests", &mut t.max_requests, was.max_requests),
        (
            "max_pending_requests",
            &mut t.max_pending_requests,
            was.max_pending_requests,
        ),
        (
            "max_connections",
            &mut t.max_connections,
            was.max_connections,
        ),
    ] {
        let want = then.map_or(50_000, |v| v.value);
        assert_eq!(now.take().map(|m| m.value), Some(want), "{name}");
        *now = then;
    }
}
