//! The sandbox's Envoy: the reference bootstrap (the decide wiring) as
//! rendered by [`crate::render::standalone`], with its baseline listener
//! turned into Envoy Gateway's: the retry policy and the cluster Envoy
//! Gateway's translator emits by default, on the same pods.

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::Ports;
use crate::render;

/// The listener with mulligan (the reference bootstrap's name).
pub const MULLIGAN_LISTENER: &str = "mulligan";
/// The listener with Envoy Gateway's default retries.
pub const GATEWAY_LISTENER: &str = "envoy_gateway";
/// Its cluster: Envoy Gateway's, on the sandbox's pods.
const GATEWAY_CLUSTER: &str = "envoy_gateway";

/// The bootstrap, as JSON (which Envoy reads as YAML).
pub(super) fn render(pods: &[SocketAddr], mulligan_grpc_port: u16, ports: &Ports) -> String {
    let yaml = render::standalone(
        pods,
        mulligan_grpc_port,
        &[
            ("ADMIN_PORT", ports.envoy_admin.to_string()),
            ("LISTEN_PORT", ports.mulligan_listener.to_string()),
            ("BASELINE_PORT", ports.gateway_listener.to_string()),
        ],
    );
    let mut v: Value = serde_yaml_ng::from_str(&yaml).expect("reference bootstrap is YAML");
    let listeners = v["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let baseline = listeners
        .iter_mut()
        .find(|l| l["name"] == "baseline")
        .expect("the reference bootstrap has a baseline listener");
    into_gateway_listener(baseline);
    let clusters = v["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    clusters.retain(|c| c["name"] != "app_baseline");
    clusters.push(gateway_cluster(pods));
    v.to_string()
}

/// The baseline listener, renamed, its route on Envoy Gateway's cluster
/// with Envoy Gateway's default retry policy.
fn into_gateway_listener(l: &mut Value) {
    l["name"] = json!(GATEWAY_LISTENER);
    let retry = crate::rollout::proxies::envoy_gateway_retry_policy();
    for f in l["filter_chains"][0]["filters"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let hcm = &mut f["typed_config"];
        hcm["stat_prefix"] = json!(GATEWAY_LISTENER);
        let vhs = hcm["route_config"]["virtual_hosts"].as_array_mut();
        for vh in vhs.into_iter().flatten() {
            for r in vh["routes"].as_array_mut().into_iter().flatten() {
                r["route"]["cluster"] = json!(GATEWAY_CLUSTER);
                r["route"]["retry_policy"] = retry.clone();
            }
        }
    }
}

/// Envoy Gateway's cluster for a route backend (least request, its
/// circuit breakers and buffer limit), with the pods as static endpoints
/// where Envoy Gateway would send them over EDS.
fn gateway_cluster(pods: &[SocketAddr]) -> Value {
    let path = crate::envoy_gateway_fixtures().join("xds/retry.clusters.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let clusters: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut c = clusters
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .expect("Envoy Gateway's retry fixture has a cluster");
    let obj = c.as_object_mut().expect("cluster object");
    obj.remove("edsClusterConfig");
    obj.insert("name".into(), json!(GATEWAY_CLUSTER));
    obj.insert("type".into(), json!("STATIC"));
    // The reference bootstrap's connect timeout: a pod that is gone refuses
    // at once on loopback either way.
    obj.insert("connectTimeout".into(), json!("1s"));
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address":
                {"address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    obj.insert(
        "load_assignment".into(),
        json!({"cluster_name": GATEWAY_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]}),
    );
    c
}
