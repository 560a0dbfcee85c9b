//! "The output runs": what the server returns for Envoy Gateway's real
//! translations, with its EDS endpoints through PostEndpointsModify and
//! rewritten to loopback pods, passes `envoy --mode validate`; and one runs
//! live with the real mulligan behind it, proving the wiring: Envoy makes
//! every attempt, mulligan is asked only about failed ones and retries (the
//! gate), and the client sees no 503 while pods come and go.

use std::net::SocketAddr;

use envoy_types::pb::envoy::{
    config::{
        bootstrap::v3::{bootstrap::StaticResources, Admin, Bootstrap},
        cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
        core::v3::{address, socket_address, Address, Node, SocketAddress, TypedExtensionConfig},
        endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment, LbEndpoint},
        listener::v3::{filter, Listener},
        route::v3::RouteConfiguration,
    },
    extensions::{
        bootstrap::internal_listener::v3::InternalListener,
        filters::network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager,
        },
    },
};
use http::Method;
use prost::{Message, Name};
use serde_json::json;

use rig::{
    client::{full, HttpClient, Proto},
    draining_and_gone::DrainingAndGone,
    envoy::Envoy,
    gateway::{Gateway, LISTENER},
    mulligan::Mulligan,
    pods::{Pod, PodState},
    protocols,
    rolling_update::RollingUpdate,
};

pub(super) use rig::gateway::{CLUSTER, HOST};

use super::{decode, endpoints_hook, gateway_ref, policy, server::ExtensionServer, translate, xds};
use mulligan::extension::api::PostTranslateModifyResponse;

/// `addr` as an Envoy socket address.
fn loopback(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port().into())),
            ..Default::default()
        })),
    }
}

/// Inlines the RDS route configuration into each HTTP connection manager.
fn inline_routes(listener: &mut Listener, routes: &[RouteConfiguration]) {
    for chain in listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut())
    {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
                continue;
            };
            if !any.type_url.ends_with(&HttpConnectionManager::full_name()) {
                continue;
            }
            let mut hcm: HttpConnectionManager = decode(&any.value);
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let config = routes
                    .iter()
                    .find(|r| r.name == rds.route_config_name)
                    .cloned()
                    .unwrap_or_default();
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(config));
                any.value = hcm.encode_to_vec();
            }
        }
    }
}

/// One copy of `template` per address in `addrs`, each at its address.
pub(super) fn copies_at(template: &LbEndpoint, addrs: &[SocketAddr]) -> Vec<LbEndpoint> {
    addrs
        .iter()
        .map(|addr| {
            let mut ep = template.clone();
            if let Some(HostIdentifier::Endpoint(e)) = ep.host_identifier.as_mut() {
                e.address = Some(loopback(*addr));
            }
            ep
        })
        .collect()
}

/// A load assignment's app endpoints replaced by one per pod (each a copy
/// of Envoy Gateway's first endpoint, address rewritten); internal
/// addresses (the hold) stay.
fn to_pods(cla: &mut ClusterLoadAssignment, pods: &[SocketAddr]) {
    let is_socket = |ep: &LbEndpoint| match &ep.host_identifier {
        Some(HostIdentifier::Endpoint(e)) => {
            matches!(
                e.address.as_ref().and_then(|a| a.address.as_ref()),
                Some(address::Address::SocketAddress(_))
            )
        }
        _ => false,
    };
    let Some(locality) = cla
        .endpoints
        .iter_mut()
        .find(|l| l.lb_endpoints.iter().any(is_socket))
    else {
        return;
    };
    let Some(template) = locality.lb_endpoints.iter().find(|e| is_socket(e)).cloned() else {
        return;
    };
    locality.lb_endpoints = copies_at(&template, pods);
    let first = cla
        .endpoints
        .iter()
        .position(|l| l.lb_endpoints.iter().any(is_socket));
    let mut i = 0;
    cla.endpoints.retain(|l| {
        let keep = Some(i) == first || !l.lb_endpoints.iter().any(is_socket);
        i += 1;
        keep
    });
}

