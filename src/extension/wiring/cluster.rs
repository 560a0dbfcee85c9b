//! The app cluster's settings for the decide wiring (outlier detection on
//! local-origin failures only, no panic routing, a retry circuit breaker
//! that leaves the limit to mulligan's budget), the aggregate that gives an
//! EDS cluster its hold, and mulligan's own cluster.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{
            circuit_breakers::Thresholds,
            cluster::{ClusterDiscoveryType, CommonLbConfig, CustomClusterType, LbPolicy},
            CircuitBreakers, Cluster, OutlierDetection,
        },
        core::v3::{
            address, socket_address, Address, Http1ProtocolOptions, Http2ProtocolOptions,
            SocketAddress,
        },
        endpoint::v3::{
            lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
        },
    },
    extensions::{
        clusters::aggregate::v3::ClusterConfig,
        upstreams::http::v3::{http_protocol_options, HttpProtocolOptions},
    },
    r#type::v3::Percent,
};
use prost::Message;

use super::{
    duration, envoy, hold, install_upstream_filters, pack, u32v, MulliganAddress, WiringError,
};
use crate::{extension::policy::Settings, names};

/// The cluster's retry circuit breaker: high, so mulligan's budget (not
/// Envoy's default of 3 concurrent retries) is what limits retries. A
/// retry keeps its place until its request ends, a held one included, so
/// it is as high as [`IN_FLIGHT_CIRCUIT`].
pub const MAX_RETRIES_CIRCUIT: u32 = IN_FLIGHT_CIRCUIT;
/// Requests, pending requests and connections a wired cluster and
/// mulligan's own let in flight at once (Envoy's default: 1,024 each).
/// Every held request is one request in flight on the app's cluster (its
/// failed attempt, whose answer waits; over HTTP/1.1 a connection too) and
/// one ext_proc stream on mulligan's, for as long as it is held: the
/// breakers fit `hold.max_held` (10,000 by default) five times over, so a
/// full hold still leaves room for the traffic that is not held, and a
/// burst past the limit meets mulligan's `held_limit`, not Envoy's breaker.
pub const IN_FLIGHT_CIRCUIT: u32 = 50_000;
/// Connecting to mulligan's gRPC port.
pub const MULLIGAN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A bare cluster `name` with an inline load assignment, wired with
/// `settings`: what the generated files print the cluster's parts from.
pub fn wired_inline_cluster(name: &str, settings: &Settings) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_string(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A cluster with no protocol options always wires.
    let _ = install_cluster(&mut cluster, settings);
    cluster
}

/// Wires an app cluster: upstream filters (merged into any existing
/// HttpProtocolOptions), outlier detection on local-origin failures only,
/// panic threshold 0, the retry circuit breaker, and, for clusters with an
/// inline load assignment, the hold endpoint.
pub fn install_cluster(cluster: &mut Cluster, settings: &Settings) -> Result<(), WiringError> {
    let mut options = protocol_options(cluster)?;
    install_upstream_filters(&mut options.http_filters, settings);
    cluster
        .typed_extension_protocol_options
        .insert(envoy::HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
    install_endpoint_health(cluster);
    install_breakers(cluster);
    if let Some(assignment) = cluster.load_assignment.as_mut() {
        hold::install_hold_endpoint(assignment);
    }
    Ok(())
}

/// The cluster's HttpProtocolOptions, HTTP/1.1 to the pods when it names
/// no protocol.
fn protocol_options(cluster: &Cluster) -> Result<HttpProtocolOptions, WiringError> {
    let mut options = match cluster
        .typed_extension_protocol_options
        .get(envoy::HTTP_PROTOCOL_OPTIONS)
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
    Ok(options)
}

/// Outlier detection on local-origin failures, and no panic routing: with
/// no healthy endpoint the request goes to the hold.
fn install_endpoint_health(cluster: &mut Cluster) {
    cluster.outlier_detection = Some(outlier_detection());
    let lb = cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default);
    lb.healthy_panic_threshold = Some(Percent { value: 0.0 });
}

/// The suffix of the name an EDS cluster keeps as the aggregate's app member
/// (the aggregate takes the cluster's own name).
pub const APP_MEMBER_SUFFIX: &str = "/mulligan_app";
/// Envoy's name of the aggregate cluster type.
const AGGREGATE: &str = "envoy.clusters.aggregate";

/// An EDS cluster, wired: the aggregate, and the app member when the input
/// was Envoy Gateway's cluster (not an aggregate installed before).
pub struct EdsWired {
    pub aggregate: Cluster,
    pub app: Option<Cluster>,
}

