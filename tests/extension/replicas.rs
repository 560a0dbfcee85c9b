//! The Extension Server's output run live as a deployment runs it: a
//! MulliganPolicy of the test's choosing, Envoy Gateway's routes as a
//! BackendTrafficPolicy may have left them, and any number of mulligan
//! processes behind the `mulligan` cluster (the shipped Deployment's
//! replicas behind its Service, over which Envoy spreads its ext_proc
//! streams).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::{
    core::v3::{address, socket_address, Address, SocketAddress},
    endpoint::v3::lb_endpoint::HostIdentifier,
    route::v3::{route, route_action::ClusterSpecifier, RetryPolicy, RouteAction},
};
use http::Method;
use prost::Message;
use serde_json::{json, Value};

use rig::{
    client::{full, HttpClient, Proto, Reply},
    envoy::Envoy,
    mulligan::Mulligan,
    payload,
};

use super::{
    decode, endpoints_hook, gateway_ref, httproute_ref,
    live::{bootstrap, tolerant, CLUSTER, HOST, MULLIGAN_TOML},
    policy,
    server::ExtensionServer,
    translate, xds,
};

/// Pods behind [`CLUSTER`], `mulligans` behind the `mulligan` cluster, the
/// Extension Server that wired the translation, and Envoy running it.
pub(super) struct Replicas {
    pub mulligans: Vec<Mulligan>,
    pub envoy: Envoy,
    pub front: SocketAddr,
    // Kept alive for the test's length.
    _server: ExtensionServer,
    _config: tempfile::TempDir,
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
        let config = tempfile::tempdir().expect("tempdir");
        let toml = config.path().join("mulligan.toml");
        std::fs::write(&toml, MULLIGAN_TOML).expect("write config");
        let toml = toml.to_str().expect("utf-8 path");
        let list = rig::endpoint_list(pods);
        let args = [
            "--config",
            toml,
            "--endpoints",
            &list,
            "--static-cluster",
            CLUSTER,
        ];
        let mut mulligans = Vec::new();
        for _ in 0..processes {
            mulligans.push(Mulligan::start(&args).await);
        }
        let server = ExtensionServer::start(&mulligans[0].grpc.to_string(), &[]).await;
        let mut t = super::the_fixture("from-gateway-api-to-xds");
        for_routes_to_cluster(&mut t, edit);
        let mut b = wired_bootstrap(&server, &t, &spec, pods).await;
        let grpc: Vec<SocketAddr> = mulligans.iter().map(|m| m.grpc).collect();
        behind_mulligan_cluster(&mut b, &grpc);
        let json = xds::to_json("envoy.config.bootstrap.v3.Bootstrap", &b);
        let envoy = Envoy::start(&tolerant(&json.to_string())).await;
        let front = envoy.listener("default/eg/http").await;
        Replicas {
            mulligans,
            envoy,
            front,
            _server: server,
            _config: config,
        }
    }

    /// `method` `path` with a 100-byte body and `x-harness-id: id` (each
    /// pod counts how often it ran each id).
    pub async fn send(&self, method: Method, path: &str, id: &str) -> Reply {
        HttpClient::new(Proto::Http1)
            .send(
                method,
                self.front,
                path,
                &[HOST[0], ("x-harness-id", id)],
                full(payload(100)),
            )
            .await
            .expect("request through the wired gateway")
    }

    /// Streams each mulligan process was asked to judge, in order.
    pub async fn streams(&self) -> Vec<f64> {
        let mut seen = Vec::new();
        for m in &self.mulligans {
            seen.push(m.streams().await);
        }
        seen
    }

    /// How often the mulligans, together, gave `answer`.
    pub async fn answers(&self, answer: &str) -> f64 {
        let mut n = 0.0;
        for m in &self.mulligans {
            n += m.answers(answer).await;
        }
        n
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
    locality.lb_endpoints = grpc
        .iter()
        .map(|addr| {
            let mut ep = template.clone();
            if let Some(HostIdentifier::Endpoint(e)) = ep.host_identifier.as_mut() {
                e.address = Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: addr.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(
                            addr.port().into(),
                        )),
                        ..Default::default()
                    })),
                });
            }
            ep
        })
        .collect();
}
