//! The EnvoyPatchPolicy path (`envoy-config/gateway/patch-policy.yaml`),
//! proven against Envoy Gateway's own output (`shared/fixtures/envoy-gateway`):
//! the policy validates against its CRD; applied as Envoy Gateway applies it
//! (below, [`EnvoyGateway::apply`]) to the xDS it generates, it installs
//! the reference bootstrap's decide wiring piece for piece; the result
//! passes `envoy --mode validate`; and it runs live with the real mulligan:
//! healthy requests open no ext_proc stream, failed attempts are retried,
//! a request with no endpoint left waits at the hold, and a rolling update
//! shows the client no 503 and runs no POST twice.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use http::Method;
use rig::{
    draining_and_gone::DrainingAndGone,
    envoy::Envoy,
    executions,
    gateway::{Gateway, CLUSTER, HOST, LISTENER},
    mulligan::Mulligan,
    pods::{Pod, PodState},
    protocols, render, repo_root,
    rolling_update::RollingUpdate,
};
use serde_json::{json, Value};

#[path = "gateway/two_processes.rs"]
mod two_processes;

/// The virtual host the shipped policy names (beside [`LISTENER`] and
/// [`CLUSTER`]).
const VHOST: &str = "default/eg/http/www_example_com";

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM: &str = "envoy.filters.network.http_connection_manager";

fn fixtures() -> std::path::PathBuf {
    rig::envoy_gateway_fixtures()
}

