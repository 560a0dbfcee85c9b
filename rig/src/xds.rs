//! Envoy's messages as proto JSON and back: Envoy Gateway's real output
//! (camelCase proto JSON as YAML) turned into envoy-types messages, and
//! the wiring's messages printed as the YAML of an Envoy bootstrap (what
//! `make wiring` writes).
//!
//! Why prost-reflect: envoy-types has no JSON support, and the fixtures'
//! `typedConfig` fields are `Any`s that only a descriptor-aware reader can
//! resolve. protoc (the vendored one the build already uses) compiles
//! envoy-types' own shipped `.proto` files, plus our vendored extension
//! API, into a descriptor set once per test binary; prost-reflect reads the
//! JSON through it (unknown fields rejected), and the bytes it encodes are
//! decoded by envoy-types. No second copy of Envoy's protos is involved.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

/// envoy-types' shipped `proto/` folder, found through cargo metadata.
fn envoy_types_protos() -> PathBuf {
    // Filtered to the host, cargo resolves offline (it would otherwise want
    // every platform's crates downloaded).
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc host");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .arg("--manifest-path")
        .arg(crate::repo_root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata json");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types in cargo metadata");
    Path::new(manifest)
        .parent()
        .expect("crate dir")
        .join("proto")
}

fn fixture_type_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let root = crate::envoy_gateway_fixtures();
    for dir in ["egctl-translate", "xds"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("fixtures") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            for part in text.split("type.googleapis.com/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// Every `.proto` in the package folder of each type name.
fn proto_files(api: &Path, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for name in names {
        let package: Vec<&str> = name
            .split('.')
            .take_while(|p| !p.starts_with(char::is_uppercase))
            .collect();
        let dir = package.join("/");
        let Ok(entries) = std::fs::read_dir(api.join(&dir)) else {
            continue;
        };
        for e in entries {
            let file = e.expect("entry").file_name().to_string_lossy().to_string();
            if file.ends_with(".proto") {
                files.insert(format!("{dir}/{file}"));
            }
        }
    }
    files
}

/// The descriptor pool: the fixtures' types, the extension API and Envoy's
/// bootstrap, from protoc over envoy-types' protos.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let protos = envoy_types_protos();
        let api = protos.join("data-plane-api");
        let mut names = fixture_type_names();
        // Envoy's bootstrap, and what the wiring packs into Anys (to print
        // a wired translation as a bootstrap Envoy reads).
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
            "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
            "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "envoy.extensions.filters.http.buffer.v3.Buffer",
            "envoy.extensions.filters.http.composite.v3.Composite",
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
            "envoy.type.matcher.v3.HttpResponseHeaderMatchInput",
            "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        ] {
            names.insert(name.into());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("fds.bin");
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc");
        let include = protoc_bin_vendored::include_path().expect("protoc include");
        let vendored = crate::repo_root().join("proto/envoygateway");
        let mut cmd = Command::new(protoc);
        cmd.arg("--include_imports")
            .arg(format!("--descriptor_set_out={}", out.display()));
        for i in [
            api.clone(),
            protos.join("xds"),
            protos.join("googleapis"),
            protos.join("protoc-gen-validate"),
            protos.join("cel-spec/proto"),
            protos.join("opentelemetry-proto"),
            protos.join("client_model"),
            include,
            vendored,
        ] {
            cmd.arg("-I").arg(i);
        }
        cmd.args(proto_files(&api, &names));
        cmd.arg("proto/extension/service.proto");
        let result = cmd.output().expect("run protoc");
        assert!(
            result.status.success(),
            "protoc: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let bytes = std::fs::read(&out).expect("descriptor set");
        DescriptorPool::decode(bytes.as_slice()).expect("descriptor pool")
    })
}

/// Envoy Gateway writes an empty `Any` (a `FilterConfig` whose `config` is
/// unset-but-present) as `{}`, which has no `@type` for a JSON reader to
/// resolve: such members are dropped (the filter config stays, empty).
fn drop_empty_anys(json: &mut Value) {
    match json {
        Value::Object(obj) => {
            if obj.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/envoy.config.route.v3.FilterConfig")
                && obj.get("config") == Some(&Value::Object(Default::default()))
            {
                obj.remove("config");
            }
            obj.values_mut().for_each(drop_empty_anys);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty_anys),
        _ => {}
    }
}

/// Puts back the empty `config` [`drop_empty_anys`] took out, now that the
/// message is decoded (a present, empty `Any`, as Envoy Gateway sends it).
fn restore_empty_anys(config: &mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration) {
    use envoy_types::pb::{envoy::config::route::v3::FilterConfig, google::protobuf::Any};
    let fix = |map: &mut std::collections::HashMap<String, Any>| {
        for any in map.values_mut() {
            if any.type_url.ends_with("envoy.config.route.v3.FilterConfig") {
                let mut f = FilterConfig::decode(any.value.as_slice()).expect("FilterConfig");
                if f.config.is_none() && !f.disabled && !f.is_optional {
                    f.config = Some(Any::default());
                    any.value = f.encode_to_vec();
                }
            }
        }
    };
    fix(&mut config.typed_per_filter_config);
    for vhost in &mut config.virtual_hosts {
        fix(&mut vhost.typed_per_filter_config);
        for route in &mut vhost.routes {
            fix(&mut route.typed_per_filter_config);
        }
    }
}

fn route_config(json: Value) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let mut config = from_json(ROUTES, json);
    restore_empty_anys(&mut config);
    config
}

