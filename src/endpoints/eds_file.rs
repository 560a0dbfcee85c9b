//! A discovery source: Envoy's own EDS file (filesystem xDS).
//!
//! Where Envoy reads endpoints from a file (`path_config_source`), mulligan
//! can follow a file in the same format: a `DiscoveryResponse` (or a bare
//! `ClusterLoadAssignment`) in JSON. Each `ClusterLoadAssignment` replaces the
//! endpoints mulligan knows for its `cluster_name`; `health_status` maps to a
//! state (`DRAINING` is draining, `UNHEALTHY` and `TIMEOUT` not ready,
//! anything else ready). Writers replace the file atomically (rename), as
//! Envoy requires too; mulligan checks it every `eds_file_poll`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{Registry, State};

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    resources: Vec<Assignment>,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    endpoints: Vec<Locality>,
}

#[derive(Debug, Deserialize)]
struct Assignment {
    cluster_name: String,
    #[serde(default)]
    endpoints: Vec<Locality>,
}

#[derive(Debug, Deserialize)]
struct Locality {
    #[serde(default)]
    lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Debug, Deserialize)]
struct LbEndpoint {
    endpoint: EndpointAddr,
    #[serde(default)]
    health_status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EndpointAddr {
    address: Address,
}

#[derive(Debug, Deserialize)]
struct Address {
    /// Absent for an Envoy internal address (the wiring's hold
    /// endpoint): not an app endpoint, skipped.
    #[serde(default)]
    socket_address: Option<SocketAddress>,
}

#[derive(Debug, Deserialize)]
struct SocketAddress {
    address: IpAddr,
    port_value: u16,
}

/// One cluster's endpoints, as the file states them.
pub type ClusterView = (String, Vec<(SocketAddr, State)>);

/// Parses an EDS document.
pub(crate) fn parse(text: &str) -> Result<Vec<ClusterView>, serde_json::Error> {
    let doc: Document = serde_json::from_str(text)?;
    let mut out = Vec::new();
    let mut add = |name: String, localities: Vec<Locality>| {
        let eps = localities
            .into_iter()
            .flat_map(|l| l.lb_endpoints)
            .filter_map(|e| {
                let sa = e.endpoint.address.socket_address?;
                let state = match e.health_status.as_deref() {
                    Some("DRAINING") => State::Draining,
                    Some("UNHEALTHY" | "TIMEOUT") => State::NotReady,
                    _ => State::Ready,
                };
                Some((SocketAddr::new(sa.address, sa.port_value), state))
            })
            .collect();
        out.push((name, eps));
    };
    for a in doc.resources {
        add(a.cluster_name, a.endpoints);
    }
    if let Some(name) = doc.cluster_name {
        add(name, doc.endpoints);
    }
    Ok(out)
}

/// Why the EDS file could not be loaded (this time: it is followed, and a
/// half-written file is read again on the next change).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not an EDS DiscoveryResponse: {error}")]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// Loads `path` into the registry; errors are reported, not fatal. The file
/// is the whole truth: a cluster it no longer lists leaves the registry.
pub(crate) fn load(registry: &Registry, path: &Path) -> Result<usize, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let clusters = parse(&text).map_err(|error| LoadError::Parse {
        path: path.to_path_buf(),
        error,
    })?;
    let n = clusters.len();
    registry.replace_source("eds file", &clusters);
    Ok(n)
}

/// Follows `path`: reloads it whenever its modification time or size changes.
pub(crate) fn spawn(registry: Arc<Registry>, path: PathBuf, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<(SystemTime, u64)> = None;
        let mut interval = tokio::time::interval(poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if seen == Some(stamp) {
                continue;
            }
            match load(&registry, &path) {
                Ok(_) => seen = Some(stamp),
                // A half-written file (a writer that did not rename): try
                // again next tick.
                Err(e) => tracing::warn!(error = %e, "eds file not loaded"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_discovery_response_with_health() {
        let text = r#"{"version_info":"3","resources":[{"@type":"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment","cluster_name":"app","endpoints":[{"lb_endpoints":[
            {"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":8001}}},"health_status":"HEALTHY"},
            {"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":8002}}},"health_status":"DRAINING"},
            {"endpoint":{"address":{"socket_address":{"address":"::1","port_value":8003}}}}]}]}]}"#;
        let v = parse(text).expect("valid");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "app");
        assert_eq!(
            v[0].1,
            vec![
                ("127.0.0.1:8001".parse().unwrap(), State::Ready),
                ("127.0.0.1:8002".parse().unwrap(), State::Draining),
                ("[::1]:8003".parse().unwrap(), State::Ready),
            ]
        );
    }

    #[test]
    fn bare_assignment_and_bad_input() {
        let v = parse(r#"{"cluster_name":"x","endpoints":[]}"#).expect("valid");
        assert_eq!(v, vec![("x".to_string(), vec![])]);
        // Hostnames are not accepted: mulligan only sends to IP endpoints.
        assert!(parse(r#"{"cluster_name":"x","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"evil.example","port_value":1}}}}]}]}"#).is_err());
        assert!(parse("{not json").is_err());
    }

    fn doc(clusters: &[(&str, &str)]) -> String {
        let assignments: Vec<String> = clusters
            .iter()
            .map(|(name, addr)| {
                let (ip, port) = addr.split_once(':').unwrap();
                format!(r#"{{"cluster_name":"{name}","endpoints":[{{"lb_endpoints":[{{"endpoint":{{"address":{{"socket_address":{{"address":"{ip}","port_value":{port}}}}}}}}}]}}]}}"#)
            })
            .collect();
        format!(r#"{{"resources":[{}]}}"#, assignments.join(","))
    }

    #[test]
    fn a_cluster_removed_from_the_file_leaves_the_registry() {
        let registry = Registry::from_config(
            &crate::config::Endpoints::default(),
            &crate::config::Health::default(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eds.json");
        std::fs::write(&path, doc(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")])).unwrap();
        assert_eq!(load(&registry, &path).ok(), Some(2));
        assert!(registry.cluster(Some("b")).is_some());
        std::fs::write(&path, doc(&[("a", "127.0.0.1:1")])).unwrap();
        assert_eq!(load(&registry, &path).ok(), Some(1));
        assert!(registry.list(Some("b")).is_empty(), "b left the file");
        assert_eq!(registry.list(Some("a")).len(), 1);
        assert_eq!(registry.state_of("127.0.0.1:2".parse().unwrap()), None);
    }

    #[test]
    fn load_errors_say_which_file_and_what_went_wrong() {
        let registry = Registry::from_config(
            &crate::config::Endpoints::default(),
            &crate::config::Health::default(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eds.json");
        let missing = load(&registry, &path).unwrap_err();
        assert!(matches!(missing, LoadError::Read { .. }), "{missing:?}");
        assert!(missing.to_string().starts_with(&path.display().to_string()));
        std::fs::write(&path, "{\"resources\": [").unwrap();
        let half = load(&registry, &path).unwrap_err();
        assert!(matches!(half, LoadError::Parse { .. }), "{half:?}");
        assert!(half.to_string().contains("not an EDS DiscoveryResponse"));
    }
}
