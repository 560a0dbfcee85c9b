//! The app cluster's settings for the decide wiring (outlier detection on
//! local-origin failures only, no panic routing, a retry circuit breaker
//! that leaves the limit to mulligan's budget), and mulligan's own cluster.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{
            circuit_breakers::Thresholds, cluster::CommonLbConfig, Cluster, OutlierDetection,
        },
        core::v3::{
            address, socket_address, Address, Http1ProtocolOptions, Http2ProtocolOptions,
            SocketAddress,
        },
        endpoint::v3::{
            lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
        },
    },
    extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions},
    r#type::v3::Percent,
};
use prost::Message;

use super::{
    duration, envoy, hold, install_upstream_filters, pack, u32v, MulliganAddress, WiringError,
};
use crate::{extension::policy::Settings, names};

/// The cluster's retry circuit breaker: high, so mulligan's budget (not
/// Envoy's default of 3 concurrent retries) is what limits retries.
pub const MAX_RETRIES_CIRCUIT: u32 = 1024;
/// Connecting to mulligan's gRPC port.
pub const MULLIGAN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Wires an app cluster: upstream filters (merged into any existing
/// HttpProtocolOptions), outlier detection on local-origin failures only,
/// panic threshold 0, the retry circuit breaker, and, for clusters with an
/// inline load assignment, the hold endpoint.
pub fn install_cluster(cluster: &mut Cluster, settings: &Settings) -> Result<(), WiringError> {
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
    install_upstream_filters(&mut options.http_filters, settings);
    cluster
        .typed_extension_protocol_options
        .insert(envoy::HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
    cluster.outlier_detection = Some(outlier_detection());
    let lb = cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default);
    lb.healthy_panic_threshold = Some(Percent { value: 0.0 });
    install_max_retries(cluster);
    if let Some(assignment) = cluster.load_assignment.as_mut() {
        hold::install_hold_endpoint(assignment);
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
        name: names::CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(MULLIGAN_CONNECT_TIMEOUT)),
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
