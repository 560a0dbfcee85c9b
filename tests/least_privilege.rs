//! The Extension Server is sent only what it uses: no Secrets.
//!
//! Envoy Gateway's `extensionManager.hooks.xdsTranslator.translation`
//! decides what PostTranslateModify carries. Its `secret.includeAll`
//! defaults to true: every translation then carries every TLS certificate
//! and private key of the gateway, and Envoy Gateway replaces its Secrets
//! with whatever the server answers. With false it sends none and keeps its
//! own. Two things are shown here:
//!   - the shipped configuration (ConfigMap and Helm values) sets it false
//!     and still sends what the wiring needs (listeners, routes, clusters);
//!   - the real `mulligan extension-server`, fed a translation with an
//!     HTTPS listener and its Secret as Envoy Gateway sends them with the
//!     default, answers with the same listeners, routes and clusters as for
//!     the same translation without the Secret, hands the Secret back byte
//!     for byte (so a gateway left at the default keeps its certificates),
//!     and puts no key material anywhere else.

use std::{collections::HashMap, path::PathBuf};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{cluster::DiscoveryType, Cluster},
            core::v3::{
                config_source::ConfigSourceSpecifier, data_source, transport_socket,
                AggregatedConfigSource, ConfigSource, DataSource, Metadata, TransportSocket,
            },
            listener::v3::{filter, Filter, FilterChain, Listener},
            route::v3::{
                route, route_action, route_match, Route, RouteAction, RouteConfiguration,
                RouteMatch, VirtualHost,
            },
        },
        extensions::{
            filters::network::http_connection_manager::v3::{
                http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds,
            },
            transport_sockets::tls::v3::{
                secret, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
                TlsCertificate,
            },
        },
    },
    google::protobuf::{value::Kind, Any, ListValue, Struct, Value as PbValue},
};
use mulligan::extension::api::{
    envoy_gateway_extension_client::EnvoyGatewayExtensionClient, raw, ExtensionResource,
    PostTranslateExtensionContext,
};
use prost::{Message, Name};
use serde_json::json;

const SECRET_NAME: &str = "default/example-cert";
const CLUSTER: &str = "httproute/default/backend/rule/0";
const CONFIG: &str = "default/eg/https";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join(path)).expect("read");
    serde_yaml_ng::from_str(&text).expect("yaml")
}

/// `translation` of the shipped ConfigMap and of the Helm values.
fn shipped_translation_configs() -> Vec<(&'static str, serde_json::Value)> {
    let cm = yaml("envoy-config/gateway/extension-server/envoy-gateway-config.yaml");
    let eg: serde_json::Value =
        serde_yaml_ng::from_str(cm["data"]["envoy-gateway.yaml"].as_str().expect("config"))
            .expect("EnvoyGateway yaml");
    let helm = yaml("envoy-config/gateway/extension-server/helm-values.yaml");
    vec![
        (
            "envoy-gateway-config.yaml",
            eg["extensionManager"]["hooks"]["xdsTranslator"]["translation"].clone(),
        ),
        (
            "helm-values.yaml",
            helm["config"]["envoyGateway"]["extensionManager"]["hooks"]["xdsTranslator"]
                ["translation"]
                .clone(),
        ),
    ]
}

/// Envoy Gateway's rule (api/v1alpha1 TranslationConfig): listeners and
/// routes are sent only when includeAll is true; clusters and secrets
/// unless includeAll is false.
fn sent(translation: &serde_json::Value, kind: &str) -> bool {
    let flag = translation[kind]["includeAll"].as_bool();
    match kind {
        "listener" | "route" => flag == Some(true),
        _ => flag != Some(false),
    }
}

#[test]
fn the_shipped_configuration_sends_no_secret_and_everything_the_wiring_reads() {
    for (file, translation) in shipped_translation_configs() {
        assert!(
            !sent(&translation, "secret"),
            "{file}: Envoy Gateway would send every Secret (translation.secret.includeAll \
             must be false): {translation}"
        );
        for kind in ["listener", "route", "cluster"] {
            assert!(
                sent(&translation, kind),
                "{file}: the server wires {kind}s but would not be sent them: {translation}"
            );
        }
    }
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn string(s: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `filter_metadata["envoy-gateway"].resources`, as Envoy Gateway labels
/// what a route or virtual host was made from.
fn eg_metadata(kind: &str, name: &str, section: Option<&str>) -> Metadata {
    let mut fields = HashMap::from([
        ("kind".to_string(), string(kind)),
        ("name".to_string(), string(name)),
        ("namespace".to_string(), string("default")),
    ]);
    if let Some(s) = section {
        fields.insert("sectionName".to_string(), string(s));
    }
    let resources = PbValue {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![PbValue {
                kind: Some(Kind::StructValue(Struct { fields })),
            }],
        })),
    };
    let eg = Struct {
        fields: HashMap::from([("resources".to_string(), resources)]),
    };
    Metadata {
        filter_metadata: HashMap::from([("envoy-gateway".to_string(), eg)]),
        ..Default::default()
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: 2, // V3
        ..Default::default()
    }
}

