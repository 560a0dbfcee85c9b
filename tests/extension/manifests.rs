//! What we ship for the extension-server path (`envoy-config/gateway/`)
//! agrees with itself and with the server: the CRD's schema and the
//! server's own checks accept and reject the same policies, and Envoy
//! Gateway's configuration points at the Deployment as deployed.

use mulligan::extension::policy::{self, Parsed};
use serde_json::{json, Value};

use super::policy as mk_policy;
use rig::repo_root;

fn docs(rel: &str) -> Vec<Value> {
    let path = repo_root().join("envoy-config/gateway").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn crd_validator() -> jsonschema::Validator {
    let crd = docs("crds/mulligan.dev_mulliganpolicies.yaml").remove(0);
    assert_eq!(crd["spec"]["group"], "mulligan.dev");
    assert_eq!(crd["spec"]["names"]["kind"], policy::KIND);
    assert_eq!(
        format!(
            "mulligan.dev/{}",
            crd["spec"]["versions"][0]["name"]
                .as_str()
                .expect("version")
        ),
        policy::API_VERSION
    );
    jsonschema::validator_for(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        .expect("schema compiles")
}

fn server_accepts(doc: &Value) -> bool {
    match policy::parse(&serde_json::to_vec(doc).expect("json")) {
        Parsed::Valid(_) => true,
        Parsed::Invalid { .. } => false,
        Parsed::NotOurs => panic!("not ours: {doc}"),
    }
}

#[test]
fn the_crd_and_the_server_accept_and_reject_the_same_policies() {
    let crd = crd_validator();
    let shipped = docs("extension-server/mulligan-policy.yaml");
    assert_eq!(shipped.len(), 2);
    let gw = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}]);
    let mut cases: Vec<(Value, bool)> = shipped.into_iter().map(|d| (d, true)).collect();
    cases.extend([
        (mk_policy("minimal", gw.clone(), json!({})), true),
        (
            mk_policy(
                "budget",
                gw.clone(),
                json!({"budget": {"numRetries": 20, "maxHold": "1m"}}),
            ),
            true,
        ),
        (
            mk_policy(
                "compound",
                gw.clone(),
                json!({"budget": {"maxHold": "1s500ms"}}),
            ),
            true,
        ),
        (
            mk_policy("zero", gw.clone(), json!({"budget": {"numRetries": 0}})),
            false,
        ),
        (
            mk_policy("many", gw.clone(), json!({"budget": {"numRetries": 21}})),
            false,
        ),
        (
            mk_policy("mode", gw.clone(), json!({"mode": "always"})),
            false,
        ),
        (
            mk_policy("typo", gw.clone(), json!({"budget": {"numRetrys": 2}})),
            false,
        ),
        (mk_policy("extra", gw.clone(), json!({"retries": 2})), false),
        (
            mk_policy("hold", gw.clone(), json!({"budget": {"maxHold": "soon"}})),
            false,
        ),
        (
            mk_policy(
                "service",
                json!([{"group": "", "kind": "Service", "name": "backend"}]),
                json!({}),
            ),
            false,
        ),
        (mk_policy("no-targets", json!([]), json!({})), false),
        (
            mk_policy(
                "grpc-rule",
                json!([{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "backend", "sectionName": "things"}]),
                json!({}),
            ),
            true,
        ),
        (
            mk_policy(
                "http-rule",
                json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "backend", "sectionName": "read"}]),
                json!({}),
            ),
            true,
        ),
        (
            mk_policy(
                "tcp",
                json!([{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "name": "backend"}]),
                json!({}),
            ),
            false,
        ),
    ]);
    for (doc, valid) in cases {
        let name = doc["metadata"]["name"].clone();
        assert_eq!(crd.is_valid(&doc), valid, "CRD on {name}: {doc}");
        assert_eq!(server_accepts(&doc), valid, "server on {name}: {doc}");
    }
    // Past what a schema can say: the server's 60 s ceiling on maxHold.
    let long = mk_policy("long", gw, json!({"budget": {"maxHold": "10m"}}));
    assert!(
        crd.is_valid(&long) && !server_accepts(&long),
        "reported by the server, not half-applied"
    );
}

fn flag<'a>(args: &'a [Value], name: &str) -> &'a str {
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
        .unwrap_or_else(|| panic!("no --{name}"))
}

#[test]
fn envoy_gateways_configuration_matches_the_deployed_server() {
    let cm = docs("extension-server/envoy-gateway-config.yaml").remove(0);
    let eg: Value =
        serde_yaml_ng::from_str(cm["data"]["envoy-gateway.yaml"].as_str().expect("config"))
            .expect("yaml");
    let em = &eg["extensionManager"];
    let helm = docs("extension-server/helm-values.yaml").remove(0);
    assert_eq!(
        &helm["config"]["envoyGateway"]["extensionManager"], em,
        "Helm values and ConfigMap say the same"
    );
    assert_eq!(
        em["policyResources"],
        json!([{"group": "mulligan.dev", "version": "v1alpha1", "kind": "MulliganPolicy"}])
    );
    assert_eq!(
        em["hooks"]["xdsTranslator"]["post"],
        json!(["Route", "Endpoints", "Translation"])
    );
    assert_eq!(
        em["hooks"]["xdsTranslator"]["translation"]["listener"]["includeAll"],
        true
    );
    assert_eq!(
        em["hooks"]["xdsTranslator"]["translation"]["route"]["includeAll"],
        true
    );

    let deployed = docs("extension-server/deployment.yaml");
    let (deployment, service) = (&deployed[0], &deployed[1]);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args");
    assert_eq!(args[0], "extension-server");
    let port = flag(args, "listen")
        .rsplit(':')
        .next()
        .expect("port")
        .parse::<u64>()
        .expect("port");
    let svc_port = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("grpc port");
    assert_eq!(svc_port["port"], em["service"]["fqdn"]["port"]);
    assert_eq!(svc_port["targetPort"], "grpc");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        json!(port)
    );
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().expect("name"),
        deployment["metadata"]["namespace"].as_str().expect("ns")
    );
    assert_eq!(em["service"]["fqdn"]["hostname"], json!(host));
    assert_eq!(em["maxMessageSize"], "16Mi");
    assert_eq!(
        flag(args, "max-message-bytes"),
        (16 * 1024 * 1024).to_string()
    );
    // The mulligan cluster the server adds points at mulligan's own Service.
    let mulligan_svc = docs("kubernetes/service.yaml").remove(0);
    let grpc = mulligan_svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("grpc");
    assert_eq!(
        flag(args, "mulligan-address"),
        format!(
            "mulligan.mulligan-system.svc.cluster.local:{}",
            grpc["port"]
        )
    );
    // The EnvoyProxy turns on the internal listener the hold needs.
    let proxy = docs("extension-server/envoy-proxy.yaml").remove(0);
    let bootstrap: Value =
        serde_yaml_ng::from_str(proxy["spec"]["bootstrap"]["value"].as_str().expect("value"))
            .expect("yaml");
    assert_eq!(
        bootstrap["bootstrap_extensions"][0]["name"],
        "envoy.bootstrap.internal_listener"
    );
}