fn yaml_docs(path: std::path::PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// The shipped EnvoyPatchPolicy.
fn patch_policy() -> Value {
    yaml_docs(repo_root().join("envoy-config/gateway/patch-policy.yaml")).remove(0)
}

// ---------------------------------------------------------------- the CRD

/// The CRD's schema, made strict like `kubectl apply --validate=strict`:
/// an unknown field is an error, not silently pruned.
fn crd_schema(plural: &str) -> Value {
    let crd =
        yaml_docs(fixtures().join(format!("crds/gateway.envoyproxy.io_{plural}.yaml"))).remove(0);
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    schema
}

fn strict(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        let open = o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if o.contains_key("properties") && !o.contains_key("additionalProperties") && !open {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
        for (_, child) in o.iter_mut() {
            strict(child);
        }
    } else if let Some(a) = v.as_array_mut() {
        a.iter_mut().for_each(strict);
    }
}

fn validate(doc: &Value) -> Result<(), Vec<String>> {
    let schema = crd_schema("envoypatchpolicies");
    let validator = jsonschema::validator_for(&schema).expect("CRD schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[test]
fn the_patch_policy_validates_against_envoy_gateways_crd() {
    let policy = patch_policy();
    assert_eq!(policy["kind"], "EnvoyPatchPolicy");
    if let Err(e) = validate(&policy) {
        panic!("EnvoyPatchPolicy mulligan: {e:#?}");
    }
}

#[test]
fn the_crd_check_catches_typos_and_bad_values() {
    let mut op = patch_policy();
    op["spec"]["jsonPatches"][0]["operation"]["op"] = json!("merge");
    assert!(validate(&op).is_err(), "an unknown op must fail");
    let mut typo = patch_policy();
    typo["spec"]["jsonPatches"][0]["operation"]["jsonpath"] = json!("$");
    assert!(validate(&typo).is_err(), "an unknown field must fail");
    let mut kind = patch_policy();
    kind["spec"]["jsonPatches"][0]["type"] =
        json!("type.googleapis.com/envoy.config.listener.v3.Filter");
    assert!(validate(&kind).is_err(), "only five resource types patch");
}

// ------------------------------------------- Envoy Gateway's translation

/// proto JSON in camelCase (the dumps) to field names, which Envoy Gateway
/// marshals resources with before patching (`protojson` `UseProtoNames`).
/// Map keys that are names (filter names in typed_per_filter_config,
/// `@type`, metadata namespaces) are kept.
fn snake(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let keep = k.starts_with('@') || k.contains('.') || k.contains('/');
                    let key = if keep {
                        k
                    } else {
                        let mut s = String::with_capacity(k.len() + 4);
                        for c in k.chars() {
                            if c.is_ascii_uppercase() {
                                s.push('_');
                                s.push(c.to_ascii_lowercase());
                            } else {
                                s.push(c);
                            }
                        }
                        s
                    };
                    (key, snake(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(snake).collect()),
        other => other,
    }
}

/// The field that names a resource of `type_url`: a load assignment is
/// called by its `cluster_name`, everything else by its `name`.
fn name_field(type_url: &str) -> &'static str {
    if type_url == ENDPOINT_TYPE {
        "cluster_name"
    } else {
        "name"
    }
}

/// What Envoy Gateway sends one Envoy: its resources by type URL, in the
/// form it patches them (field names, no top-level `@type`).
#[derive(Clone, Debug)]
struct Translation {
    resources: BTreeMap<&'static str, Vec<Value>>,
}

impl Translation {
    /// The `egctl x translate` output for the fixtures' Gateway `eg`.
    fn egctl() -> Translation {
        let dump = yaml_docs(fixtures().join("egctl-translate/from-gateway-api-to-xds.out.yaml"))
            .remove(0);
        let configs = dump["xds"]["default/eg"]["configs"]
            .as_array()
            .expect("configs")
            .clone();
        let section = |dump_type: &str, list: &str, inner: &[&str]| -> Vec<Value> {
            let c = configs
                .iter()
                .find(|c| c["@type"].as_str().is_some_and(|s| s.ends_with(dump_type)))
                .unwrap_or_else(|| panic!("no {dump_type}"));
            c[list]
                .as_array()
                .unwrap_or_else(|| panic!("{dump_type}.{list}"))
                .iter()
                .map(|item| {
                    let mut v = inner.iter().fold(item, |v, k| &v[*k]).clone();
                    v.as_object_mut().map(|o| o.remove("@type"));
                    snake(v)
                })
                .collect()
        };
        let mut resources = BTreeMap::new();
        resources.insert(
            LISTENER_TYPE,
            section(
                "ListenersConfigDump",
                "dynamicListeners",
                &["activeState", "listener"],
            ),
        );
        resources.insert(
            ROUTE_TYPE,
            section("RoutesConfigDump", "dynamicRouteConfigs", &["routeConfig"]),
        );
        resources.insert(
            CLUSTER_TYPE,
            section("ClustersConfigDump", "dynamicActiveClusters", &["cluster"]),
        );
        resources.insert(
            ENDPOINT_TYPE,
            section(
                "EndpointsConfigDump",
                "dynamicEndpointConfigs",
                &["endpointConfig"],
            ),
        );
        Translation { resources }
    }

    /// One of the fixtures' `xds/<name>.*.yaml` sets: Envoy Gateway's
    /// translator output for a test of its own.
    fn xds(name: &str) -> Translation {
        let part = |kind: &str| -> Vec<Value> {
            let path = fixtures().join(format!("xds/{name}.{kind}.yaml"));
            match yaml_docs(path).remove(0) {
                Value::Array(items) => items.into_iter().map(snake).collect(),
                other => panic!("{name}.{kind}: a list, not {other}"),
            }
        };
        let mut resources = BTreeMap::new();
        resources.insert(LISTENER_TYPE, part("listeners"));
        resources.insert(ROUTE_TYPE, part("routes"));
        resources.insert(CLUSTER_TYPE, part("clusters"));
        resources.insert(ENDPOINT_TYPE, part("endpoints"));
        Translation { resources }
    }

    /// The resource of `type_url` called `name` (a load assignment is
    /// called by its `cluster_name`), as Envoy Gateway finds it.
    fn find_mut(&mut self, type_url: &str, name: &str) -> Option<&mut Value> {
        let key = name_field(type_url);
        self.resources
            .get_mut(type_url)?
            .iter_mut()
            .find(|r| r[key] == name)
    }

    fn get(&self, type_url: &str, name: &str) -> &Value {
        self.clone_find(type_url, name)
            .unwrap_or_else(|| panic!("no {type_url} {name}"))
    }

    fn clone_find(&self, type_url: &str, name: &str) -> Option<&Value> {
        let key = name_field(type_url);
        self.resources
            .get(type_url)?
            .iter()
            .find(|r| r[key] == name)
    }

    /// Envoy Gateway's translation had these pods been the Service's
    /// endpoints: each load assignment's endpoints become one per pod (a
    /// copy of its first, address rewritten).
    fn with_pods(mut self, pods: &[SocketAddr]) -> Translation {
        for cla in self.resources.get_mut(ENDPOINT_TYPE).into_iter().flatten() {
            let locality = &mut cla["endpoints"][0];
            let template = locality["lb_endpoints"][0].clone();
            let endpoints: Vec<Value> = pods
                .iter()
                .map(|p| {
                    let mut ep = template.clone();
                    ep["endpoint"]["address"] = json!({"socket_address": {
                        "address": p.ip().to_string(), "port_value": p.port()}});
                    ep
                })
                .collect();
            locality["lb_endpoints"] = Value::Array(endpoints);
        }
        self
    }
}

// ------------------------------ Envoy Gateway's EnvoyPatchPolicy semantics

/// Envoy Gateway's way of applying an EnvoyPatchPolicy (its
/// `internal/xds/translator/jsonpatch.go` and `internal/utils/jsonpatch`,
/// v1.9 line), to test the policy against instead of trusting it:
/// - each patch applies on its own; one that fails is reported in the
///   policy's status and skipped, and the others still apply;
/// - `op: add` with neither `path` nor `jsonPath` adds `value` as a whole
///   resource of `type`;
/// - otherwise the resource of `type` and `name` is patched (not found:
///   reported); `jsonPath` is evaluated on it, each match becomes a JSON
///   Pointer with `path` appended (no match: an error), and the operation
///   applies at each pointer in turn;
/// - an `add` first creates missing parents (json-patch's
///   `EnsurePathExistsOnAdd`: an array where the next step is an index or
///   `-`, an object otherwise).
struct EnvoyGateway;

impl EnvoyGateway {
    /// Applies `policy` to `t`; returns what Envoy Gateway would report.
    fn apply(policy: &Value, t: &mut Translation) -> Vec<String> {
        let mut errors = Vec::new();
        let patches = policy["spec"]["jsonPatches"]
            .as_array()
            .expect("jsonPatches");
        for (i, p) in patches.iter().enumerate() {
            if let Err(e) = Self::apply_one(p, t) {
                errors.push(format!("patch {i} ({} {}): {e}", p["type"], p["name"]));
            }
        }
        errors
    }

    fn apply_one(p: &Value, t: &mut Translation) -> Result<(), String> {
        let type_url = p["type"].as_str().ok_or("no type")?;
        let op = &p["operation"];
        let path = op["path"].as_str().unwrap_or("");
        let json_path = op["jsonPath"].as_str().unwrap_or("");
        if op["op"] == "add" && path.is_empty() && json_path.is_empty() {
            let list = t
                .resources
                .get_mut(type_url)
                .ok_or(format!("unsupported patch type {type_url}"))?;
            list.push(op["value"].clone());
            return Ok(());
        }
        let name = p["name"].as_str().ok_or("no name")?;
        let doc = t
            .find_mut(type_url, name)
            .ok_or(format!("resource not found: {type_url}/{name}"))?;
        let pointers = if json_path.is_empty() {
            vec![path.to_string()]
        } else {
            let query = serde_json_path::JsonPath::parse(json_path)
                .map_err(|e| format!("{json_path}: {e}"))?;
            let found: Vec<String> = query
                .query_located(doc)
                .locations()
                .map(|l| concat(&l.to_json_pointer(), path))
                .collect();
            if found.is_empty() {
                return Err(format!("no jsonPointers were found for {json_path}"));
            }
            found
        };
        for pointer in pointers {
            if op["op"] == "add" {
                ensure_parents(doc, &pointer);
            }
            let mut o = op.clone();
            let obj = o.as_object_mut().ok_or("operation")?;
            obj.remove("jsonPath");
            obj.insert("path".into(), Value::String(pointer.clone()));
            let patch: json_patch::Patch =
                serde_json::from_value(json!([o])).map_err(|e| e.to_string())?;
            json_patch::patch(doc, &patch).map_err(|e| format!("at {pointer}: {e}"))?;
        }
        Ok(())
    }
}

/// Envoy Gateway's join of a jsonPath match and `path`.
fn concat(pointer: &str, path: &str) -> String {
    if path.is_empty() {
        return pointer.to_string();
    }
    format!(
        "{}/{}",
        pointer.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Creates the missing parents of `pointer` in `doc`.
fn ensure_parents(doc: &mut Value, pointer: &str) {
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut at = doc;
    for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
        let next_is_index = parts[i + 1] == "-" || parts[i + 1].parse::<usize>().is_ok();
        let fresh = || {
            if next_is_index {
                json!([])
            } else {
                json!({})
            }
        };
        at = match at {
            Value::Object(o) => o.entry(part.clone()).or_insert_with(fresh),
            Value::Array(a) => {
                let idx = if part == "-" {
                    a.len()
                } else {
                    part.parse::<usize>().unwrap_or(a.len())
                };
                if idx >= a.len() {
                    a.push(fresh());
                }
                let last = a.len() - 1;
                &mut a[idx.min(last)]
            }
            _ => return,
        };
    }
}

/// The fixture translation with the shipped policy applied, and nothing
/// reported.
fn patched(pods: &[SocketAddr]) -> Translation {
    let mut t = Translation::egctl().with_pods(pods);
    let errors = EnvoyGateway::apply(&patch_policy(), &mut t);
    assert!(
        errors.is_empty(),
        "Envoy Gateway would report:\n{errors:#?}"
    );
    t
}

// -------------------------------------------------- the reference wiring

/// The reference bootstrap (`envoy-config/standalone/envoy.yaml`), with
/// its defaults, as JSON.
fn reference() -> Value {
    let app = ["127.0.0.1:18081".parse().expect("addr")];
    let text = render::standalone(&app, 50051, &[]);
    serde_yaml_ng::from_str(&text).expect("the reference bootstrap is YAML")
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// Every HTTP connection manager of a listener (field-name JSON).
fn hcms(listener: &Value) -> Vec<&Value> {
    listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&listener["default_filter_chain"]))
        .filter_map(|c| c["filters"].as_array())
        .flatten()
        .filter(|f| f["name"] == HCM)
        .map(|f| &f["typed_config"])
        .collect()
}

fn filter_names(hcm: &Value) -> Vec<&str> {
    hcm["http_filters"]
        .as_array()
        .expect("http_filters")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect()
}

/// Applied as Envoy Gateway applies it, the policy installs each piece of
/// the reference bootstrap's wiring, equal as JSON, where the reference
/// puts it: a change to either side that the other does not follow fails
/// here.
#[test]
fn the_patch_policy_installs_the_reference_wiring_into_envoy_gateways_translation() {
    let pods = ["127.0.0.1:18081".parse().expect("addr")];
    let before = Translation::egctl().with_pods(&pods);
    let t = patched(&pods);
    let r = reference();
    let statics = &r["static_resources"];
    let front = &named(&statics["listeners"], "mulligan")["filter_chains"][0]["filters"][0];
    let front = &front["typed_config"];
    let app = named(&statics["clusters"], "app");

    // Listener: mulligan.final right before the router, nothing else moved.
    let listener = t.get(LISTENER_TYPE, LISTENER);
    let hcm = hcms(listener)[0];
    let mut want = filter_names(hcms(before.get(LISTENER_TYPE, LISTENER))[0]);
    want.insert(want.len() - 1, "mulligan.final");
    assert_eq!(filter_names(hcm), want);
    assert_eq!(
        named(&hcm["http_filters"], "mulligan.final"),
        named(&front["http_filters"], "mulligan.final")
    );

    // Route: the retry policy and the headers no client may send; the
    // virtual host's attempt count (the gate).
    let routes = t.get(ROUTE_TYPE, LISTENER);
    let vhost = named(&routes["virtual_hosts"], VHOST);
    let ref_vhost = &front["route_config"]["virtual_hosts"][0];
    assert_eq!(vhost["include_request_attempt_count"], json!(true));
    assert_eq!(ref_vhost["include_request_attempt_count"], json!(true));
    let route = &vhost["routes"][0];
    assert_eq!(route["route"]["cluster"], CLUSTER);
    assert_eq!(
        route["route"]["retry_policy"],
        ref_vhost["routes"][0]["route"]["retry_policy"]
    );
    assert_eq!(
        route["request_headers_to_remove"],
        ref_vhost["routes"][0]["request_headers_to_remove"]
    );

    // Cluster: upstream filters (and HTTP/1.1, the reference's default),
    // outlier detection, panic threshold, circuit breakers.
    let cluster = t.get(CLUSTER_TYPE, CLUSTER);
    for field in ["typed_extension_protocol_options", "outlier_detection"] {
        assert_eq!(cluster[field], app[field], "{field}");
    }
    assert_eq!(
        cluster["common_lb_config"]["healthy_panic_threshold"],
        app["common_lb_config"]["healthy_panic_threshold"]
    );
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0],
        app["circuit_breakers"]["thresholds"][0]
    );

    // Endpoints: the hold, one priority below the pods, and the factor that
    // keeps traffic on the pods while any is healthy.
    let cla = t.get(ENDPOINT_TYPE, CLUSTER);
    let ref_cla = &app["load_assignment"];
    assert_eq!(cla["endpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(cla["endpoints"][1], ref_cla["endpoints"][1]);
    assert_eq!(cla["policy"], ref_cla["policy"]);

    // Added: the hold's listeners and cluster as the reference has them;
    // mulligan's cluster the same but for where mulligan is (a Service
    // name here, resolved by DNS).
    for name in ["mulligan_hold", "mulligan_hold_answer"] {
        assert_eq!(
            t.get(LISTENER_TYPE, name),
            named(&statics["listeners"], name)
        );
    }
    assert_eq!(
        t.get(CLUSTER_TYPE, "mulligan_hold_answer"),
        named(&statics["clusters"], "mulligan_hold_answer")
    );
    let mut mulligan = t.get(CLUSTER_TYPE, "mulligan").clone();
    assert_eq!(mulligan["type"], "STRICT_DNS");
    let sa = &mut mulligan["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(sa["address"], "mulligan.mulligan-system.svc.cluster.local");
    sa["address"] = json!("127.0.0.1");
    mulligan["type"] = json!("STATIC");
    assert_eq!(&mulligan, named(&statics["clusters"], "mulligan"));

    // Everything else is as Envoy Gateway made it.
    for (type_url, list) in &before.resources {
        for r in list {
            let name = r["name"].as_str().or(r["cluster_name"].as_str());
            let name = name.expect("named resource");
            let touched = [LISTENER, CLUSTER].contains(&name);
            if !touched {
                assert_eq!(t.get(type_url, name), r, "{type_url} {name} changed");
            }
        }
    }
}

/// Where the policy's names do not fit the translation (another Gateway,
/// route or hostname), Envoy Gateway reports each patch that found nothing
/// (the policy is then not `Programmed`), and the patches that only add
/// resources still apply: harmless on their own (an unused cluster and two
/// internal listeners), the hold's listeners ready for when the names fit.
#[test]
fn a_policy_whose_names_do_not_fit_is_reported_patch_by_patch() {
    let mut t = Translation::egctl();
    let mut policy = patch_policy();
    let text = policy.to_string().replace(LISTENER, "default/other/http");
    policy = serde_json::from_str(&text).expect("json");
    let errors = EnvoyGateway::apply(&policy, &mut t);
    let named_patches = policy["spec"]["jsonPatches"]
        .as_array()
        .expect("patches")
        .iter()
        .filter(|p| p["operation"]["path"].is_string() || p["operation"]["jsonPath"].is_string())
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("default/"))
        })
        .count();
    assert_eq!(errors.len(), named_patches, "{errors:#?}");
    assert!(errors.iter().all(|e| e.contains("default/other/http")));
    assert!(t.clone_find(LISTENER_TYPE, "mulligan_hold").is_some());
    // The cluster's patches did apply: they name it, not the listener.
    assert!(t.get(CLUSTER_TYPE, CLUSTER)["outlier_detection"].is_object());
}

