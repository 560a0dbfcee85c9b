//! The proxy behind each variant: one Envoy each (and one mulligan for each
//! variant that has it), all reading the same EDS file.
//!
//! Every Envoy config is derived from the reference bootstrap
//! (`envoy-config/standalone/envoy.yaml`, the one source of mulligan's
//! ext_proc settings) and Envoy Gateway's own xDS output for the retry
//! policy and the cluster (`shared/fixtures/envoy-gateway/xds/retry.*`), so
//! the Envoy Gateway variant is what Envoy Gateway would run, not an
//! imitation of it.

use std::{net::SocketAddr, path::Path};

use serde_json::{json, Value};

use crate::{envoy::Envoy, mulligan::Mulligan, render};

/// The proxies compared side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Variant {
    /// Envoy with no retries: what a rollout costs with nothing in the way.
    EnvoyAlone,
    /// Envoy with the retries Envoy Gateway configures by default: what a
    /// user of Envoy Gateway gets without mulligan.
    GatewayRetries,
    /// Envoy with mulligan, wired as shipped (`envoy.yaml`): Envoy makes
    /// every attempt, mulligan judges the failed ones and holds when
    /// nothing can serve.
    Mulligan,
}

impl Variant {
    /// Every variant, in the order the report lists them.
    pub const ALL: [Variant; 3] = [
        Variant::EnvoyAlone,
        Variant::GatewayRetries,
        Variant::Mulligan,
    ];

    /// Its place in [`Variant::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// [`Variant::index`] as text: the `x-harness-variant` of its requests,
    /// by which the pods count what each proxy sent, and the prefix of their
    /// `x-harness-id`.
    pub fn tag(self) -> &'static str {
        ["0", "1", "2"][self.index()]
    }

    /// A short name for the command line, request ids and process names.
    pub fn name(self) -> &'static str {
        match self {
            Variant::EnvoyAlone => "envoy-alone",
            Variant::GatewayRetries => "gateway-retries",
            Variant::Mulligan => "mulligan",
        }
    }

    /// What the report calls it.
    pub fn label(self) -> &'static str {
        match self {
            Variant::EnvoyAlone => "Envoy alone, no retries",
            Variant::GatewayRetries => "Envoy + Envoy Gateway retries",
            Variant::Mulligan => "Envoy + mulligan",
        }
    }

    /// The variant called `name`.
    pub fn named(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// Every variant.
    pub fn available() -> Vec<Variant> {
        Variant::ALL.to_vec()
    }
}

/// A running proxy for one variant.
pub struct Proxy {
    pub variant: Variant,
    /// Kept for the run: dropping it stops Envoy.
    pub envoy: Envoy,
    pub mulligan: Option<Mulligan>,
    pub front: SocketAddr,
}

fn fixture(name: &str) -> Value {
    let path = crate::envoy_gateway_fixtures().join("xds").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Envoy Gateway's default BackendTrafficPolicy `retry` policy, as its
/// translator emits it (the route `second-route-defaults` in the fixture).
pub fn envoy_gateway_retry_policy() -> Value {
    let routes = fixture("retry.routes.yaml");
    routes
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rc| rc["virtualHosts"].as_array().into_iter().flatten())
        .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
        .find(|r| r["name"] == "second-route-defaults")
        .map(|r| r["route"]["retryPolicy"].clone())
        .expect("retry fixture has the default route")
}

/// Envoy Gateway's cluster for a route backend (least request, EDS), with
/// its EDS source pointed at our file instead of ADS.
fn envoy_gateway_cluster(eds: &Path) -> Value {
    let clusters = fixture("retry.clusters.yaml");
    let mut c = clusters
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .expect("retry fixture has a cluster");
    c["name"] = json!("app");
    c["connectTimeout"] = json!("1s");
    c["edsClusterConfig"] = eds_config(eds);
    c
}

/// An EDS source that is our file (filesystem xDS).
fn eds_config(eds: &Path) -> Value {
    json!({
        "edsConfig": {
            "pathConfigSource": {
                "path": eds.display().to_string(),
                "watchedDirectory": {"path": eds.parent().expect("eds dir").display().to_string()},
            },
            "resourceApiVersion": "V3",
        },
    })
}

