//! Envoy's endpoints from an EDS file, for tests where mulligan learns the
//! endpoints from a discovery source of its own (Kubernetes) and Envoy from
//! its control plane (Envoy Gateway's xDS). The file stands in for that
//! control plane: the test writes into it what Envoy Gateway would push for
//! the same EndpointSlices ([`gateway_health`]), when it chooses (typically
//! after mulligan has seen the change, as Envoy Gateway's translation and
//! push lag the API server).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde_json::json;
use serde_yaml_ng::Value;

/// How an Envoy endpoint is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No health status: Envoy treats it as healthy.
    Serving,
    /// `health_status: DRAINING`: no new request goes to it.
    Draining,
}

/// What Envoy Gateway makes of an EndpointSlice endpoint whose `serving`
/// and `terminating` conditions are set (`getIREndpointsFromEndpointSlice`,
/// v1.9; `ready` is then not read): one that is not serving is left out of
/// EDS altogether (a booting pod is unknown to Envoy), a serving one that
/// terminates is listed draining, any other is listed.
pub fn gateway_health(serving: bool, terminating: bool) -> Option<Health> {
    match (serving, terminating) {
        (false, _) => None,
        (true, true) => Some(Health::Draining),
        (true, false) => Some(Health::Serving),
    }
}

/// An EDS file in a directory of its own (Envoy watches the directory and
/// the file is replaced by a rename, as Envoy's path config source wants).
pub struct EdsFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl EdsFile {
    /// A file listing no endpoint for `cluster` yet (only the hold).
    pub fn new(cluster: &str) -> EdsFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eds.json");
        let file = EdsFile { dir, path };
        file.write(cluster, &[]);
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file: `cluster`'s endpoints at priority 0, and the
    /// reference wiring's hold endpoint (an internal listener) at priority 1.
    pub fn write(&self, cluster: &str, endpoints: &[(SocketAddr, Health)]) {
        let lb: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(a, h)| {
                let mut e = json!({"endpoint": {"address": {"socket_address": {
                    "address": a.ip().to_string(), "port_value": a.port()}}}});
                if *h == Health::Draining {
                    e["health_status"] = json!("DRAINING");
                }
                e
            })
            .collect();
        let doc = json!({
            "version_info": format!("{}", fastrand::u64(..)),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "policy": {"overprovisioning_factor": 100000},
                "endpoints": [
                    {"lb_endpoints": lb},
                    {"priority": 1, "lb_endpoints": [{"endpoint": {"address": {
                        "envoy_internal_address": {"server_listener_name": "mulligan_hold"}}}}]},
                ],
            }],
        });
        let tmp = self.dir.path().join("eds.json.tmp");
        std::fs::write(&tmp, doc.to_string()).expect("write eds");
        std::fs::rename(&tmp, &self.path).expect("rename eds");
    }

    /// The reference bootstrap (`envoy.yaml`) with its `app` cluster fed
    /// from this file instead of a static list.
    pub fn bootstrap(&self, mulligan_grpc_port: u16) -> String {
        let text = super::render::tolerant(&[], mulligan_grpc_port, &[]);
        let mut v: Value = serde_yaml_ng::from_str(&text).expect("bootstrap is YAML");
        let app = v["static_resources"]["clusters"]
            .as_sequence_mut()
            .expect("clusters")
            .iter_mut()
            .find(|c| c["name"] == "app")
            .expect("cluster app")
            .as_mapping_mut()
            .expect("cluster");
        app.remove("load_assignment");
        app.insert("type".into(), Value::from("EDS"));
        let source = format!(
            "{{eds_config: {{resource_api_version: V3, path_config_source: {{path: '{}', watched_directory: {{path: '{}'}}}}}}}}",
            self.path.display(),
            self.dir.path().display()
        );
        app.insert(
            "eds_cluster_config".into(),
            serde_yaml_ng::from_str(&source).expect("eds config"),
        );
        v["node"] = serde_yaml_ng::from_str("{id: holds-test, cluster: holds-test}").expect("node");
        serde_yaml_ng::to_string(&v).expect("YAML")
    }
}