/// For another Gateway, the names the policy's header lists are all a user
/// changes: here Envoy Gateway's own retry test translation (a listener
/// `first-listener`, two virtual hosts, three routes to one cluster with
/// BackendTrafficPolicy retry policies). Every patch fits; every route to
/// the cluster gets mulligan's retry policy whole (the 5xx-style triggers,
/// the retry priority that would send retries to the hold, gone); Envoy
/// accepts the result.
#[test]
fn with_its_names_changed_the_policy_fits_another_gateway() {
    let mut t = Translation::xds("retry");
    let text = patch_policy()
        .to_string()
        .replace(VHOST, "first-listener/foo")
        .replace(LISTENER, "first-listener")
        .replace(CLUSTER, "first-route-dest");
    let policy: Value = serde_json::from_str(&text).expect("json");
    let errors = EnvoyGateway::apply(&policy, &mut t);
    assert!(errors.is_empty(), "{errors:#?}");
    let shipped = patch_policy()["spec"]["jsonPatches"]
        .as_array()
        .expect("patches")
        .iter()
        .find(|p| p["operation"]["path"] == "/retry_policy")
        .map(|p| p["operation"]["value"].clone())
        .expect("the retry policy patch");
    let routes = t.get(ROUTE_TYPE, "first-listener");
    let mut wired = 0;
    for vhost in routes["virtual_hosts"].as_array().expect("vhosts") {
        for route in vhost["routes"].as_array().expect("routes") {
            assert_eq!(route["route"]["retry_policy"], shipped, "{}", route["name"]);
            wired += 1;
        }
        let gated = vhost["name"] == "first-listener/foo";
        assert_eq!(
            vhost["include_request_attempt_count"]
                .as_bool()
                .unwrap_or(false),
            gated,
            "{}",
            vhost["name"]
        );
    }
    assert_eq!(wired, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("retry.json");
    std::fs::write(&path, bootstrap(&t).to_string()).expect("write");
    if let Err(e) = rig::envoy::validate(&path) {
        panic!("Envoy rejected the patched translation:\n{e}");
    }
}

// ------------------------------------------------------------ Envoy runs it

/// An Envoy bootstrap holding the translation as static resources: each
/// HTTP connection manager with its route configuration inline, EDS
/// clusters STATIC with their (patched) load assignment, listeners on
/// loopback ports of the system's choosing, and the internal listener
/// extension the hold needs (the EnvoyProxy's bootstrap merge). UDP
/// listeners are left out: the Envoy build the tests run has no UDP proxy,
/// and the policy does not touch them.
fn bootstrap(t: &Translation) -> Value {
    let routes = &t.resources[ROUTE_TYPE];
    let mut listeners: Vec<Value> = t.resources[LISTENER_TYPE]
        .iter()
        .filter(|l| l["address"]["socket_address"]["protocol"] != "UDP")
        .cloned()
        .collect();
    for l in &mut listeners {
        if l["address"]["socket_address"].is_object() {
            l["address"] = json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}});
        }
        inline_routes(l, routes);
    }
    let mut clusters = t.resources[CLUSTER_TYPE].clone();
    for c in &mut clusters {
        if c["type"] == "EDS" {
            let name = c["name"].as_str().expect("name").to_string();
            let cla = t.get(ENDPOINT_TYPE, &name).clone();
            let obj = c.as_object_mut().expect("cluster");
            obj.remove("eds_cluster_config");
            obj.insert("type".into(), json!("STATIC"));
            obj.insert("load_assignment".into(), cla);
        }
    }
    json!({
        "node": {"id": "gateway-test", "cluster": "gateway-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
        }],
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

fn inline_routes(listener: &mut Value, routes: &[Value]) {
    if let Some(chains) = listener["filter_chains"].as_array_mut() {
        for chain in chains {
            inline_chain(chain, routes);
        }
    }
    if listener["default_filter_chain"].is_object() {
        inline_chain(&mut listener["default_filter_chain"], routes);
    }
}

fn inline_chain(chain: &mut Value, routes: &[Value]) {
    for f in chain["filters"].as_array_mut().into_iter().flatten() {
        if f["name"] != HCM {
            continue;
        }
        let hcm = f["typed_config"].as_object_mut().expect("hcm");
        let Some(rds) = hcm.remove("rds") else {
            continue;
        };
        let name = &rds["route_config_name"];
        let config = routes
            .iter()
            .find(|r| &r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no route configuration {name}"));
        hcm.insert("route_config".into(), config);
    }
}

#[test]
fn the_patched_translation_passes_envoy_validate() {
    let t = patched(&["127.0.0.1:18081".parse().expect("addr")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eg.json");
    std::fs::write(&path, bootstrap(&t).to_string()).expect("write");
    if let Err(e) = rig::envoy::validate(&path) {
        panic!("Envoy rejected the patched translation:\n{e}");
    }
}

/// Pods, the real mulligan (knowing them as the endpoints of [`CLUSTER`]),
/// and Envoy running Envoy Gateway's translation for those pods with the
/// policy applied. mulligan's cluster points at the test's mulligan
/// instead of the Service name; the message timeout is the tests' 2 s.
async fn patched_gateway(pods: &[SocketAddr]) -> Gateway {
    let mulligan = Mulligan::beside_gateway(pods, CLUSTER).await;
    let mut t = patched(pods);
    let m = t
        .find_mut(CLUSTER_TYPE, "mulligan")
        .expect("mulligan cluster");
    m["type"] = json!("STATIC");
    m["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = json!({
        "socket_address": {"address": "127.0.0.1", "port_value": mulligan.grpc.port()}});
    // mulligan's answers are under test, not Envoy's patience with a
    // CPU-starved debug build: the message timeout is widened.
    let envoy = Envoy::start(&rig::render::tolerant_json(&bootstrap(&t).to_string())).await;
    Gateway::around(mulligan, envoy, ()).await
}

/// Healthy requests open no stream; with a pod draining and one gone,
/// every request is served by the ready pod ([`DrainingAndGone`]), and
/// none runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patched_gateway_retries_failed_attempts_and_asks_mulligan_only_about_them() {
    let pods = DrainingAndGone::start().await;
    let gw = patched_gateway(&pods.addrs()).await;
    pods.run(&gw).await;
    assert!(executions::run_twice(pods.pods(), "").is_empty());
    // Every retry that reached a pod passed the gate once, on a stream of
    // its own (a retry refused by the gone pod never gets that far): the
    // virtual host's attempt count reached mulligan.attempt.
    let retries = gw.cluster_stat("upstream_rq_retry").await as f64;
    let refused = gw.cluster_stat("upstream_cx_connect_fail").await as f64;
    let passed = gw.mulligan.answers("pass").await;
    assert!(
        passed >= 1.0 && passed <= retries && passed >= retries - refused,
        "{passed} retries passed the gate; {retries} retries, {refused} refused\n{}",
        gw.mulligan.answer_counts().await
    );
}

/// A pod that runs each request and then fails it (a plain 503, no drain
/// signal): a POST it ran is not run again, whoever would retry it (the
/// route's triggers have no 5xx, mulligan does not ask, and the gate would
/// stop a retry Envoy made on its own); its 503 stands, as with Envoy
/// alone. (A GET may be retried: running it twice is safe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_app_ran_and_failed_is_not_run_again() {
    let failing = Pod::start("failing", PodState::Failing).await;
    let ready = Pod::start("ready", PodState::Ready).await;
    let gw = patched_gateway(&[failing.addr, ready.addr]).await;
    for i in 0..40 {
        let (method, id) = if i % 2 == 0 {
            (Method::POST, format!("post-{i}"))
        } else {
            (Method::GET, format!("get-{i}"))
        };
        let (status, pod) = gw.send(method, "/echo", &id).await;
        let want = if pod == "ready" { 200 } else { 503 };
        assert_eq!(status, want, "{id}, answered by {pod:?}");
    }
    let twice = executions::run_twice([&failing, &ready], "post-");
    assert_eq!(twice, vec![], "a POST ran twice");
    assert!(failing.served() > 0, "no request reached the failing pod");
}

/// Envoy Gateway forwards WebSocket upgrades on every route; Envoy 1.40
/// crashes when an upstream ext_proc sees the 5xx answer to one. The
/// patched matchers leave upgrades to Envoy alone: Envoy stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_answered_5xx_through_the_patched_gateway_leaves_envoy_up() {
    let pod = Pod::start("a", PodState::Ready).await;
    let gw = patched_gateway(&[pod.addr]).await;
    for i in 0..4 {
        let ws = protocols::upgrade_host(gw.front, "/status/500", HOST[0].1).await;
        assert_eq!(ws.status, 500, "upgrade {i}: {}", ws.head);
    }
    let (status, _) = gw.send(Method::GET, "/", "after").await;
    assert_eq!(status, 200, "Envoy is still up");
    // Only mulligan.final (on the listener, where ext_proc is safe) saw
    // the 500s; mulligan.attempt opened nothing.
    let answers = gw.mulligan.answer_counts().await;
    assert_eq!(gw.mulligan.streams().await, 4.0, "{answers}");
    assert_eq!(gw.mulligan.answers("final").await, 4.0, "{answers}");
}

