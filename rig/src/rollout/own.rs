//! A bootstrap of the user's, run as one more variant: what THEIR Envoy
//! configuration leaks during a rollout, beside Envoy alone, Envoy
//! Gateway's retries and mulligan, on the same pods and the same EDS lag.
//!
//! The file follows the reference bootstrap's contract (`${NAME}` and
//! `${NAME:-default}` filled in by [`crate::render`]). The harness fills:
//!
//! - `${ADMIN_PORT}` (required): the admin listener's port;
//! - `${LISTEN_PORT}` (required): the port of the one listener the load
//!   goes to;
//! - `${EDS_FILE}` (required, or `${HOLD_EDS_FILE}`): the app cluster's
//!   filesystem EDS file, which the harness rewrites as pods come and go,
//!   with the same propagation lag as every other variant; `${EDS_DIR}` is
//!   its directory (for `watched_directory`) and `${EDS_CLUSTER}` the name
//!   of the cluster load assignment in it (the app cluster's name or its
//!   `eds_cluster_config.service_name`);
//! - `${HOLD_EDS_FILE}` / `${HOLD_EDS_DIR}`: the same endpoints plus
//!   mulligan's hold endpoint (`mulligan_hold`) at priority 1, for a
//!   bootstrap that carries mulligan's hold listeners;
//! - `${MULLIGAN_GRPC_PORT}`: when the file names it, a mulligan runs
//!   beside this Envoy and this is its gRPC port;
//! - `${BASELINE_PORT}`: 0, so a copy of the reference bootstrap binds no
//!   fixed port.
//!
//! Any other placeholder needs a default. A static `${APP_ENDPOINTS}` list
//! is refused: a rollout replaces every pod, and a list written at start
//! would point at pods that are gone.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

/// The placeholders a bootstrap must have for the harness to run it.
pub const REQUIRED: [&str; 2] = ["ADMIN_PORT", "LISTEN_PORT"];

/// What `${EDS_CLUSTER}` is filled with: the cluster name in the EDS file.
pub const EDS_CLUSTER: &str = "app";

/// Rendered in place of `${LISTEN_PORT}` to find the listener the load goes
/// to (no bootstrap serves on port 1), then replaced by 0 (Envoy picks).
const LISTEN_SENTINEL: u64 = 1;

/// At most this many of the user's bootstraps in one run: the pods count
/// arrivals for eight variants, three of which are built in.
pub const MAX: usize = 5;

/// A bootstrap of the user's, read and checked.
#[derive(Clone, Debug)]
pub struct OwnBootstrap {
    /// Its name in the report, the JSON and process names.
    pub name: String,
    pub path: PathBuf,
    template: String,
}

/// A bootstrap rendered for one run.
pub struct Rendered {
    /// The config Envoy runs (JSON, which Envoy reads as YAML).
    pub config: String,
    /// The name of the listener the load goes to.
    pub listener: String,
}

/// The endpoint files a run gives a bootstrap.
pub struct EdsFiles<'a> {
    pub eds: &'a Path,
    pub hold_eds: &'a Path,
}