/// An Envoy bootstrap holding the translation as static resources: EDS
/// clusters become STATIC with `endpoints` (already through the hook).
pub(super) fn bootstrap(
    resp: &PostTranslateModifyResponse,
    endpoints: &[ClusterLoadAssignment],
    pods: &[SocketAddr],
) -> Bootstrap {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listeners = resp.listeners.iter().cloned().map(|mut l| {
        if let Some(Address {
            address: Some(address::Address::SocketAddress(sa)),
        }) = l.address.as_mut()
        {
            sa.address = "127.0.0.1".into();
            sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(0));
        }
        inline_routes(&mut l, &resp.routes);
        l
    });
    let clusters = resp.clusters.iter().cloned().map(|mut c: Cluster| {
        if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
            let service = c
                .eds_cluster_config
                .take()
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let mut cla = endpoints
                .iter()
                .find(|e| e.cluster_name == service)
                .cloned()
                .unwrap_or_default();
            cla.cluster_name = c.name.clone();
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.load_assignment = Some(cla);
        }
        if c.name != mulligan::names::CLUSTER {
            if let Some(cla) = c.load_assignment.as_mut() {
                to_pods(cla, pods);
            }
        }
        c
    });
    let internal_listener = InternalListener::default();
    Bootstrap {
        node: Some(Node {
            id: "extension-test".into(),
            cluster: "extension-test".into(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(loopback(any_port)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: listeners.collect(),
            clusters: clusters.collect(),
            secrets: resp.secrets.clone(),
        }),
        bootstrap_extensions: vec![TypedExtensionConfig {
            name: "envoy.bootstrap.internal_listener".into(),
            typed_config: Some(envoy_types::pb::google::protobuf::Any {
                type_url: InternalListener::type_url(),
                value: internal_listener.encode_to_vec(),
            }),
        }],
        ..Default::default()
    }
}

/// The translation wired by the server, with its endpoints through
/// PostEndpointsModify, as Envoy Gateway would send them to Envoy.
async fn wired(
    server: &ExtensionServer,
    t: &xds::Translation,
) -> (PostTranslateModifyResponse, Vec<ClusterLoadAssignment>) {
    let mut client = server.client().await;
    let mut req = t.with_policies(&[policy("gw", json!([gateway_ref("eg", None)]), json!({}))]);
    super::through_route_hook(
        &mut client,
        &mut req,
        &[policy("routes", super::httproute_ref("any"), json!({}))],
    )
    .await;
    let resp = translate(&mut client, req).await;
    let mut endpoints = Vec::new();
    for cla in &t.endpoints {
        endpoints.push(decode(
            &endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        ));
    }
    (resp, endpoints)
}

#[tokio::test]
async fn every_wired_translation_passes_envoy_validate() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let pods: [SocketAddr; 2] = [
        "127.0.0.1:18081".parse().expect("a"),
        "127.0.0.1:18082".parse().expect("b"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for t in xds::translations() {
        let (resp, endpoints) = wired(&server, &t).await;
        let has_routes = resp.routes.iter().any(|r| !r.virtual_hosts.is_empty());
        assert_eq!(
            resp.listeners
                .iter()
                .any(|l| l.name == mulligan::names::hold::LISTENER),
            has_routes,
            "{}",
            t.name
        );
        let path = dir
            .path()
            .join(format!("{}.pb", t.name.replace(['/', ':', '.'], "_")));
        std::fs::write(&path, bootstrap(&resp, &endpoints, &pods).encode_to_vec()).expect("write");
        if let Err(e) = rig::envoy::validate(&path) {
            panic!("{}: Envoy rejected the wired translation:\n{e}", t.name);
        }
    }
}

/// Envoy running the wired bootstrap `b` as these tests run it:
/// mulligan's message timeout widened to the rig's loaded-machine value
/// ([`rig::render::tolerant_json`]), for what these tests observe is
/// mulligan's answers, not its speed.
async fn start_wired(b: &Bootstrap) -> Envoy {
    let json = xds::to_json("envoy.config.bootstrap.v3.Bootstrap", b);
    Envoy::start(&rig::render::tolerant_json(&json.to_string())).await
}

/// [`start_wired`], and its listener for the fixtures' Gateway.
pub(super) async fn run_wired(b: &Bootstrap) -> (Envoy, SocketAddr) {
    let envoy = start_wired(b).await;
    let front = envoy.listener(LISTENER).await;
    (envoy, front)
}

/// Pods, the real mulligan (knowing the pods as the endpoints of
/// [`CLUSTER`]), the Extension Server pointing Envoy Gateway's translation
/// at it, and Envoy running that translation.
async fn wired_gateway(pods: &[SocketAddr]) -> Gateway {
    let mulligan = Mulligan::beside_gateway(pods, CLUSTER).await;
    let server = ExtensionServer::start(&mulligan.grpc.to_string(), &[]).await;
    let t = super::the_fixture("from-gateway-api-to-xds");
    let (resp, endpoints) = wired(&server, &t).await;
    let envoy = start_wired(&bootstrap(&resp, &endpoints, pods)).await;
    Gateway::around(mulligan, envoy, server).await
}

/// A stat of [`CLUSTER`]'s app member (the wiring makes [`CLUSTER`] an
/// aggregate), whose hosts the connections go to (connections, their
/// failures).
async fn app_stat(gw: &Gateway, stat: &str) -> u64 {
    let app = format!(
        "{CLUSTER}{}",
        mulligan::extension::wiring::cluster::APP_MEMBER_SUFFIX
    );
    gw.envoy.stat(&format!("cluster.{app}.{stat}")).await
}

/// Healthy requests open no stream; with a pod draining and one gone,
/// every request is served by the ready pod ([`DrainingAndGone`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wired_gateway_retries_failed_attempts_and_asks_mulligan_only_about_them() {
    let pods = DrainingAndGone::start().await;
    let gw = wired_gateway(&pods.addrs()).await;
    pods.run(&gw).await;
    let [draining, ready, gone] = pods.pods();
    assert_eq!(
        ready.served(),
        pods.sent() - draining.served() - gone.served()
    );
    assert_eq!(
        gw.mulligan.answers("stopped").await,
        0.0,
        "no request had reached an app"
    );
    // Every retry that reached a pod passed the gate once, on a stream of
    // its own (the upstream filters run once a connection is up: a retry
    // refused by the gone pod never gets that far). The other streams are
    // failed first attempts: the healthy phase above opened none.
    let retries = gw.cluster_stat("upstream_rq_retry").await as f64;
    let refused = app_stat(&gw, "upstream_cx_connect_fail").await as f64;
    let passed = gw.mulligan.answers("pass").await;
    assert!(
        passed <= retries && passed >= retries - refused,
        "{passed} retries passed the gate; {retries} retries, {refused} refused\n{}",
        gw.mulligan.answer_counts().await
    );
    assert!(
        gw.mulligan.streams().await > passed,
        "failed first attempts were judged"
    );
}

/// Envoy Gateway forwards WebSocket upgrades on every route, so an
/// upgrade the app answers 5xx reaches the wired cluster's upstream
/// filters; Envoy 1.40 crashes when ext_proc there sees it. The wiring
/// leaves upgrades to Envoy alone: every answer passes on, Envoy stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_answered_5xx_through_the_wired_gateway_leaves_envoy_up() {
    let pod = Pod::start("a", PodState::Ready).await;
    let gw = wired_gateway(&[pod.addr]).await;
    for i in 0..4 {
        let ws = protocols::upgrade_host(gw.front, "/status/500", HOST[0].1).await;
        assert_eq!(ws.status, 500, "upgrade {i}: {}", ws.head);
    }
    let (status, _) = gw.send(Method::GET, "/", "after").await;
    assert_eq!(status, 200, "Envoy is still up");
    assert_eq!(
        gw.mulligan.answers("retry").await,
        0.0,
        "mulligan was not asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_app_endpoint_left_the_request_waits_at_the_hold_then_is_served() {
    // The refused connection is retried by Envoy without asking mulligan;
    // the ejected pod leaves the hold (priority 1) as the only endpoint, and
    // its 503 goes to mulligan, which holds it while nothing can serve.
    held_then_served(&[], "http.mulligan_hold.downstream_rq_completed").await;
}

/// The same for a gRPC request (its `content-type`: Envoy answers a local
/// reply to one the gRPC way, as a 200 that mulligan.attempt would never
/// see): the hold's answer still reaches mulligan as a 503, and the request
/// is held, then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_with_no_app_endpoint_left_waits_at_the_hold_then_is_served() {
    held_then_served(
        &[("content-type", "application/grpc")],
        "http.mulligan_hold_answer.downstream_rq_completed",
    )
    .await;
}

