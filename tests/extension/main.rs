//! mulligan as Envoy Gateway's Extension Server, tested on Envoy Gateway's
//! real translation output (`shared/fixtures/envoy-gateway`), over real gRPC
//! to the real binary, and the result run by real Envoy.

mod generated;
mod hostile;
mod live;
mod manifests;
mod reference;
mod server;
mod wiring_checks;
mod xds;

use envoy_types::pb::envoy::config::route::v3::Route;
use mulligan::extension::api::{
    envoy_gateway_extension_client::EnvoyGatewayExtensionClient, raw, ExtensionResource,
    PostRouteExtensionContext, PostTranslateModifyRequest, PostTranslateModifyResponse,
};
use prost::Message;
use serde_json::{json, Value};
use server::ExtensionServer;
use tonic::transport::Channel;
use wiring_checks::{assert_unchanged, assert_wired, Expect};

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

#[test]
fn the_hand_declared_messages_match_the_vendored_proto() {
    wiring_checks::wire_format_matches_vendored_proto();
}

#[tokio::test]
async fn without_a_policy_of_ours_every_translation_comes_back_unchanged() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let translations = xds::translations();
    assert!(translations.len() >= 5, "fixtures: {}", translations.len());
    let foreign = json!({"apiVersion": "example.extensions.io/v1alpha1", "kind": "ListenerContextExample",
        "metadata": {"name": "x", "namespace": "default"}, "spec": {"targetRefs": [gateway_ref("eg", None)]}});
    let elsewhere = policy(
        "other-gateway",
        json!([gateway_ref("not-eg", None)]),
        json!({}),
    );
    let other_ns = json!({"apiVersion": "mulligan.dev/v1alpha1", "kind": "MulliganPolicy",
        "metadata": {"name": "p", "namespace": "elsewhere"}, "spec": {"targetRefs": [gateway_ref("eg", None)]}});
    for t in &translations {
        assert!(
            !t.request.clusters.is_empty() && !t.request.routes.is_empty(),
            "{}: empty fixture",
            t.name
        );
        for policies in [
            vec![],
            vec![
                foreign.clone(),
                json!("not even an object"),
                elsewhere.clone(),
                other_ns.clone(),
            ],
        ] {
            let req = t.with_policies(&policies);
            let (sent, back) = translate_raw(&mut client, &req).await;
            assert_same_bytes(&t.name, &sent, &back);
            assert_unchanged(&t.name, &req, &convert(&back));
        }
    }
    assert_eq!(
        server
            .metric("mulligan_extension_invalid_policies_total")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_gateway_listener_policy_adds_exactly_the_documented_wiring() {
    let server = ExtensionServer::start("mulligan.mulligan-system.svc:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let req = t.with_policies(&[policy(
        "http-only",
        json!([gateway_ref("eg", Some("http"))]),
        json!({}),
    )]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &["httproute/default/backend/rule/0/match/0/www_example_com"],
            clusters: &["httproute/default/backend/rule/0"],
            listeners: &["default/eg/http"],
            num_retries: 10,
            max_hold_s: 14,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );

    // The whole Gateway: the gRPC listener's route and cluster too (its
    // HTTP/2 upstream options are kept), with the policy's budget.
    let req = t.with_policies(&[policy(
        "all",
        json!([gateway_ref("eg", None)]),
        json!({"budget": {"numRetries": 3, "maxHold": "5s"}}),
    )]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &[
                "httproute/default/backend/rule/0/match/0/www_example_com",
                "grpcroute/default/backend/rule/0/match/0/www_grpc-example_com",
            ],
            clusters: &[
                "httproute/default/backend/rule/0",
                "grpcroute/default/backend/rule/0",
            ],
            listeners: &["default/eg/http", "default/eg/grpc"],
            num_retries: 3,
            max_hold_s: 5,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );
    assert_eq!(server.metric("mulligan_extension_routes_wired").await, 2.0);

    // A policy on one listener wins over one on the whole Gateway, whatever
    // their names: the http listener gets "z-listener"'s mode off.
    let req = t.with_policies(&[
        policy(
            "a-gateway",
            json!([gateway_ref("eg", None)]),
            json!({"budget": {"numRetries": 3}}),
        ),
        policy(
            "z-listener",
            json!([gateway_ref("eg", Some("http"))]),
            json!({"mode": "off"}),
        ),
    ]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &["grpcroute/default/backend/rule/0/match/0/www_grpc-example_com"],
            clusters: &["grpcroute/default/backend/rule/0"],
            listeners: &["default/eg/grpc"],
            num_retries: 3,
            max_hold_s: 14,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );
}

