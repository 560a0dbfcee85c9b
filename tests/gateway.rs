//! What we ship for Envoy Gateway (`envoy-config/gateway/`), proven against
//! Envoy Gateway's own output (`shared/fixtures/envoy-gateway`): the
//! resources validate against its CRDs, the EnvoyPatchPolicy applies to the
//! xDS it generates, and the result loads and serves in real Envoy with
//! mulligan attached as the EnvoyExtensionPolicy attaches it.

use std::{net::SocketAddr, path::PathBuf};

use http::Method;
use rig::{
    client::{self, HttpClient, Proto},
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
    pods::{Pod, PodState},
    repo_root,
};
use serde_json::{json, Value};

const FILTER: &str = "envoy.filters.http.ext_proc/envoyextensionpolicy/default/mulligan/extproc/0";
const MULLIGAN_CLUSTER: &str = "envoyextensionpolicy/default/mulligan/0/mulligan";
const BACKEND_CLUSTER: &str = "httproute/default/backend/rule/0";

fn fixtures() -> PathBuf {
    rig::envoy_gateway_fixtures()
}

fn yaml_docs(path: PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn shipped() -> Vec<Value> {
    let dir = repo_root().join("envoy-config/gateway");
    let mut docs = Vec::new();
    for f in [
        "extension-policy.yaml",
        "patch-policy.yaml",
        "backend-traffic-policy.yaml",
    ] {
        docs.extend(yaml_docs(dir.join(f)));
    }
    docs
}

fn by_kind(kind: &str) -> Value {
    shipped()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} shipped"))
}

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
    let plural = match doc["kind"].as_str() {
        Some("EnvoyExtensionPolicy") => "envoyextensionpolicies",
        Some("EnvoyPatchPolicy") => "envoypatchpolicies",
        Some("BackendTrafficPolicy") => "backendtrafficpolicies",
        other => panic!("no CRD for {other:?}"),
    };
    let schema = crd_schema(plural);
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
fn every_shipped_envoy_gateway_resource_validates_against_its_crd() {
    let mut checked = 0;
    for doc in shipped() {
        if doc["apiVersion"] != "gateway.envoyproxy.io/v1alpha1" {
            continue; // ReferenceGrant: a Gateway API resource, no CRD in the fixtures.
        }
        if let Err(e) = validate(&doc) {
            panic!("{} {}: {e:#?}", doc["kind"], doc["metadata"]["name"]);
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn the_validation_catches_typos_and_bad_values() {
    let mut typo = by_kind("EnvoyExtensionPolicy");
    typo["spec"]["extProc"][0]["failopen"] = json!(true);
    assert!(validate(&typo).is_err(), "an unknown field must fail");
    let mut attr = by_kind("EnvoyExtensionPolicy");
    attr["spec"]["extProc"][0]["processingMode"]["response"]["attributes"][0] =
        json!("xds.cluster_name");
    assert!(
        validate(&attr).is_err(),
        "Envoy Gateway rejects xds.cluster_name here (hence the patch)"
    );
    let mut op = by_kind("EnvoyPatchPolicy");
    op["spec"]["jsonPatches"][0]["operation"]["op"] = json!("merge");
    assert!(validate(&op).is_err());
}

/// proto JSON in camelCase (the dumps) to field names (what patches use).
/// Map keys that are names (filter names in typed_per_filter_config, `@type`)
/// are kept.
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

/// The `default/eg/http` listener, its route configuration and the
/// backend cluster, from `egctl x translate` output, in field-name form.
fn envoy_gateway_xds() -> (Value, Value, Value) {
    let dump =
        yaml_docs(fixtures().join("egctl-translate/from-gateway-api-to-xds.out.yaml")).remove(0);
    let configs = dump["xds"]["default/eg"]["configs"]
        .as_array()
        .expect("configs")
        .clone();
    let of = |t: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|s| s.ends_with(t)))
            .cloned()
            .expect("config dump section")
    };
    let listener = of("ListenersConfigDump")["dynamicListeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["activeState"]["listener"].clone())
        .find(|l| l["name"] == "default/eg/http")
        .expect("listener default/eg/http");
    let routes = of("RoutesConfigDump")["dynamicRouteConfigs"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["routeConfig"].clone())
        .find(|r| r["name"] == "default/eg/http")
        .expect("route config default/eg/http");
    let cluster = of("ClustersConfigDump")["dynamicActiveClusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| c["cluster"].clone())
        .find(|c| c["name"] == BACKEND_CLUSTER)
        .expect("backend cluster");
    // In a bootstrap these are plain messages, not `Any`s.
    let bare = |mut v: Value| {
        v.as_object_mut().map(|o| o.remove("@type"));
        snake(v)
    };
    (bare(listener), bare(routes), bare(cluster))
}

fn hcm(listener: &mut Value) -> &mut Value {
    let chain = if listener["default_filter_chain"].is_object() {
        &mut listener["default_filter_chain"]
    } else {
        &mut listener["filter_chains"][0]
    };
    &mut chain["filters"][0]["typed_config"]
}

/// Attaches our EnvoyExtensionPolicy the way Envoy Gateway's translator
/// does (see `xds/ext-proc.*` in the fixtures): the ext_proc filter on the
/// listener, disabled, before the router; enabled per route.
fn attach_extension_policy(listener: &mut Value, routes: &mut Value) {
    let eep = by_kind("EnvoyExtensionPolicy");
    let ep = &eep["spec"]["extProc"][0];
    let mode = &ep["processingMode"];
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {
            "envoy_grpc": {"cluster_name": MULLIGAN_CLUSTER, "authority": "mulligan.mulligan-system:50051"},
            "timeout": "10s",
        },
        "failure_mode_allow": ep["failOpen"],
        "message_timeout": ep["messageTimeout"].as_str().map(|t| t.replace("ms", "")).map(|ms| format!("{}s", ms.parse::<f64>().unwrap_or(200.0) / 1000.0)),
        "allow_mode_override": mode["allowModeOverride"],
        "processing_mode": {
            "request_header_mode": if mode["request"].is_object() { "SEND" } else { "SKIP" },
            "response_header_mode": if mode["response"].is_object() { "SEND" } else { "SKIP" },
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
    });
    if let Some(a) = mode["response"]["attributes"].as_array() {
        typed["response_attributes"] = Value::Array(a.clone());
    }
    let filters = hcm(listener)["http_filters"]
        .as_array_mut()
        .expect("http_filters");
    let router = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.router")
        .expect("router");
    filters.insert(
        router,
        json!({"name": FILTER, "disabled": true, "typed_config": typed}),
    );
    for vh in routes["virtual_hosts"]
        .as_array_mut()
        .expect("virtual hosts")
    {
        for r in vh["routes"].as_array_mut().expect("routes") {
            if r["route"]["cluster"] == BACKEND_CLUSTER {
                r["typed_per_filter_config"] = json!({
                    FILTER: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
                });
            }
        }
    }
}

/// Applies the EnvoyPatchPolicy's patches for one resource as Envoy Gateway
/// does: each `jsonPath` match (RFC 9535) becomes a JSON Pointer, `path` is
/// appended, then the JSON Patch operation applies. No match is an error.
fn apply_patch_policy(resource_type: &str, name: &str, doc: &mut Value) -> Result<usize, String> {
    let epp = by_kind("EnvoyPatchPolicy");
    let mut applied = 0;
    for p in epp["spec"]["jsonPatches"].as_array().expect("jsonPatches") {
        if p["type"] != resource_type || p["name"] != name {
            continue;
        }
        let op = &p["operation"];
        let suffix = op["path"].as_str().unwrap_or("");
        let pointers: Vec<String> = match op["jsonPath"].as_str() {
            Some(jp) => {
                let path =
                    serde_json_path::JsonPath::parse(jp).map_err(|e| format!("{jp}: {e}"))?;
                let found: Vec<String> = path
                    .query_located(doc)
                    .locations()
                    .map(|l| format!("{}{suffix}", l.to_json_pointer()))
                    .collect();
                if found.is_empty() {
                    return Err(format!("jsonPath {jp} matched nothing"));
                }
                found
            }
            None => vec![suffix.to_string()],
        };
        for pointer in pointers {
            let mut o = op.clone();
            let obj = o.as_object_mut().expect("operation");
            obj.remove("jsonPath");
            obj.insert("path".into(), Value::String(pointer));
            let patch: json_patch::Patch =
                serde_json::from_value(json!([o])).map_err(|e| e.to_string())?;
            json_patch::patch(doc, &patch).map_err(|e| e.to_string())?;
            applied += 1;
        }
    }
    Ok(applied)
}

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

fn patched_filter(listener: &Value) -> Value {
    let filters = listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .or_else(|| {
            listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array()
        })
        .expect("http_filters");
    filters
        .iter()
        .find(|f| f["name"] == FILTER)
        .cloned()
        .expect("mulligan's filter")
}

#[test]
fn the_patch_policy_applies_to_envoy_gateways_xds() {
    let (mut listener, mut routes, _) = envoy_gateway_xds();
    // Without the extension policy attached, the patches find no filter and
    // Envoy Gateway would report the policy as failed: they target by name.
    let err = apply_patch_policy(LISTENER_TYPE, "default/eg/http", &mut listener.clone())
        .expect_err("no filter to patch");
    assert!(err.contains("matched nothing"), "{err}");

    attach_extension_policy(&mut listener, &mut routes);
    let applied =
        apply_patch_policy(LISTENER_TYPE, "default/eg/http", &mut listener).expect("patches apply");
    assert_eq!(applied, 4);
    let f = patched_filter(&listener)["typed_config"].clone();
    assert_eq!(f["mutation_rules"]["allow_envoy"], true);
    assert_eq!(f["max_message_timeout"], "15s");
    assert_eq!(f["request_attributes"], json!(["xds.cluster_name"]));
    let attrs = f["response_attributes"]
        .as_array()
        .expect("response attributes");
    assert!(attrs.contains(&json!("xds.cluster_name")) && attrs.contains(&json!("response.flags")));
}

/// A bootstrap with Envoy Gateway's listener, routes and backend cluster,
/// our policies applied, endpoints rewritten to loopback pods and mulligan.
fn envoy_gateway_bootstrap(pods: &[SocketAddr], mulligan_grpc: u16) -> Value {
    let (mut listener, mut routes, mut cluster) = envoy_gateway_xds();
    attach_extension_policy(&mut listener, &mut routes);
    apply_patch_policy(LISTENER_TYPE, "default/eg/http", &mut listener).expect("patches apply");
    listener["address"] = json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}});
    let h = hcm(&mut listener);
    h.as_object_mut().expect("hcm").remove("rds");
    h["route_config"] = routes;
    let endpoint = |a: &SocketAddr| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}});
    let c = cluster.as_object_mut().expect("cluster");
    c.remove("eds_cluster_config");
    c.insert("type".into(), json!("STATIC"));
    c.insert(
        "load_assignment".into(),
        json!({"cluster_name": BACKEND_CLUSTER, "endpoints": [{"lb_endpoints": pods.iter().map(endpoint).collect::<Vec<_>>()}]}),
    );
    json!({
        "node": {"id": "gateway-test", "cluster": "gateway-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster, {
                "name": MULLIGAN_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }},
                "load_assignment": {"cluster_name": MULLIGAN_CLUSTER, "endpoints": [{"lb_endpoints": [endpoint(&SocketAddr::from(([127, 0, 0, 1], mulligan_grpc)))]}]},
            }],
        },
    })
}

