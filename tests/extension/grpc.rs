//! A GRPCRoute selected by a MulliganPolicy, through real Envoy: Envoy
//! Gateway hands the policy to PostRouteModify with the GRPCRoute's route,
//! and the wired Gateway retries calls away from a draining pod, each
//! arriving whole with its trailers.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, Route};
use prost::Message;
use serde_json::json;

use rig::{
    envoy::Envoy,
    mulligan::Mulligan,
    protocols::{self, GrpcReply, ProtoPod, ProtoState},
};

use super::{
    decode, endpoints_hook, live::bootstrap, policy, route_hook, server::ExtensionServer, translate,
};

/// Envoy Gateway's cluster for the GRPCRoute `backend`.
const CLUSTER: &str = "grpcroute/default/backend/rule/0";

fn assert_whole(r: &GrpcReply, message: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert!(!r.reset, "{what}: reset");
    assert_eq!(r.messages, [message.to_vec()], "{what}: the message");
    assert_eq!(
        r.trailer("grpc-status"),
        Some("0"),
        "{what}: trailers {r:?}"
    );
    assert_eq!(
        r.trailer("x-pod"),
        Some("new"),
        "{what}: the app's own trailer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcroute_selected_by_a_policy_retries_calls_away_from_a_draining_pod() {
    let old = ProtoPod::start("old", ProtoState::Draining).await;
    let new = ProtoPod::start("new", ProtoState::Ready).await;
    let pods: [SocketAddr; 2] = [old.addr, new.addr];
    let list = rig::endpoint_list(&pods);
    let mulligan = Mulligan::start(&["--endpoints", &list, "--static-cluster", CLUSTER]).await;
    let server = ExtensionServer::start(&mulligan.grpc.to_string(), &[]).await;
    let mut client = server.client().await;

    // Envoy Gateway's translation of the GRPCRoute, its one rule matching
    // the test service (the fixture's matches another method) on any host.
    let t = super::the_fixture("from-gateway-api-to-xds");
    let mut req = t.with_policies(&[]);
    for config in &mut req.routes {
        for vhost in &mut config.virtual_hosts {
            let grpc = vhost
                .routes
                .iter()
                .any(|r| r.name.starts_with("grpcroute/"));
            if grpc {
                vhost.domains = vec!["*".into()];
            }
            for route in &mut vhost.routes {
                if !route.name.starts_with("grpcroute/") {
                    continue;
                }
                if let Some(m) = route.r#match.as_mut() {
                    m.path_specifier = Some(PathSpecifier::Prefix("/test.Echo/".into()));
                }
                let policies = [policy(
                    "grpc",
                    json!([{ "group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "backend" }]),
                    json!({}),
                )];
                let back = route_hook(&mut client, route, &policies)
                    .await
                    .expect("route back");
                *route = Route::decode(back.as_slice()).expect("route");
            }
        }
    }
    let mut endpoints = Vec::new();
    for cla in &t.endpoints {
        endpoints.push(decode(
            &endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        ));
    }
    let resp = translate(&mut client, req).await;
    let json = super::xds::to_json(
        "envoy.config.bootstrap.v3.Bootstrap",
        &bootstrap(&resp, &endpoints, &pods),
    );
    let envoy = Envoy::start(&json.to_string()).await;
    let front = envoy.listener("default/eg/grpc").await;

    // Calls until the draining pod has turned away three (Envoy Gateway's
    // least-request balancing picks it about half the time).
    let mut calls = 0;
    while old.rejected() < 3 {
        assert!(
            calls < 100,
            "{calls} calls, {} reached the draining pod",
            old.rejected()
        );
        let message = format!("call {calls}").into_bytes();
        let r = protocols::grpc_call(front, "/test.Echo/Unary", &message).await;
        assert_whole(&r, &message, &format!("call {calls}"));
        calls += 1;
    }
    let stream = protocols::grpc_call(front, "/test.Echo/Stream", &[20]).await;
    let want: Vec<Vec<u8>> = (0..20)
        .map(|i| protocols::stream_message(i).to_vec())
        .collect();
    assert_eq!(stream.messages, want, "the stream arrived whole");
    assert_eq!(stream.trailer("grpc-status"), Some("0"));
    assert!(
        old.rejected() >= 3,
        "the draining pod was tried: {}",
        old.rejected()
    );
    assert!(
        mulligan.answers("retry").await >= old.rejected() as f64,
        "mulligan asked for a retry after each rejected call"
    );
    assert_eq!(
        new.served(),
        calls + 1,
        "every call ran once, on the ready pod"
    );
    assert_eq!(old.served(), 0);
}