/// An HTTPS listener of Gateway `eg` whose certificate comes from the
/// Secret over SDS, as Envoy Gateway translates a listener with
/// `certificateRefs`.
fn https_listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "https-10443".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: CONFIG.into(),
        })),
        ..Default::default()
    };
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: SECRET_NAME.into(),
                sds_config: Some(ads()),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Listener {
        name: CONFIG.into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&tls))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn routes() -> RouteConfiguration {
    let route = Route {
        name: "httproute/default/backend/rule/0/match/0/www_example_com".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(CLUSTER.into())),
            ..Default::default()
        })),
        metadata: Some(eg_metadata("HTTPRoute", "backend", None)),
        ..Default::default()
    };
    RouteConfiguration {
        name: CONFIG.into(),
        virtual_hosts: vec![VirtualHost {
            name: "default/eg/https/www_example_com".into(),
            domains: vec!["www.example.com".into()],
            routes: vec![route],
            metadata: Some(eg_metadata("Gateway", "eg", Some("https"))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn cluster() -> Cluster {
    Cluster {
        name: CLUSTER.into(),
        cluster_discovery_type: Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                DiscoveryType::Eds as i32,
            ),
        ),
        eds_cluster_config: Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: CLUSTER.into(),
            },
        ),
        ..Default::default()
    }
}

/// The Secret as Envoy Gateway sends it: certificate chain and private key
/// inline, named `<namespace>/<name>` of the Kubernetes Secret.
fn tls_secret(cert_pem: &str, key_pem: &str) -> Secret {
    let inline = |pem: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    };
    Secret {
        name: SECRET_NAME.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

fn translation(secrets: Vec<Vec<u8>>) -> raw::PostTranslateModifyRequest {
    let policy = json!({
        "apiVersion": "mulligan.dev/v1alpha1",
        "kind": "MulliganPolicy",
        "metadata": { "name": "mulligan", "namespace": "default" },
        "spec": { "targetRefs": [{
            "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"
        }] },
    });
    raw::PostTranslateModifyRequest {
        post_translate_context: Some(PostTranslateExtensionContext {
            extension_resources: vec![ExtensionResource {
                unstructured_bytes: serde_json::to_vec(&policy).expect("json"),
            }],
        }),
        clusters: vec![cluster().encode_to_vec()],
        secrets,
        listeners: vec![https_listener().encode_to_vec()],
        routes: vec![routes().encode_to_vec()],
    }
}

fn decoded<M: Message + Default>(items: &[Vec<u8>]) -> Vec<M> {
    items
        .iter()
        .map(|b| M::decode(b.as_slice()).expect("the answer decodes"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_answer_neither_depends_on_nor_leaks_the_secret() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["www.example.com".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let key_pem = key.serialize_pem();
    let secret = tls_secret(&cert.pem(), &key_pem).encode_to_vec();

    let (_child, line) = rig::mulligan::spawn_announced(&[
        "extension-server",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--mulligan-address",
        "127.0.0.1:50051",
    ])
    .await;
    let mut client =
        EnvoyGatewayExtensionClient::connect(format!("http://{}", line.addr("extension")))
            .await
            .expect("connect");

    let with = client
        .post_translate_modify(translation(vec![secret.clone()]))
        .await
        .expect("PostTranslateModify with the Secret")
        .into_inner();
    let without = client
        .post_translate_modify(translation(vec![]))
        .await
        .expect("PostTranslateModify without Secrets")
        .into_inner();

    // The policy selected the route: the answer is the wiring, not an echo.
    let sent = translation(vec![]);
    assert!(
        without.routes != sent.routes && without.clusters.len() > sent.clusters.len(),
        "the server did not wire the HTTPS listener's route: the comparison below would prove nothing"
    );
    // Compared decoded: protobuf maps (metadata) encode in any order.
    assert!(
        decoded::<Cluster>(&with.clusters) == decoded::<Cluster>(&without.clusters),
        "the clusters differ when the Secret is sent"
    );
    assert!(
        decoded::<Listener>(&with.listeners) == decoded::<Listener>(&without.listeners),
        "the listeners differ when the Secret is sent"
    );
    assert!(
        decoded::<RouteConfiguration>(&with.routes)
            == decoded::<RouteConfiguration>(&without.routes),
        "the routes differ when the Secret is sent"
    );
    assert_eq!(
        with.secrets,
        vec![secret],
        "a gateway left at secret.includeAll=true replaces its Secrets with the answer's: \
         they must come back byte for byte"
    );
    assert!(without.secrets.is_empty(), "no Secret sent, none answered");
    let key_der = key.serialize_der();
    for (what, items) in [
        ("cluster", &with.clusters),
        ("listener", &with.listeners),
        ("route configuration", &with.routes),
    ] {
        for bytes in items.iter() {
            assert!(
                !contains(bytes, key_pem.as_bytes()) && !contains(bytes, &key_der),
                "the private key appears in a {what} of the answer"
            );
        }
    }
}
