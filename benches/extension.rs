//! What PostTranslateModify costs Envoy Gateway on a large gateway: Envoy
//! Gateway's own translation (from-gateway-api-to-xds) grown to N HTTP
//! routes, each with its own cluster, the way Envoy Gateway emits one per
//! route rule. Prints latency per hook call, (1) in process (the work
//! itself) and (2) over loopback gRPC (what Envoy Gateway waits for), for a
//! translation where a Gateway policy wires every route and one with no
//! policy (everything passes through as bytes). Asserts only that the
//! wiring happened.
//!
//! `cargo bench --bench extension [-- --routes N --calls N]`

use std::{sync::Arc, time::Instant};

use envoy_types::pb::envoy::config::route::v3::{route, route_action::ClusterSpecifier};
use mulligan::extension::{
    api::{
        envoy_gateway_extension_client::EnvoyGatewayExtensionClient, raw, ExtensionResource,
        PostTranslateExtensionContext, PostTranslateModifyRequest,
    },
    hooks::Hooks,
    server::ExtensionService,
    wiring::MulliganAddress,
};
use prost::Message;
use rig::bench::{arg, header, histogram, row};

/// The fixture's HTTP route and its cluster, copied `n` times under new
/// names; the other listeners, routes and clusters as they were.
fn grown(n: usize) -> PostTranslateModifyRequest {
    let t = rig::xds::translations()
        .into_iter()
        .find(|t| t.name.starts_with("from-gateway-api-to-xds"))
        .expect("fixture");
    let mut req = PostTranslateModifyRequest {
        clusters: t.clusters,
        listeners: t.listeners,
        routes: t.routes,
        ..Default::default()
    };
    const CLUSTER: &str = "httproute/default/backend/rule/0";
    let template_cluster = req
        .clusters
        .iter()
        .find(|c| c.name == CLUSTER)
        .expect("cluster")
        .clone();
    let config = req
        .routes
        .iter_mut()
        .find(|r| r.name == "default/eg/http")
        .expect("routes");
    let template = config.virtual_hosts[0].routes[0].clone();
    config.virtual_hosts[0].routes = (0..n)
        .map(|i| {
            let mut r = template.clone();
            r.name = format!("httproute/default/backend-{i}/rule/0/match/0/www_example_com");
            if let Some(route::Action::Route(a)) = r.action.as_mut() {
                a.cluster_specifier = Some(ClusterSpecifier::Cluster(format!(
                    "httproute/default/backend-{i}/rule/0"
                )));
            }
            r
        })
        .collect();
    req.clusters.retain(|c| c.name != CLUSTER);
    req.clusters.extend((0..n).map(|i| {
        let mut c = template_cluster.clone();
        c.name = format!("httproute/default/backend-{i}/rule/0");
        c
    }));
    req
}

fn with_gateway_policy(mut req: PostTranslateModifyRequest) -> PostTranslateModifyRequest {
    let policy = serde_json::json!({
        "apiVersion": "mulligan.dev/v1alpha1", "kind": "MulliganPolicy",
        "metadata": {"name": "eg", "namespace": "default"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}]},
    });
    req.post_translate_context = Some(PostTranslateExtensionContext {
        extension_resources: vec![ExtensionResource {
            unstructured_bytes: serde_json::to_vec(&policy).expect("json"),
        }],
    });
    req
}

fn to_raw(req: &PostTranslateModifyRequest) -> raw::PostTranslateModifyRequest {
    raw::PostTranslateModifyRequest::decode(req.encode_to_vec().as_slice())
        .expect("same wire format")
}

fn mulligan() -> MulliganAddress {
    MulliganAddress {
        host: "mulligan.mulligan-system.svc.cluster.local".into(),
        port: 50051,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let routes = arg("--routes", 1000) as usize;
    let calls = arg("--calls", 200);
    let plain = to_raw(&grown(routes));
    let wired = to_raw(&with_gateway_policy(grown(routes)));
    println!(
        "translation: {routes} routes, {} clusters, {} KiB per hook request",
        plain.clusters.len(),
        wired.encoded_len() / 1024
    );

    let hooks = Hooks::new(mulligan());
    let out = hooks.post_translate(wired.clone());
    assert_eq!(
        out.clusters.len(),
        plain.clusters.len() + 1,
        "mulligan's cluster added"
    );
    header(&format!("PostTranslateModify, {routes} routes, in process"));
    for (label, req) in [
        ("policy wires every route", &wired),
        ("no policy (pass-through)", &plain),
    ] {
        let mut h = histogram();
        for _ in 0..calls {
            let req = req.clone();
            let start = Instant::now();
            std::hint::black_box(hooks.post_translate(req));
            h.record(start.elapsed().as_micros() as u64)
                .expect("record");
        }
        row(label, &h, None);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = ExtensionService::new(Arc::new(Hooks::new(mulligan()))).into_server(64 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = EnvoyGatewayExtensionClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    header(&format!(
        "PostTranslateModify, {routes} routes, over loopback gRPC"
    ));
    for (label, req) in [
        ("policy wires every route", &wired),
        ("no policy (pass-through)", &plain),
    ] {
        let mut h = histogram();
        for _ in 0..calls {
            let start = Instant::now();
            let resp = client
                .post_translate_modify(req.clone())
                .await
                .expect("hook");
            std::hint::black_box(resp);
            h.record(start.elapsed().as_micros() as u64)
                .expect("record");
        }
        row(label, &h, None);
    }
}