/// A POST to a gateway whose only pod is gone: Envoy retries the refused
/// connection, the ejected pod leaves the patched-in hold (priority 1) as
/// the only endpoint, and its 503 goes to mulligan, which holds it; when
/// the pod comes back the POST is served whole, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pod_left_a_request_waits_at_the_patched_hold_then_is_served() {
    let only = Pod::start("only", PodState::Gone).await;
    let gw = Arc::new(patched_gateway(&[only.addr]).await);
    let request = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { gw.send(Method::POST, "/echo", "held").await })
    };
    // The hold answered (its answer is what mulligan holds).
    let answered = "http.mulligan_hold_answer.downstream_rq_completed";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gw.envoy.stat(answered).await == 0 {
        if request.is_finished() {
            let (status, _) = request.await.expect("request task");
            panic!(
                "answered {status} before the hold did: {}",
                gw.mulligan.answer_counts().await
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never answered within 20s: {}\n{}",
            gw.envoy.stats("mulligan_hold").await,
            gw.mulligan.answer_counts().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!request.is_finished(), "the request is held, not answered");
    only.set_state(PodState::Ready).await;
    let (status, _) = request.await.expect("request task");
    assert_eq!(status, 200, "{}", gw.mulligan.answer_counts().await);
    assert_eq!(only.served(), 1);
    assert!(gw.mulligan.answers("retry_after_hold").await >= 1.0);
    assert_eq!(gw.mulligan.answers("final").await, 0.0);
}

/// A rolling update ([`RollingUpdate`]) behind the patched gateway: the
/// client sees no 503, every request runs once (no POST twice), and
/// mulligan is asked only about failed attempts and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_behind_the_patched_gateway_shows_the_client_no_503() {
    let update = RollingUpdate::start().await;
    let gw = patched_gateway(&update.addrs()).await;
    update.run(&gw).await;
    let twice = executions::run_twice(update.pods(), "");
    assert_eq!(twice, vec![], "a request ran twice");
}