impl OwnBootstrap {
    /// `NAME=FILE` or `FILE` (named after the file's stem): reads the file
    /// and refuses one without the placeholders the harness needs.
    pub fn parse(arg: &str) -> Result<OwnBootstrap, String> {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), p),
            _ => {
                let stem = Path::new(arg).file_stem().and_then(|s| s.to_str());
                (stem.unwrap_or("yours").to_string(), arg)
            }
        };
        let template = std::fs::read_to_string(path)
            .map_err(|e| format!("--bootstrap {arg}: cannot read {path}: {e}"))?;
        let own = OwnBootstrap {
            name,
            path: PathBuf::from(path),
            template,
        };
        own.check_placeholders()?;
        Ok(own)
    }

    /// What the report calls it.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.path.display())
    }

    /// Whether a mulligan runs beside it (the file names its gRPC port).
    pub fn needs_mulligan(&self) -> bool {
        placeholders(&self.template).contains("MULLIGAN_GRPC_PORT")
    }

    fn check_placeholders(&self) -> Result<(), String> {
        let found = placeholders(&self.template);
        let file = self.path.display();
        let missing: Vec<String> = REQUIRED
            .iter()
            .filter(|p| !found.contains(**p))
            .map(|p| format!("${{{p}}}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{file} has no {}: the harness fills the admin port with ${{ADMIN_PORT}} and the \
                 port of the listener the load goes to with ${{LISTEN_PORT}}",
                missing.join(" or ")
            ));
        }
        let eds = found.contains("EDS_FILE") || found.contains("HOLD_EDS_FILE");
        if !eds || found.contains("APP_ENDPOINTS") {
            let what = if found.contains("APP_ENDPOINTS") {
                "lists ${APP_ENDPOINTS}: a static list cannot follow a rollout, which replaces \
                 every pod; "
            } else {
                "has no ${EDS_FILE}: "
            };
            return Err(format!(
                "{file} {what}put the app cluster on filesystem EDS \
                 (type: EDS; eds_cluster_config.eds_config.path_config_source.path: ${{EDS_FILE}}, \
                 watched_directory.path: ${{EDS_DIR}}; cluster or service_name ${{EDS_CLUSTER}}), \
                 as envoy-config/standalone/examples/envoy-alone.yaml does"
            ));
        }
        Ok(())
    }

    /// Fills the placeholders: `files` are the run's endpoint files,
    /// `overrides` those of the reference bootstrap set for the run (a
    /// loaded machine's `MESSAGE_TIMEOUT`).
    pub fn render(
        &self,
        files: &EdsFiles,
        mulligan_grpc_port: u16,
        overrides: &[(&'static str, String)],
    ) -> Result<Rendered, String> {
        let dir = |p: &Path| p.parent().unwrap_or(p).display().to_string();
        let mut vars: std::collections::HashMap<&str, String> = [
            ("ADMIN_PORT", "0".to_string()),
            ("LISTEN_PORT", LISTEN_SENTINEL.to_string()),
            ("BASELINE_PORT", "0".to_string()),
            ("EDS_FILE", files.eds.display().to_string()),
            ("EDS_DIR", dir(files.eds)),
            ("HOLD_EDS_FILE", files.hold_eds.display().to_string()),
            ("HOLD_EDS_DIR", dir(files.hold_eds)),
            ("EDS_CLUSTER", EDS_CLUSTER.to_string()),
            ("MULLIGAN_GRPC_PORT", mulligan_grpc_port.to_string()),
        ]
        .into_iter()
        .collect();
        vars.extend(overrides.iter().map(|(k, v)| (*k, v.clone())));
        let file = self.path.display();
        let text =
            crate::render::render(&self.template, &vars).map_err(|e| format!("{file}: {e}"))?;
        let mut v: Value =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{file} (rendered): {e}"))?;
        let listener = self.front_listener(&mut v)?;
        // Filesystem xDS needs a node identity.
        if v.get("node").is_none() {
            v["node"] = json!({"id": format!("rollout-{}", self.name), "cluster": "rollout"});
        }
        Ok(Rendered {
            config: v.to_string(),
            listener,
        })
    }

    /// The name of the listener on `${LISTEN_PORT}`, whose port becomes 0.
    fn front_listener(&self, v: &mut Value) -> Result<String, String> {
        let listeners = v["static_resources"]["listeners"].as_array_mut();
        let mut on_port: Vec<&mut Value> = listeners
            .into_iter()
            .flatten()
            .filter(|l| port_of(l) == Some(LISTEN_SENTINEL))
            .collect();
        if on_port.len() != 1 {
            return Err(format!(
                "{}: ${{LISTEN_PORT}} must be the port_value of exactly one static listener's \
                 socket_address (found {})",
                self.path.display(),
                on_port.len()
            ));
        }
        let l = &mut on_port[0];
        l["address"]["socket_address"]["port_value"] = json!(0);
        if l["name"].as_str().is_none() {
            l["name"] = json!(format!("{}-front", self.name));
        }
        Ok(l["name"].as_str().unwrap_or_default().to_string())
    }

    /// Renders it against scratch endpoint files and runs `envoy --mode
    /// validate` on the result: a bootstrap Envoy would refuse is refused
    /// before any pod starts.
    pub fn validate(&self) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let (eds, hold) = (dir.path().join("eds.json"), dir.path().join("hold.json"));
        let empty = r#"{"version_info":"0","resources":[]}"#;
        for p in [&eds, &hold] {
            std::fs::write(p, empty).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let files = EdsFiles {
            eds: &eds,
            hold_eds: &hold,
        };
        let rendered = self.render(&files, 1, &[])?;
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, &rendered.config).map_err(|e| format!("{e}"))?;
        crate::envoy::validate(&config).map_err(|e| {
            format!(
                "{}: envoy --mode validate refused it:\n{e}",
                self.path.display()
            )
        })
    }
}

/// A listener's `socket_address.port_value`, number or string.
fn port_of(listener: &Value) -> Option<u64> {
    let p = &listener["address"]["socket_address"]["port_value"];
    p.as_u64().or_else(|| p.as_str()?.parse().ok())
}

/// The placeholder names in `template`'s non-comment lines.
pub fn placeholders(template: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in template
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            let inner = &after[..end];
            let name = inner.split_once(":-").map_or(inner, |(n, _)| n);
            found.insert(name.to_string());
            rest = &after[end + 1..];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_with_and_without_defaults_outside_comments() {
        let t = "# ${COMMENTED}\nport: ${ADMIN_PORT:-9901}\nx: [${A}, ${B:-1}]\n";
        let names: Vec<String> = placeholders(t).into_iter().collect();
        assert_eq!(names, ["A", "ADMIN_PORT", "B"]);
    }
}
