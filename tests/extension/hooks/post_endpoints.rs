//! PostEndpointsModify: every load assignment comes back byte for byte,
//! whatever was translated before; the hold of an EDS cluster is the
//! aggregate's, installed by PostTranslateModify.

use crate::*;

#[tokio::test]
async fn post_endpoints_returns_every_load_assignment_as_sent_whatever_came_before() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let same = |back: &[u8], sent: &[u8], name: &str, after: &str| {
        assert_eq!(
            back, sent,
            "{name} after {after}: must come back byte for byte"
        );
    };
    let check = |client: &mut Client, after: &'static str| {
        let mut client = client.clone();
        let endpoints = t.endpoints.clone();
        async move {
            for cla in &endpoints {
                let sent = cla.encode_to_vec();
                let back = endpoints_hook(&mut client, &sent).await;
                same(&back, &sent, &cla.cluster_name, after);
            }
        }
    };
    check(&mut client, "nothing").await;
    translate(
        &mut client,
        t.with_policies(&[policy(
            "http",
            json!([gateway_ref("eg", Some("http"))]),
            json!({}),
        )]),
    )
    .await;
    check(&mut client, "a Gateway policy's translation").await;
    let route = t.request.routes[0].virtual_hosts[0].routes[0].clone();
    route_hook(
        &mut client,
        &route,
        &[policy("r", httproute_ref("backend"), json!({}))],
    )
    .await;
    check(&mut client, "an HTTPRoute policy's route").await;
}