#[test]
fn the_patched_envoy_gateway_config_passes_envoy_validate() {
    let bootstrap = envoy_gateway_bootstrap(&["127.0.0.1:8080".parse().expect("addr")], 50051);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eg.json");
    std::fs::write(&path, bootstrap.to_string()).expect("write");
    if let Err(e) = rig::envoy::validate(&path) {
        panic!("Envoy rejected the patched config:\n{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mulligan_attached_as_envoy_gateway_attaches_it_rescues_a_rollout() {
    let ready = Pod::start("ready", PodState::Ready).await;
    let draining = Pod::start("draining", PodState::Draining).await;
    let gone = Pod::start("gone", PodState::Gone).await;
    let pods = [ready.addr, draining.addr, gone.addr];
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("mulligan.toml");
    let list = pods
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &cfg,
        format!("[budget]\nratio = 1.0\n[endpoints.clusters]\n\"{BACKEND_CLUSTER}\" = [{list}]\n"),
    )
    .expect("config");
    let mulligan = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let mut bootstrap = envoy_gateway_bootstrap(&pods, mulligan.grpc.port());
    let prefix = hcm(&mut bootstrap["static_resources"]["listeners"][0])["stat_prefix"]
        .as_str()
        .expect("Envoy Gateway's stat prefix")
        .to_string();
    let envoy = Envoy::start(&bootstrap.to_string()).await;
    let front = envoy.listener("default/eg/http").await;
    let http = HttpClient::new(Proto::Http1);
    let host = [("host", "www.example.com")];
    for i in 0..300 {
        let r = if i % 5 == 0 {
            http.send(
                Method::POST,
                front,
                "/echo",
                &host,
                client::full(payload(256)),
            )
            .await
        } else {
            http.send(Method::GET, front, "/", &host, client::empty())
                .await
        }
        .expect("request through Envoy Gateway's listener");
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    assert_eq!(ready.served(), 300, "every request executed exactly once");
    assert_eq!(draining.served(), 0);
    // mulligan learned the cluster from the patched-in attribute.
    let m = mulligan.metrics().await;
    assert!(
        rig::mulligan::parse_metric(&m, r#"mulligan_rescues_total{outcome="rescued"}"#) > 0.0,
        "{m}"
    );
    // Every request went through mulligan's filter, and none fell back.
    let started = envoy
        .stat(&format!("http.{prefix}.ext_proc.streams_started"))
        .await;
    assert!(started >= 300, "{}", envoy.stats("ext_proc").await);
    let fell_back = envoy
        .stat(&format!("http.{prefix}.ext_proc.failure_mode_allowed"))
        .await;
    assert_eq!(fell_back, 0);
}

/// The same Envoy Gateway-shaped config, on EDS, through the rollout
/// harness: a rolling update with a 2 s EDS lag under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_gateway_shaped_config_survives_a_rolling_update() {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };
    let (mut cspec, mut lspec) = rig::rollout::scenario::base();
    cspec.eds_lag_ms = 2000;
    cspec.cluster_name = BACKEND_CLUSTER.into();
    lspec.rate = 100.0;
    lspec.duration_s = 10.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = rig::rollout::cluster::Cluster::new(cspec, dir.path()).await;

    let cfg = dir.path().join("mulligan.toml");
    std::fs::write(
        &cfg,
        format!(
            "[endpoints]\neds_file = {:?}\neds_file_poll = \"20ms\"\n[probe]\npath = \"/ready\"\n",
            cluster.mulligan_eds().display().to_string()
        ),
    )
    .expect("config");
    let mulligan = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    cluster.add_mulligan(mulligan.admin);

    // Envoy Gateway's backend cluster, fed by the harness's EDS file; the
    // virtual host answers any Host (the load sends none).
    let mut bootstrap = envoy_gateway_bootstrap(&[], mulligan.grpc.port());
    let backend = &mut bootstrap["static_resources"]["clusters"][0];
    let obj = backend.as_object_mut().expect("cluster");
    obj.remove("load_assignment");
    obj.insert("type".into(), json!("EDS"));
    let eds = cluster.envoy_eds();
    obj.insert(
        "eds_cluster_config".into(),
        json!({"eds_config": {
            "path_config_source": {
                "path": eds.display().to_string(),
                "watched_directory": {"path": eds.parent().expect("dir").display().to_string()},
            },
            "resource_api_version": "V3",
        }}),
    );
    let h = hcm(&mut bootstrap["static_resources"]["listeners"][0]);
    h["route_config"]["virtual_hosts"][0]["domains"] = json!(["*"]);
    let envoy = Envoy::start(&bootstrap.to_string()).await;
    let front = envoy.listener("default/eg/http").await;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let until = start + Duration::from_secs_f64(lspec.duration_s);
    let controller = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            rig::rollout::scenario::script("rolling", cluster, until, Duration::from_secs(60))
                .await;
        })
    };
    let samples =
        rig::rollout::load::run(front, "C", &lspec, start, Arc::new(Mutex::new(vec![0])), 0).await;
    controller.abort();
    let errors: Vec<_> = samples.iter().filter_map(|s| s.error).collect();
    assert!(samples.len() >= 990, "the load ran: {}", samples.len());
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    assert!(
        cluster
            .events
            .lock()
            .expect("events")
            .iter()
            .any(|(_, e)| e.starts_with("rolling update to generation 2")),
        "a rolling update ran during the load"
    );
    // The rollout did push 503s at Envoy Gateway's config (no route retries
    // here), and mulligan turned them into answers.
    let rescued = mulligan
        .metric(r#"mulligan_rescues_total{outcome="rescued"}"#)
        .await;
    assert!(
        rescued >= 1.0,
        "nothing needed rescuing: the test proved nothing"
    );
}

/// The Kubernetes manifests for mulligan itself: every file the
/// kustomizations name exists and parses, the ConfigMap's mulligan.toml is a
/// valid config (checked by the binary), and the Deployment runs it with the
/// probes and ports mulligan serves.
#[test]
#[cfg_attr(
    not(feature = "kubernetes"),
    ignore = "the ConfigMap enables Kubernetes discovery"
)]
fn the_kubernetes_manifests_fit_the_binary() {
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
    // The EnvoyExtensionPolicy points at the Service's gRPC port.
    let svc = find("Service");
    let eep = by_kind("EnvoyExtensionPolicy");
    let backend = &eep["spec"]["extProc"][0]["backendRefs"][0];
    assert_eq!(backend["name"], svc["metadata"]["name"]);
    assert!(svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["port"] == backend["port"] && p["appProtocol"] == "kubernetes.io/h2c"));
}
