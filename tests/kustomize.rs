//! Every kustomization the repository ships renders with the real
//! `kubectl kustomize` (kustomize built into kubectl), and renders the
//! objects a user expects from it. kustomize refuses, among others, a
//! resource file outside the kustomization's directory: only rendering
//! finds that, reading the YAML does not.
//!
//! kubectl is part of this machine image; `make kubectl` says so loudly
//! where it is missing. A missing kubectl fails these tests: it never
//! skips them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize DIR` as (kind, namespace/name) pairs.
fn render(dir: &Path) -> BTreeSet<(String, String)> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render the kustomizations (`make kubectl`): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .map(|v| {
            let kind = v["kind"].as_str().expect("kind").to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
            let name = v["metadata"]["name"].as_str().expect("name");
            (kind, format!("{ns}/{name}"))
        })
        .collect()
}

/// Every directory under envoy-config/ holding a kustomization.yaml.
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                found.push(path.parent().expect("dir").to_path_buf());
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo().join("envoy-config"), &mut found);
    found.sort();
    found
}

fn obj(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

/// What mulligan itself (envoy-config/gateway/kubernetes) renders.
fn mulligan_itself() -> Vec<(String, String)> {
    vec![
        obj("Namespace", "/mulligan-system"),
        obj("ServiceAccount", "mulligan-system/mulligan"),
        obj("ConfigMap", "mulligan-system/mulligan-config"),
        obj("Deployment", "mulligan-system/mulligan"),
        obj("Service", "mulligan-system/mulligan"),
        obj("PodDisruptionBudget", "mulligan-system/mulligan"),
        obj("NetworkPolicy", "mulligan-system/mulligan"),
    ]
}

/// What each shipped kustomization must render, by its path under
/// envoy-config/gateway.
fn expected(dir: &str) -> Vec<(String, String)> {
    match dir {
        "kubernetes" => mulligan_itself(),
        "crds" => vec![obj(
            "CustomResourceDefinition",
            "/mulliganpolicies.mulligan.dev",
        )],
        "extension-server" => {
            let mut v = mulligan_itself();
            v.extend([
                obj("CustomResourceDefinition", "/mulliganpolicies.mulligan.dev"),
                obj("ClusterRole", "/envoy-gateway-mulligan-policies"),
                obj("ClusterRoleBinding", "/envoy-gateway-mulligan-policies"),
                obj("Deployment", "mulligan-system/mulligan-extension"),
                obj("Service", "mulligan-system/mulligan-extension"),
                obj("NetworkPolicy", "mulligan-system/mulligan-extension"),
            ]);
            v
        }
        "" => {
            let mut v = mulligan_itself();
            v.extend([
                obj("Role", "default/mulligan-discovery"),
                obj("RoleBinding", "default/mulligan-discovery"),
                obj("EnvoyPatchPolicy", "default/mulligan"),
            ]);
            v
        }
        other => panic!(
            "envoy-config/gateway/{other}/kustomization.yaml is not known to this test: \
             add what it must render to `expected`"
        ),
    }
}

#[test]
fn every_shipped_kustomization_renders_what_it_promises() {
    let version = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render the kustomizations (`make kubectl`): {e}")
        });
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("Kustomize Version"),
        "this kubectl has no kustomize built in: {}",
        String::from_utf8_lossy(&version.stdout)
    );
    let gateway = repo().join("envoy-config/gateway");
    let dirs = kustomizations();
    assert!(
        dirs.len() >= 4,
        "found only {} kustomizations: {dirs:?}",
        dirs.len()
    );
    for dir in dirs {
        let rel = dir
            .strip_prefix(&gateway)
            .unwrap_or_else(|_| panic!("{} is outside envoy-config/gateway", dir.display()))
            .to_string_lossy()
            .to_string();
        let rendered = render(&dir);
        for want in expected(&rel) {
            assert!(
                rendered.contains(&want),
                "kubectl kustomize envoy-config/gateway/{rel}: no {} {}; rendered {rendered:?}",
                want.0,
                want.1
            );
        }
    }
}

/// The recommended install brings the MulliganPolicy CRD exactly once,
/// through the crds/ kustomization (not a file reached across directories).
#[test]
fn the_recommended_install_lists_the_crd_directory() {
    let text = std::fs::read_to_string(
        repo().join("envoy-config/gateway/extension-server/kustomization.yaml"),
    )
    .expect("read");
    let kz: Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let resources: Vec<&str> = kz["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(resources.contains(&"../crds"), "resources: {resources:?}");
    let crds = render(&repo().join("envoy-config/gateway/extension-server"))
        .into_iter()
        .filter(|(k, _)| k == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, 1, "the CRD renders once");
}