/// A POST with `headers` to a gateway whose only pod is gone: it is held
/// (the Envoy stat `answered` shows the hold endpoint answered it), then
/// served whole, once, when the pod comes back.
async fn held_then_served(headers: &[(&'static str, &'static str)], answered: &str) {
    let only = Pod::start("only", PodState::Gone).await;
    let gw = wired_gateway(&[only.addr]).await;
    let front = gw.front;
    let mut all = vec![HOST[0]];
    all.extend_from_slice(headers);
    let request = tokio::spawn(async move {
        HttpClient::new(Proto::Http1)
            .send(Method::POST, front, "/echo", &all, full("held".to_string()))
            .await
            .expect("request")
    });
    gw.mulligan
        .wait_metric("mulligan_held", 1.0, rig::LOADED, "the request held")
        .await;
    assert!(gw.envoy.stat(answered).await >= 1, "the hold answered");
    assert!(app_stat(&gw, "upstream_cx_connect_fail").await >= 1);
    only.set_state(PodState::Ready).await;
    let r = request.await.expect("request task");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "held".as_bytes(), "the held POST arrived whole");
    assert_eq!(only.served(), 1);
    assert!(gw.mulligan.answers("retry_after_hold").await >= 1.0);
    assert_eq!(gw.mulligan.answers("final").await, 0.0);
}

/// A rolling update ([`RollingUpdate`]) behind the wired gateway: the
/// client sees no 503, every request runs once, and mulligan is asked only
/// about failed attempts and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_behind_the_wired_gateway_shows_the_client_no_503() {
    let update = RollingUpdate::start().await;
    let gw = wired_gateway(&update.addrs()).await;
    update.run(&gw).await;
}
