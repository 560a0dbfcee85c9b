//! Envoy Gateway translates each Gateway on its own, calls the hooks
//! concurrently, and may run several replicas of the server: a Gateway's
//! wiring, its hold included, must follow from its own translation alone.
//! Gateway A has a policy; Gateway B (the same HTTPRoute, attached to both,
//! so the same cluster names) has none, nor has a third of other routes.
//! After every round of translations, an Envoy running A's latest output
//! holds a request while its only pod is gone and serves it once the pod
//! is back.

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use http::Method;
use prost::Message;
use serde_json::json;

use rig::{
    client::{full, HttpClient, Proto},
    mulligan::Mulligan,
    pods::{Pod, PodState},
};

use super::{
    decode, endpoints_hook, gateway_ref,
    live::{bootstrap, run_wired, CLUSTER, HOST},
    policy, route_hook,
    server::ExtensionServer,
    translate, xds, Client,
};
use mulligan::extension::api::PostTranslateModifyResponse;

/// One Gateway's translation as Envoy Gateway makes the calls: each route
/// through PostRouteModify (no HTTPRoute policy here: the route comes back
/// as it went), its endpoints through PostEndpointsModify, then
/// PostTranslateModify with the Gateway's policies.
async fn translation(
    client: &mut Client,
    t: &xds::Translation,
    with_policy: bool,
) -> (PostTranslateModifyResponse, Vec<ClusterLoadAssignment>) {
    let policies = if with_policy {
        vec![policy("a", json!([gateway_ref("eg", None)]), json!({}))]
    } else {
        Vec::new()
    };
    for config in &t.request.routes {
        for vhost in &config.virtual_hosts {
            for route in &vhost.routes {
                route_hook(client, route, &[]).await;
            }
        }
    }
    let mut endpoints = Vec::new();
    for cla in &t.endpoints {
        endpoints.push(decode(&endpoints_hook(client, &cla.encode_to_vec()).await));
    }
    let resp = translate(client, t.with_policies(&policies)).await;
    (resp, endpoints)
}

/// Gateway A's output, run by a fresh Envoy: a POST while the only pod is
/// gone is held, then served whole once the pod is back.
async fn a_holds(
    round: &str,
    mulligan: &Mulligan,
    only: &Pod,
    a: &(PostTranslateModifyResponse, Vec<ClusterLoadAssignment>),
) {
    only.set_state(PodState::Gone).await;
    let served = only.served();
    let (envoy, front) = run_wired(&bootstrap(&a.0, &a.1, &[only.addr])).await;
    let request = tokio::spawn(async move {
        HttpClient::new(Proto::Http1)
            .send(
                Method::POST,
                front,
                "/echo",
                &HOST,
                full("held".to_string()),
            )
            .await
            .expect("request")
    });
    mulligan
        .wait_metric(
            "mulligan_held",
            1.0,
            std::time::Duration::from_secs(10),
            &format!("{round}: Gateway A's request held"),
        )
        .await;
    assert!(
        envoy
            .stat("http.mulligan_hold.downstream_rq_completed")
            .await
            >= 1,
        "{round}: the hold answered; {}",
        envoy.stats(CLUSTER).await
    );
    only.set_state(PodState::Ready).await;
    let r = request.await.expect("request task");
    assert_eq!(r.status, 200, "{round}: {:?}", r.body);
    assert_eq!(
        r.body,
        "held".as_bytes(),
        "{round}: the held POST arrived whole"
    );
    assert_eq!(only.served(), served + 1, "{round}: served once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_translated_in_turn_or_at_once_keep_the_hold_of_the_one_with_a_policy() {
    let only = Pod::start("only", PodState::Gone).await;
    let mulligan = Mulligan::beside_gateway(&[only.addr], CLUSTER).await;
    let server = ExtensionServer::start(&mulligan.grpc.to_string(), &[]).await;
    let t = super::the_fixture("from-gateway-api-to-xds");
    let mut client = server.client().await;

    // In turn: A, B, A, B. A's output is taken as it was last translated,
    // its endpoints as the hook returned them in its own translation.
    let mut a = translation(&mut client, &t, true).await;
    a_holds("A", &mulligan, &only, &a).await;
    translation(&mut client, &t, false).await;
    a_holds("A, B", &mulligan, &only, &a).await;
    a = translation(&mut client, &t, true).await;
    a_holds("A, B, A", &mulligan, &only, &a).await;
    let b = translation(&mut client, &t, false).await;
    a_holds("A, B, A, B", &mulligan, &only, &a).await;
    assert!(
        b.0.clusters.iter().all(|c| !c.name.starts_with("mulligan")),
        "B, without a policy, is not wired"
    );

    // At once: A, B and a third Gateway of other routes and clusters (no
    // policy) translated concurrently, several times over.
    let other = super::the_fixture("xds/retry");
    let rounds = (0..4).map(|_| {
        let (mut ca, mut cb, mut cc) = (client.clone(), client.clone(), client.clone());
        let (t, other) = (&t, &other);
        async move {
            let (a, _, _) = tokio::join!(
                translation(&mut ca, t, true),
                translation(&mut cb, t, false),
                translation(&mut cc, other, false)
            );
            a
        }
    });
    let outputs = futures::future::join_all(rounds).await;
    for (i, a) in outputs.iter().enumerate() {
        a_holds(&format!("concurrent round {i}"), &mulligan, &only, a).await;
    }
}