/// The mulligan variant's bootstrap: the reference file as shipped, its
/// app cluster on EDS (`eds` holds the hold endpoint at priority 1, as the
/// static file does) with Envoy Gateway's load balancing and buffer limit;
/// its own retry policy, not Envoy Gateway's.
fn mulligan_bootstrap(
    eds: &Path,
    mulligan_grpc_port: u16,
    overrides: &[(&'static str, String)],
) -> String {
    let yaml = render::standalone(&[], mulligan_grpc_port, overrides);
    let mut v: Value = serde_yaml_ng::from_str(&yaml).expect("reference bootstrap is YAML");
    v["node"] = json!({"id": "rollout-mulligan", "cluster": "rollout"});
    let listeners = v["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    listeners.retain(|l| l["name"] != "baseline");
    let clusters = v["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    clusters.retain(|c| c["name"] != "app_baseline");
    let app = clusters
        .iter_mut()
        .find(|c| c["name"] == "app")
        .and_then(|c| c.as_object_mut())
        .expect("envoy.yaml has the app cluster");
    app.remove("load_assignment");
    app.insert("type".into(), json!("EDS"));
    app.insert("eds_cluster_config".into(), eds_config(eds));
    app.insert("lb_policy".into(), json!("LEAST_REQUEST"));
    app.insert("per_connection_buffer_limit_bytes".into(), json!(32768));
    v.to_string()
}

/// The bootstrap of a variant without mulligan: the reference file's
/// baseline listener alone (no mulligan filter anywhere), with Envoy
/// Gateway's cluster on EDS and, for [`Variant::GatewayRetries`], Envoy
/// Gateway's retry policy on its route.
fn envoy_bootstrap(variant: Variant, eds: &Path) -> String {
    let yaml = render::standalone(&[], 1, &[]);
    let mut v: Value = serde_yaml_ng::from_str(&yaml).expect("reference bootstrap is YAML");
    // Filesystem xDS needs a node identity.
    v["node"] = json!({"id": format!("rollout-{}", variant.name()), "cluster": "rollout"});
    let listeners = v["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    listeners.retain(|l| l["name"] == "baseline");
    // The baseline listener's route goes to Envoy Gateway's cluster (named
    // `app`, as the EDS file names it), with Envoy Gateway's retries for
    // that variant; nothing of mulligan's is left.
    let retry = (variant == Variant::GatewayRetries).then(envoy_gateway_retry_policy);
    for l in listeners.iter_mut() {
        for f in l["filter_chains"][0]["filters"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            let vhs = f["typed_config"]["route_config"]["virtual_hosts"].as_array_mut();
            for vh in vhs.into_iter().flatten() {
                for r in vh["routes"].as_array_mut().into_iter().flatten() {
                    r["route"]["cluster"] = json!("app");
                    if let Some(retry) = &retry {
                        r["route"]["retry_policy"] = retry.clone();
                    }
                }
            }
        }
    }
    v["static_resources"]["clusters"] = json!([envoy_gateway_cluster(eds)]);
    v.to_string()
}

/// The bootstrap for `variant`, every one on EDS; `overrides` fill the
/// reference bootstrap's placeholders (e.g. `MESSAGE_TIMEOUT`).
pub fn bootstrap(
    variant: Variant,
    eds: &Path,
    mulligan_grpc_port: u16,
    overrides: &[(&'static str, String)],
) -> String {
    match variant {
        Variant::Mulligan => mulligan_bootstrap(&hold_eds(eds), mulligan_grpc_port, overrides),
        Variant::EnvoyAlone | Variant::GatewayRetries => envoy_bootstrap(variant, eds),
    }
}

/// Where the cluster writes Envoy's EDS with the hold endpoint added.
pub fn hold_eds(eds: &Path) -> std::path::PathBuf {
    eds.parent()
        .and_then(Path::parent)
        .expect("eds dir")
        .join("envoy-eds-hold")
        .join("eds.json")
}

impl Proxy {
    /// Starts the proxy for `variant`; its mulligan follows `mulligan_eds`.
    pub async fn start(
        variant: Variant,
        envoy_eds: &Path,
        mulligan_eds: &Path,
        mulligan_toml: &str,
        overrides: &[(&'static str, String)],
    ) -> Proxy {
        let mulligan = if variant == Variant::Mulligan {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("mulligan.toml");
            let toml = format!(
                "[endpoints]\neds_file = {:?}\neds_file_poll = \"20ms\"\n{mulligan_toml}",
                mulligan_eds.display().to_string()
            );
            std::fs::write(&path, toml).expect("mulligan config");
            let m = Mulligan::start(&["--config", path.to_str().expect("path")]).await;
            Some(m)
        } else {
            None
        };
        let port = mulligan.as_ref().map_or(1, |m| m.grpc.port());
        let envoy = Envoy::start(&bootstrap(variant, envoy_eds, port, overrides)).await;
        let name = if mulligan.is_some() {
            "mulligan"
        } else {
            "baseline"
        };
        let front = envoy.listener(name).await;
        Proxy {
            variant,
            envoy,
            mulligan,
            front,
        }
    }
}