/// The Kubernetes manifests for mulligan itself: every file the
/// kustomizations name exists and parses, the ConfigMap's mulligan.toml is a
/// valid config (checked by the binary), the Deployment runs it with the
/// probes and ports mulligan serves, and the policy's mulligan cluster is
/// the Service's gRPC port.
#[test]
#[cfg_attr(
    not(feature = "kubernetes"),
    ignore = "the ConfigMap enables Kubernetes discovery"
)]
fn the_kubernetes_manifests_fit_the_binary_and_the_policy() {
    let dir = repo_root().join("envoy-config/gateway");
    for k in ["kustomization.yaml", "kubernetes/kustomization.yaml"] {
        let path = dir.join(k);
        let kz = yaml_docs(path.clone()).remove(0);
        let base = path.parent().expect("dir").to_path_buf();
        for r in kz["resources"].as_array().expect("resources") {
            let r = base.join(r.as_str().expect("resource path"));
            assert!(r.exists(), "{} names missing {}", k, r.display());
            if r.is_file() {
                assert!(!yaml_docs(r).is_empty());
            }
        }
    }
    let docs: Vec<Value> = ["configmap.yaml", "deployment.yaml", "service.yaml"]
        .iter()
        .flat_map(|f| yaml_docs(dir.join("kubernetes").join(f)))
        .collect();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).expect(kind).clone();

    let toml = find("ConfigMap")["data"]["mulligan.toml"]
        .as_str()
        .expect("mulligan.toml in the ConfigMap")
        .to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("mulligan.toml");
    std::fs::write(&file, &toml).expect("write");
    rig::mulligan::assert_success(&rig::mulligan::check_config(&file));
    let cfg = mulligan::config::Config::parse("mulligan.toml", &toml).expect("valid");

    let deploy = find("Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!(["serve", "--config", "/etc/mulligan/mulligan.toml"])
    );
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(port("grpc"), u64::from(cfg.listen.grpc.port()));
    assert_eq!(port("admin"), u64::from(cfg.listen.admin.port()));
    assert!(
        cfg.listen.grpc.ip().is_unspecified(),
        "in a pod mulligan must listen on all addresses"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The grace period outlasts mulligan's own drain.
    let grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(grace > cfg.shutdown.drain_timeout.as_secs() + 5);

    // The policy's mulligan cluster: the Service's gRPC port, by its
    // cluster DNS name, spoken as h2c.
    let svc = find("Service");
    let added = patch_policy()["spec"]["jsonPatches"]
        .as_array()
        .expect("patches")
        .iter()
        .find(|p| p["operation"]["value"]["name"] == "mulligan")
        .map(|p| p["operation"]["value"].clone())
        .expect("the mulligan cluster");
    let sa = &added["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    let ns = yaml_docs(dir.join("kubernetes/kustomization.yaml")).remove(0)["namespace"].clone();
    assert_eq!(
        sa["address"],
        json!(format!(
            "{}.{}.svc.cluster.local",
            svc["metadata"]["name"].as_str().expect("service name"),
            ns.as_str().expect("namespace")
        ))
    );
    assert!(svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["port"] == sa["port_value"] && p["appProtocol"] == "kubernetes.io/h2c"));
}
