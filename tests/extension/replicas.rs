//! The Extension Server's output run live as a deployment runs it: a
//! MulliganPolicy of the test's choosing, Envoy Gateway's routes as a
//! BackendTrafficPolicy may have left them, and any number of mulligan
//! processes behind the `mulligan` cluster (the shipped Deployment's
//! replicas behind its Service, over which Envoy spreads its ext_proc
//! streams).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action::ClusterSpecifier, RetryPolicy, RouteAction,
};
use http::Method;
use prost::Message;
use serde_json::{json, Value};

use rig::{client::Reply, envoy::Envoy, executions, mulligan::Mulligans};

use super::{
    decode, endpoints_hook, gateway_ref, httproute_ref,
    live::{bootstrap, copies_at, run_wired, CLUSTER, HOST},
    policy,
    server::ExtensionServer,
    translate, xds,
};

/// Pods behind [`CLUSTER`], `mulligans` behind the `mulligan` cluster, the
/// Extension Server that wired the translation, and Envoy running it.
pub(super) struct Replicas {
    pub mulligans: Mulligans,
    pub envoy: Envoy,
    pub front: SocketAddr,
    // Kept alive for the test's length.
    _server: ExtensionServer,
}

impl Replicas {
    /// `processes` mulligans knowing `pods` as [`CLUSTER`]'s endpoints; the
    /// fixture translation for them, each route to [`CLUSTER`] first
    /// changed by `edit` (as Envoy Gateway would have translated it), then
    /// wired by the Extension Server for a MulliganPolicy whose spec holds
    /// `spec` beside its targets (on the Gateway and on the HTTPRoute).
    pub async fn start(
        pods: &[SocketAddr],
        processes: usize,
        spec: Value,
        edit: impl Fn(&mut RouteAction),
    ) -> Replicas {
        let mulligans = Mulligans::beside_gateway(processes, pods, CLUSTER).await;
        let server = ExtensionServer::start(&mulligans[0].grpc.to_string(), &[]).await;
        let mut t = super::the_fixture("from-gateway-api-to-xds");
        for_routes_to_cluster(&mut t, edit);
        let mut b = wired_bootstrap(&server, &t, &spec, pods).await;
        behind_mulligan_cluster(&mut b, &mulligans.grpc());
        let (envoy, front) = run_wired(&b).await;
        Replicas {
            mulligans,
            envoy,
            front,
            _server: server,
        }
    }

    /// `method` `path` with its own `id` ([`executions::send`]).
    pub async fn send(&self, method: Method, path: &str, id: &str) -> Reply {
        executions::send(self.front, &HOST, method, path, id).await
    }
}

/// Envoy Gateway's BackendTrafficPolicy `retry` with a 503 trigger, as its
/// translator puts it on a route ([`rig::backend_traffic`]).
pub(super) fn backend_traffic_retry_on_503(action: &mut RouteAction) {
    action.retry_policy = Some(xds::from_json::<RetryPolicy>(
        "envoy.config.route.v3.RetryPolicy",
        rig::backend_traffic::retry_on_503(),
    ));
}

/// Applies `edit` to every route of `t` that forwards to [`CLUSTER`];
/// panics if there is none (the edit would prove nothing).
fn for_routes_to_cluster(t: &mut xds::Translation, edit: impl Fn(&mut RouteAction)) {
    let mut edited = 0;
    let routes = t
        .request
        .routes
        .iter_mut()
        .flat_map(|c| c.virtual_hosts.iter_mut())
        .flat_map(|v| v.routes.iter_mut());
    for r in routes {
        let Some(route::Action::Route(action)) = r.action.as_mut() else {
            continue;
        };
        if action.cluster_specifier == Some(ClusterSpecifier::Cluster(CLUSTER.to_string())) {
            edit(action);
            edited += 1;
        }
    }
    assert!(edited > 0, "no route forwards to {CLUSTER}");
}

/// The translation through the Extension Server (PostRouteModify for the
/// HTTPRoute's routes, PostTranslateModify, PostEndpointsModify), as an
/// Envoy bootstrap for `pods`.
async fn wired_bootstrap(
    server: &ExtensionServer,
    t: &xds::Translation,
    spec: &Value,
    pods: &[SocketAddr],
) -> envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap {
    let mut client = server.client().await;
    let on_gateway = policy("gw", json!([gateway_ref("eg", None)]), spec.clone());
    let mut req = t.with_policies(&[on_gateway]);
    let on_route = policy("routes", httproute_ref("backend"), spec.clone());
    super::through_route_hook(&mut client, &mut req, &[on_route]).await;
    let resp = translate(&mut client, req).await;
    let mut endpoints = Vec::new();
    for cla in &t.endpoints {
        endpoints.push(decode(
            &endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        ));
    }
    bootstrap(&resp, &endpoints, pods)
}

/// The `mulligan` cluster's one endpoint becomes one per address in
/// `grpc`, as a Service with that many ready replicas resolves.
fn behind_mulligan_cluster(
    b: &mut envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    grpc: &[SocketAddr],
) {
    let cluster = b
        .static_resources
        .iter_mut()
        .flat_map(|s| s.clusters.iter_mut())
        .find(|c| c.name == mulligan::names::CLUSTER)
        .expect("the wiring's mulligan cluster");
    let locality = cluster
        .load_assignment
        .as_mut()
        .and_then(|a| a.endpoints.first_mut())
        .expect("mulligan's endpoints");
    let template = locality.lb_endpoints[0].clone();
    locality.lb_endpoints = copies_at(&template, grpc);
}