#[tokio::test]
async fn an_httproute_policy_reaches_translation_through_post_route_modify() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    // Envoy Gateway's retry output: routes with a BackendTrafficPolicy retry
    // of their own, replaced by mulligan's (per-try timeout kept).
    let t = the_fixture("xds/retry");
    let mut req = t.request.clone();
    through_route_hook(
        &mut client,
        &mut req,
        &[policy("backend", httproute_ref("backend"), json!({}))],
    )
    .await;
    let resp = translate(&mut client, req.clone()).await;
    let routes = route_names(&t.request);
    assert_eq!(routes.len(), 3);
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    wiring_checks::assert_wired_after_route_hook(
        &t.request,
        &resp,
        &Expect {
            routes: &routes,
            clusters: &["first-route-dest"],
            listeners: &["first-listener"],
            num_retries: 10,
            max_hold_s: 14,
            mulligan: ("127.0.0.1", 50051, false),
        },
    );

    // mode: off on the HTTPRoute wins over a Gateway policy.
    let t = the_fixture("from-gateway-api-to-xds");
    let before = t.with_policies(&[policy("gw", json!([gateway_ref("eg", None)]), json!({}))]);
    let mut req = before.clone();
    through_route_hook(
        &mut client,
        &mut req,
        &[policy(
            "off",
            httproute_ref("backend"),
            json!({"mode": "off"}),
        )],
    )
    .await;
    let resp = translate(&mut client, req).await;
    let grpc_only = Expect {
        routes: &["grpcroute/default/backend/rule/0/match/0/www_grpc-example_com"],
        clusters: &["grpcroute/default/backend/rule/0"],
        listeners: &["default/eg/grpc"],
        num_retries: 10,
        max_hold_s: 14,
        mulligan: ("127.0.0.1", 50051, false),
    };
    assert_wired(&before, &resp, &grpc_only);
}

#[tokio::test]
async fn every_translation_is_deterministic_and_idempotent() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    for t in xds::translations() {
        let mut req = t.with_policies(&[policy("gw", json!([gateway_ref("eg", None)]), json!({}))]);
        through_route_hook(
            &mut client,
            &mut req,
            &[policy(
                "routes",
                json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "any"}]),
                json!({"budget": {"numRetries": 4}}),
            )],
        )
        .await;
        let first = translate(&mut client, req.clone()).await;
        // (envoy-patch-policy's translation has an empty route configuration.)
        let has_routes = !route_names(&t.request).is_empty();
        assert_eq!(
            first
                .clusters
                .iter()
                .any(|c| c.name == mulligan::names::CLUSTER),
            has_routes,
            "{}: wired?",
            t.name
        );
        let second = translate(&mut client, req.clone()).await;
        assert_same_resources(&first, &second, &format!("{}: same request twice", t.name));
        let again = translate(&mut client, as_request(first.clone(), &req)).await;
        assert_same_resources(&first, &again, &format!("{}: output fed back", t.name));
    }
}

#[tokio::test]
async fn an_invalid_policy_is_reported_and_its_routes_are_left_alone() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let invalid = [
        json!({"mode": "sometimes"}),
        json!({"budget": {"numRetries": 0}}),
        json!({"budget": {"maxHold": "10m"}}),
        json!({"budget": {"numRetrys": 3}}),
    ];
    for (i, rest) in invalid.iter().enumerate() {
        let bad = policy(
            &format!("bad-{i}"),
            json!([gateway_ref("eg", Some("http"))]),
            rest.clone(),
        );
        let req = t.with_policies(std::slice::from_ref(&bad));
        let (sent, back) = translate_raw(&mut client, &req).await;
        assert_same_bytes(&format!("invalid policy {rest}"), &sent, &back);
        // Beside a valid policy for the other listener: only that one is wired.
        let req = t.with_policies(&[
            bad,
            policy("grpc", json!([gateway_ref("eg", Some("grpc"))]), json!({})),
        ]);
        let resp = translate(&mut client, req.clone()).await;
        assert_wired(
            &req,
            &resp,
            &Expect {
                routes: &["grpcroute/default/backend/rule/0/match/0/www_grpc-example_com"],
                clusters: &["grpcroute/default/backend/rule/0"],
                listeners: &["default/eg/grpc"],
                num_retries: 10,
                max_hold_s: 14,
                mulligan: ("127.0.0.1", 50051, false),
            },
        );
    }
    // An invalid HTTPRoute policy in PostRouteModify: the route comes back as sent.
    let route = t.request.routes[0].virtual_hosts[0].routes[0].clone();
    let back = route_hook(
        &mut client,
        &route,
        &[policy("bad", httproute_ref("backend"), json!({"mode": 3}))],
    )
    .await;
    assert_eq!(back, Some(route.encode_to_vec()), "byte for byte");
    assert_eq!(
        server
            .metric("mulligan_extension_invalid_policies_total")
            .await,
        9.0
    );
}