/// Wires an EDS cluster without touching its endpoints: the cluster, renamed
/// `NAME/mulligan_app` (still asking EDS for `NAME`), becomes the first
/// member of an aggregate named `NAME`, the hold cluster its second. Routes,
/// stats and `xds.cluster_name` keep the name `NAME`; the router runs the
/// aggregate's upstream filters and retry circuit breaker (the route's
/// cluster's), and the app member keeps its endpoints' health settings.
pub fn install_eds_cluster(
    cluster: &Cluster,
    settings: &Settings,
) -> Result<EdsWired, WiringError> {
    let mut options = protocol_options(cluster)?;
    if is_aggregate(cluster) {
        let mut aggregate = cluster.clone();
        install_upstream_filters(&mut options.http_filters, settings);
        aggregate
            .typed_extension_protocol_options
            .insert(envoy::HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
        return Ok(EdsWired {
            aggregate,
            app: None,
        });
    }
    let mut app = cluster.clone();
    app.name = format!("{}{APP_MEMBER_SUFFIX}", cluster.name);
    let eds = app.eds_cluster_config.get_or_insert_with(Default::default);
    if eds.service_name.is_empty() {
        eds.service_name = cluster.name.clone();
    }
    app.typed_extension_protocol_options
        .insert(envoy::HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
    install_endpoint_health(&mut app);
    install_breakers(&mut app);
    install_upstream_filters(&mut options.http_filters, settings);
    let members = ClusterConfig {
        clusters: vec![app.name.clone(), hold::HOLD_CLUSTER.to_string()],
    };
    let mut aggregate = Cluster {
        name: cluster.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: AGGREGATE.to_string(),
            typed_config: Some(pack(&members)),
        })),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: cluster.connect_timeout,
        per_connection_buffer_limit_bytes: cluster.per_connection_buffer_limit_bytes,
        circuit_breakers: cluster.circuit_breakers.clone(),
        metadata: cluster.metadata.clone(),
        typed_extension_protocol_options: [(
            envoy::HTTP_PROTOCOL_OPTIONS.to_string(),
            pack(&options),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    install_endpoint_health(&mut aggregate);
    aggregate.outlier_detection = None;
    install_breakers(&mut aggregate);
    Ok(EdsWired {
        aggregate,
        app: Some(app),
    })
}

/// Whether `cluster` is an aggregate this wiring installed (its last member
/// the hold).
pub fn is_aggregate(cluster: &Cluster) -> bool {
    match &cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::ClusterType(t)) if t.name == AGGREGATE => t
            .typed_config
            .as_ref()
            .and_then(|any| ClusterConfig::decode(any.value.as_slice()).ok())
            .is_some_and(|c| c.clusters.last().map(String::as_str) == Some(hold::HOLD_CLUSTER)),
        _ => false,
    }
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

/// The retry breaker, set; the in-flight ones ([`IN_FLIGHT_CIRCUIT`])
/// where the cluster sets none: a limit the cluster already has is its
/// operator's choice and stays.
fn install_breakers(cluster: &mut Cluster) {
    let breakers = cluster
        .circuit_breakers
        .get_or_insert_with(Default::default);
    // Priority 0 (DEFAULT) is the one app traffic uses.
    if !breakers.thresholds.iter().any(|t| t.priority == 0) {
        breakers.thresholds.push(Thresholds::default());
    }
    let in_flight = in_flight_thresholds();
    for t in breakers.thresholds.iter_mut().filter(|t| t.priority == 0) {
        t.max_retries = u32v(MAX_RETRIES_CIRCUIT);
        t.max_connections = t.max_connections.or(in_flight.max_connections);
        t.max_pending_requests = t.max_pending_requests.or(in_flight.max_pending_requests);
        t.max_requests = t.max_requests.or(in_flight.max_requests);
    }
}

/// The breakers of a cluster whose requests can be held (the hold's own,
/// mulligan's, whose streams are held requests): [`IN_FLIGHT_CIRCUIT`]
/// requests, pending requests and connections.
pub fn in_flight_breakers() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![in_flight_thresholds()],
        ..Default::default()
    }
}

fn in_flight_thresholds() -> Thresholds {
    Thresholds {
        max_connections: u32v(IN_FLIGHT_CIRCUIT),
        max_pending_requests: u32v(IN_FLIGHT_CIRCUIT),
        max_requests: u32v(IN_FLIGHT_CIRCUIT),
        ..Default::default()
    }
}

/// ext_proc streams Envoy opens on one connection to mulligan. When many
/// holds end at once, Envoy closes each of their streams (a RST_STREAM,
/// a WINDOW_UPDATE): spread over connections of this many streams, no
/// connection queues more of those than [`MULLIGAN_CONTROL_FRAMES`].
pub const MULLIGAN_STREAMS_PER_CONNECTION: u32 = 1_000;
/// Control frames Envoy may queue to one connection to mulligan before
/// it takes the peer for a flood and closes the connection, failing every
/// stream on it (Envoy's default: 1,000): a few per stream, for every
/// stream of a connection ending at once.
pub const MULLIGAN_CONTROL_FRAMES: u32 = 4 * MULLIGAN_STREAMS_PER_CONNECTION;

/// Envoy's HTTP/2 to mulligan: see [`MULLIGAN_STREAMS_PER_CONNECTION`].
fn mulligan_http2() -> Http2ProtocolOptions {
    Http2ProtocolOptions {
        max_concurrent_streams: u32v(MULLIGAN_STREAMS_PER_CONNECTION),
        max_outbound_control_frames: u32v(MULLIGAN_CONTROL_FRAMES),
        ..Default::default()
    }
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
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(mulligan_http2())),
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
        name: names::CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(MULLIGAN_CONNECT_TIMEOUT)),
        circuit_breakers: Some(in_flight_breakers()),
        typed_extension_protocol_options: [(
            envoy::HTTP_PROTOCOL_OPTIONS.to_string(),
            pack(&options),
        )]
        .into_iter()
        .collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: names::CLUSTER.to_string(),
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