/// One resource in proto JSON (camelCase, `@type` optional) as `M`.
pub fn from_json<M: Message + Default>(type_name: &str, mut json: Value) -> M {
    drop_empty_anys(&mut json);
    if let Some(obj) = json.as_object_mut() {
        obj.remove("@type");
    }
    let desc = pool()
        .get_message_by_name(type_name)
        .unwrap_or_else(|| panic!("{type_name} not in pool"));
    let dynamic =
        DynamicMessage::deserialize(desc, json).unwrap_or_else(|e| panic!("{type_name}: {e}"));
    M::decode(dynamic.encode_to_vec().as_slice())
        .expect("envoy-types decodes what prost-reflect encoded")
}

/// A message as proto JSON (for Envoy's bootstrap and for failure output).
pub fn to_json<M: Message>(type_name: &str, m: &M) -> Value {
    let desc = pool().get_message_by_name(type_name).expect("type in pool");
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).expect("decode");
    serde_json::to_value(&dynamic).expect("json")
}

/// A message (`type_name`, encoded) as the YAML of an Envoy bootstrap:
/// proto JSON with the proto field names (snake_case, as Envoy's docs and
/// hand-written bootstraps spell them), fields in the proto's order, and
/// 64-bit numbers as numbers.
pub fn bootstrap_yaml(type_name: &str, bytes: &[u8]) -> String {
    let desc = pool()
        .get_message_by_name(type_name)
        .unwrap_or_else(|| panic!("{type_name} not in pool"));
    let dynamic = DynamicMessage::decode(desc, bytes).expect("decode");
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let mut out = Vec::new();
    dynamic
        .serialize_with_options(&mut serde_yaml_ng::Serializer::new(&mut out), &options)
        .expect("yaml");
    String::from_utf8(out).expect("YAML is UTF-8")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "envoy.config.listener.v3.Listener";
const ROUTES: &str = "envoy.config.route.v3.RouteConfiguration";
const ENDPOINTS: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One translation: the resources Envoy Gateway gives its hooks (no
/// policies yet) and the endpoints it sends over EDS beside them.
#[derive(Clone)]
pub struct Translation {
    pub name: String,
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

fn items<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for key in path {
        cur = cur
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().filter_map(|x| x.get(key)).collect::<Vec<_>>(),
                _ => v.get(key).into_iter().collect(),
            })
            .collect();
    }
    cur.into_iter()
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().collect::<Vec<_>>(),
            _ => vec![v],
        })
        .collect()
}

/// `egctl x translate` output: the xDS config dump of each Gateway.
fn egctl(path: &Path) -> Vec<Translation> {
    let doc = yaml(path);
    let mut out = Vec::new();
    for (gateway, dump) in doc["xds"].as_object().expect("xds") {
        let configs = &dump["configs"];
        let pick = |t: &str, path: &[&str]| -> Vec<Value> {
            configs
                .as_array()
                .expect("configs")
                .iter()
                .filter(|c| c["@type"].as_str().is_some_and(|x| x.ends_with(t)))
                .flat_map(|c| items(c, path))
                .cloned()
                .collect()
        };
        let clusters = pick("ClustersConfigDump", &["dynamicActiveClusters", "cluster"])
            .into_iter()
            .map(|j| from_json(CLUSTER, j))
            .collect();
        let listeners = pick(
            "ListenersConfigDump",
            &["dynamicListeners", "activeState", "listener"],
        )
        .into_iter()
        .map(|j| from_json(LISTENER, j))
        .collect();
        let routes = pick("RoutesConfigDump", &["dynamicRouteConfigs", "routeConfig"])
            .into_iter()
            .map(route_config)
            .collect();
        let endpoints = pick(
            "EndpointsConfigDump",
            &["dynamicEndpointConfigs", "endpointConfig"],
        )
        .into_iter()
        .map(|j| from_json(ENDPOINTS, j))
        .collect();
        let name = format!(
            "{}:{gateway}",
            path.file_name().expect("name").to_string_lossy()
        );
        out.push(Translation {
            name,
            clusters,
            listeners,
            routes,
            endpoints,
        });
    }
    out
}

/// `xds/NAME.{clusters,endpoints,listeners,routes}.yaml`: Envoy Gateway's
/// translator test output.
fn xds_set(dir: &Path, name: &str) -> Translation {
    let list = |kind: &str| -> Vec<Value> {
        yaml(&dir.join(format!("{name}.{kind}.yaml")))
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let clusters = list("clusters")
        .into_iter()
        .map(|j| from_json(CLUSTER, j))
        .collect();
    let listeners = list("listeners")
        .into_iter()
        .map(|j| from_json(LISTENER, j))
        .collect();
    let routes = list("routes").into_iter().map(route_config).collect();
    let endpoints = list("endpoints")
        .into_iter()
        .map(|j| from_json(ENDPOINTS, j))
        .collect();
    Translation {
        name: format!("xds/{name}"),
        clusters,
        listeners,
        routes,
        endpoints,
    }
}

/// Every translation in the fixtures.
pub fn translations() -> Vec<Translation> {
    let root = crate::envoy_gateway_fixtures();
    let mut out = Vec::new();
    let mut egctl_files: Vec<_> = std::fs::read_dir(root.join("egctl-translate"))
        .expect("dir")
        .map(|e| e.expect("e").path())
        .filter(|p| p.to_string_lossy().ends_with(".out.yaml"))
        .collect();
    egctl_files.sort();
    for f in egctl_files {
        out.extend(egctl(&f));
    }
    let mut sets = BTreeSet::new();
    for e in std::fs::read_dir(root.join("xds")).expect("dir") {
        let file = e.expect("e").file_name().to_string_lossy().to_string();
        if let Some(set) = file.strip_suffix(".clusters.yaml") {
            sets.insert(set.to_string());
        }
    }
    for set in sets {
        out.push(xds_set(&root.join("xds"), &set));
    }
    out
}