#[tokio::test]
async fn post_endpoints_adds_the_hold_to_the_wired_eds_clusters_only() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    translate(
        &mut client,
        t.with_policies(&[policy(
            "http",
            json!([gateway_ref("eg", Some("http"))]),
            json!({}),
        )]),
    )
    .await;
    for cla in &t.endpoints {
        let sent = cla.encode_to_vec();
        let back = endpoints_hook(&mut client, &sent).await;
        if cla.cluster_name == "httproute/default/backend/rule/0" {
            wiring_checks::assert_hold(cla, &decode(&back));
        } else {
            assert_eq!(
                back, sent,
                "{} must come back byte for byte",
                cla.cluster_name
            );
        }
    }
    // Within one translation, an HTTPRoute policy's clusters get the hold
    // before PostTranslateModify runs (Envoy Gateway's order: route, then
    // its endpoints).
    translate(&mut client, t.with_policies(&[])).await;
    let cla = t
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "httproute/default/backend/rule/0")
        .expect("cla");
    assert_eq!(
        endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        cla.encode_to_vec(),
        "not wired yet"
    );
    let route = t.request.routes[0].virtual_hosts[0].routes[0].clone();
    route_hook(
        &mut client,
        &route,
        &[policy("r", httproute_ref("backend"), json!({}))],
    )
    .await;
    wiring_checks::assert_hold(
        cla,
        &decode(&endpoints_hook(&mut client, &cla.encode_to_vec()).await),
    );
    // A translation without the policy withdraws it.
    translate(&mut client, t.with_policies(&[])).await;
    let cla = t
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "httproute/default/backend/rule/0")
        .expect("cla");
    assert_eq!(
        endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        cla.encode_to_vec()
    );
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

#[tokio::test]
async fn the_other_hooks_and_empty_or_foreign_input_come_back_as_sent() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let listener = t.request.listeners[0].encode_to_vec();
    let cluster = t.request.clusters[0].encode_to_vec();
    let vhost = t.request.routes[0].virtual_hosts[0].encode_to_vec();
    let junk = ExtensionResource {
        unstructured_bytes: b"\xff not json".to_vec(),
    };
    let l = client
        .post_http_listener_modify(raw::PostHTTPListenerModifyRequest {
            listener: Some(listener.clone()),
            post_listener_context: Some(
                mulligan::extension::api::PostHTTPListenerExtensionContext {
                    extension_resources: vec![junk.clone()],
                },
            ),
        })
        .await
        .expect("listener hook")
        .into_inner();
    assert_eq!(l.listener, Some(listener));
    let c = client
        .post_cluster_modify(raw::PostClusterModifyRequest {
            cluster: Some(cluster.clone()),
            post_cluster_context: None,
        })
        .await
        .expect("cluster hook")
        .into_inner();
    assert_eq!(c.cluster, Some(cluster));
    let v = client
        .post_virtual_host_modify(raw::PostVirtualHostModifyRequest {
            virtual_host: Some(vhost.clone()),
            post_virtual_host_context: None,
        })
        .await
        .expect("virtual host hook")
        .into_inner();
    assert_eq!(v.virtual_host, Some(vhost));
    // Nothing at all, and a route hook without a route.
    let empty = client
        .post_translate_modify(raw::PostTranslateModifyRequest::default())
        .await
        .expect("empty")
        .into_inner();
    assert_eq!(empty, raw::PostTranslateModifyResponse::default());
    let none = client
        .post_route_modify(raw::PostRouteModifyRequest::default())
        .await
        .expect("no route")
        .into_inner();
    assert_eq!(none.route, None);
    // A resource that is not JSON among the policies: ignored, not an error.
    let mut req = t.with_policies(&[]);
    req.post_translate_context
        .get_or_insert_with(Default::default)
        .extension_resources
        .push(junk);
    let (sent, back) = translate_raw(&mut client, &req).await;
    assert_same_bytes("junk policy bytes", &sent, &back);
}

