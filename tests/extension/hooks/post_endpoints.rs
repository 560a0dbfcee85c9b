//! PostEndpointsModify: the hold endpoint on wired EDS clusters only.

use crate::*;

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
            checks::assert_hold(cla, &decode(&back));
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
    checks::assert_hold(
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
