//! mulligan as Envoy Gateway's Extension Server, tested on Envoy Gateway's
//! real translation output (`shared/fixtures/envoy-gateway`), over real gRPC
//! to the real binary, and the result run by real Envoy.

mod checks;
mod gateways;
mod generated;
mod grpc;
mod hooks;
mod hostile;
mod live;
mod manifests;
mod max_hold;
mod reference;
mod replicas;
mod server;
mod two_processes;
mod xds;

use checks::{assert_unchanged, assert_wired, Expect};
use envoy_types::pb::envoy::config::route::v3::Route;
use mulligan::extension::api::{
    envoy_gateway_extension_client::EnvoyGatewayExtensionClient, raw, ExtensionResource,
    PostRouteExtensionContext, PostTranslateModifyRequest, PostTranslateModifyResponse,
};
use prost::Message;
use serde_json::{json, Value};
use server::ExtensionServer;
use tonic::transport::Channel;

type Client = EnvoyGatewayExtensionClient<Channel>;

/// A MulliganPolicy in namespace `default`, as Envoy Gateway passes it.
fn policy(name: &str, target_refs: Value, rest: Value) -> Value {
    let mut spec = json!({ "targetRefs": target_refs });
    if let (Some(s), Some(r)) = (spec.as_object_mut(), rest.as_object()) {
        s.extend(r.clone());
    }
    json!({
        "apiVersion": "mulligan.dev/v1alpha1",
        "kind": "MulliganPolicy",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    })
}

fn gateway_ref(name: &str, section: Option<&str>) -> Value {
    let mut r = json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name });
    if let Some(s) = section {
        r["sectionName"] = json!(s);
    }
    r
}

fn httproute_ref(name: &str) -> Value {
    json!([{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name }])
}

/// The same message under another Rust type of the same wire format.
fn convert<A: Message, B: Message + Default>(a: &A) -> B {
    B::decode(a.encode_to_vec().as_slice()).expect("same wire format")
}

/// One PostTranslateModify call: the bytes sent and the bytes received.
async fn translate_raw(
    client: &mut Client,
    req: &PostTranslateModifyRequest,
) -> (
    raw::PostTranslateModifyRequest,
    raw::PostTranslateModifyResponse,
) {
    let sent: raw::PostTranslateModifyRequest = convert(req);
    let back = client
        .post_translate_modify(sent.clone())
        .await
        .expect("PostTranslateModify")
        .into_inner();
    (sent, back)
}

async fn translate(
    client: &mut Client,
    req: PostTranslateModifyRequest,
) -> PostTranslateModifyResponse {
    convert(&translate_raw(client, &req).await.1)
}

/// Every resource came back as the very bytes sent.
fn assert_same_bytes(
    what: &str,
    sent: &raw::PostTranslateModifyRequest,
    back: &raw::PostTranslateModifyResponse,
) {
    assert!(
        back.clusters == sent.clusters,
        "{what}: clusters not byte-identical"
    );
    assert!(
        back.secrets == sent.secrets,
        "{what}: secrets not byte-identical"
    );
    assert!(
        back.listeners == sent.listeners,
        "{what}: listeners not byte-identical"
    );
    assert!(
        back.routes == sent.routes,
        "{what}: routes not byte-identical"
    );
}

async fn route_hook(client: &mut Client, route: &Route, policies: &[Value]) -> Option<Vec<u8>> {
    let context = PostRouteExtensionContext {
        extension_policies: policies
            .iter()
            .map(|p| ExtensionResource {
                unstructured_bytes: serde_json::to_vec(p).expect("json"),
            })
            .collect(),
        ..Default::default()
    };
    let req = raw::PostRouteModifyRequest {
        route: Some(route.encode_to_vec()),
        post_route_context: Some(context),
    };
    client
        .post_route_modify(req)
        .await
        .expect("PostRouteModify")
        .into_inner()
        .route
}

fn as_request(
    resp: PostTranslateModifyResponse,
    like: &PostTranslateModifyRequest,
) -> PostTranslateModifyRequest {
    PostTranslateModifyRequest {
        post_translate_context: like.post_translate_context.clone(),
        clusters: resp.clusters,
        secrets: resp.secrets,
        listeners: resp.listeners,
        routes: resp.routes,
    }
}

/// Runs the routes of HTTPRoutes (all routes of a fixture without Envoy
/// Gateway's names) through PostRouteModify with `policies`, as Envoy
/// Gateway does for routes an HTTPRoute policy targets.
async fn through_route_hook(
    client: &mut Client,
    req: &mut PostTranslateModifyRequest,
    policies: &[Value],
) {
    for config in &mut req.routes {
        for vhost in &mut config.virtual_hosts {
            for route in &mut vhost.routes {
                let other_kind = ["grpcroute/", "tcproute/", "tlsroute/", "udproute/"]
                    .iter()
                    .any(|k| route.name.starts_with(k));
                if other_kind {
                    continue;
                }
                let back = route_hook(client, route, policies)
                    .await
                    .expect("route back");
                *route = Route::decode(back.as_slice()).expect("route");
            }
        }
    }
}

/// Equal responses, naming the first resource that differs.
fn assert_same_resources(
    a: &PostTranslateModifyResponse,
    b: &PostTranslateModifyResponse,
    what: &str,
) {
    let names = |r: &PostTranslateModifyResponse| {
        let mut n: Vec<String> = r
            .clusters
            .iter()
            .map(|c| format!("cluster {}", c.name))
            .collect();
        n.extend(r.listeners.iter().map(|l| format!("listener {}", l.name)));
        n.extend(r.routes.iter().map(|c| format!("routes {}", c.name)));
        n
    };
    assert_eq!(names(a), names(b), "{what}: different resources");
    for (x, y) in a.clusters.iter().zip(&b.clusters) {
        assert!(x == y, "{what}: cluster {} differs", x.name);
    }
    for (x, y) in a.listeners.iter().zip(&b.listeners) {
        assert!(x == y, "{what}: listener {} differs", x.name);
    }
    for (x, y) in a.routes.iter().zip(&b.routes) {
        assert!(x == y, "{what}: route configuration {} differs", x.name);
    }
    assert!(a == b, "{what}: secrets differ");
}

fn the_fixture(name: &str) -> xds::Translation {
    xds::translations()
        .into_iter()
        .find(|t| t.name.starts_with(name))
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn route_names(req: &PostTranslateModifyRequest) -> Vec<String> {
    req.routes
        .iter()
        .flat_map(|c| {
            c.virtual_hosts
                .iter()
                .flat_map(|v| v.routes.iter().map(|r: &Route| r.name.clone()))
        })
        .collect()
}

fn decode<M: Message + Default>(bytes: &[u8]) -> M {
    M::decode(bytes).expect("decode")
}

async fn endpoints_hook(client: &mut Client, cla: &[u8]) -> Vec<u8> {
    let req = raw::PostEndpointsModifyRequest {
        load_assignment: Some(cla.to_vec()),
        post_endpoints_context: None,
    };
    client
        .post_endpoints_modify(req)
        .await
        .expect("PostEndpointsModify")
        .into_inner()
        .load_assignment
        .expect("assignment back")
}