#[tokio::test]
async fn an_httproute_policy_delivered_to_translation_wires_that_route_only() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    // Envoy Gateway names the HTTPRoute `backend` in its route metadata; a
    // GRPCRoute of the same name is another kind and stays untouched.
    let req = t.with_policies(&[policy(
        "route",
        httproute_ref("backend"),
        json!({"budget": {"numRetries": 2}}),
    )]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &["httproute/default/backend/rule/0/match/0/www_example_com"],
            clusters: &["httproute/default/backend/rule/0"],
            listeners: &["default/eg/http"],
            num_retries: 2,
            max_hold_s: 14,
            mulligan: ("127.0.0.1", 50051, false),
        },
    );
}

const WWW_ROUTE: &str = "httproute/default/backend/rule/0/match/0/www_example_com";

/// The fixture with a second route, `other`, in the virtual host of
/// [`WWW_ROUTE`]; no policy selects it (it has no Envoy Gateway metadata).
fn with_a_neighbour(
    req: &PostTranslateModifyRequest,
    action: envoy_types::pb::envoy::config::route::v3::route::Action,
) -> PostTranslateModifyRequest {
    let mut req = req.clone();
    let vhost = req
        .routes
        .iter_mut()
        .flat_map(|c| c.virtual_hosts.iter_mut())
        .find(|v| v.routes.iter().any(|r| r.name == WWW_ROUTE))
        .expect("the www virtual host");
    let mut other = vhost.routes[0].clone();
    other.name = "other".into();
    other.metadata = None;
    other.action = Some(action);
    vhost.routes.push(other);
    req
}

fn www_vhost(
    resp: &PostTranslateModifyResponse,
) -> &envoy_types::pb::envoy::config::route::v3::VirtualHost {
    resp.routes
        .iter()
        .flat_map(|c| &c.virtual_hosts)
        .find(|v| v.routes.iter().any(|r| r.name == WWW_ROUTE))
        .expect("the www virtual host")
}

/// `include_request_attempt_count` is a virtual host setting: a virtual
/// host that also forwards an unwired route (here to the gRPC cluster,
/// which mulligan does not wire, so nothing would strip the header) is left
/// as it was, and its wired route, without the gate, is counted. A
/// neighbour that forwards nothing (a redirect) does not matter.
#[tokio::test]
async fn the_gate_is_on_only_where_every_forwarding_route_of_the_virtual_host_is_wired() {
    use envoy_types::pb::envoy::config::route::v3::{
        route, route_action, RedirectAction, RouteAction,
    };
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let base = t.with_policies(&[policy("route", httproute_ref("backend"), json!({}))]);
    let expect = Expect {
        routes: &[WWW_ROUTE],
        clusters: &["httproute/default/backend/rule/0"],
        listeners: &["default/eg/http"],
        num_retries: 10,
        max_hold_s: 14,
        mulligan: ("127.0.0.1", 50051, false),
    };

    let forward = route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
            "grpcroute/default/backend/rule/0".into(),
        )),
        ..Default::default()
    });
    let req = with_a_neighbour(&base, forward);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(&req, &resp, &expect);
    assert!(!www_vhost(&resp).include_request_attempt_count);
    assert_eq!(
        server.metric("mulligan_extension_routes_ungated").await,
        1.0
    );

    let redirect = route::Action::Redirect(RedirectAction {
        host_redirect: "elsewhere.example.com".into(),
        ..Default::default()
    });
    let req = with_a_neighbour(&base, redirect);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(&req, &resp, &expect);
    assert!(www_vhost(&resp).include_request_attempt_count);
    assert_eq!(
        server.metric("mulligan_extension_routes_ungated").await,
        0.0
    );
}
