//! The hook messages, and the hooks mulligan does not use: input comes
//! back as sent.

use crate::*;

#[test]
fn the_hand_declared_messages_match_the_vendored_proto() {
    checks::wire_format_matches_vendored_proto();
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
