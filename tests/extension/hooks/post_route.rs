//! PostRouteModify: HTTPRoute policies, carried to the translation.

use crate::*;

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
    checks::assert_wired_after_route_hook(
        &t.request,
        &resp,
        &Expect {
            routes: &routes,
            clusters: &["first-route-dest"],
            listeners: &["first-listener"],
            num_retries: 10,
            max_hold_s: 10,
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
        max_hold_s: 10,
        mulligan: ("127.0.0.1", 50051, false),
    };
    assert_wired(&before, &resp, &grpc_only);
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
            max_hold_s: 10,
            mulligan: ("127.0.0.1", 50051, false),
        },
    );
}
