//! PostTranslateModify: the wiring installed where a policy selects, and
//! nothing else changed.

use crate::*;

#[tokio::test]
async fn without_a_policy_of_ours_every_translation_comes_back_unchanged() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let translations = xds::translations();
    assert!(translations.len() >= 5, "fixtures: {}", translations.len());
    let foreign = json!({"apiVersion": "example.extensions.io/v1alpha1", "kind": "ListenerContextExample",
        "metadata": {"name": "x", "namespace": "default"}, "spec": {"targetRefs": [gateway_ref("eg", None)]}});
    let elsewhere = policy(
        "other-gateway",
        json!([gateway_ref("not-eg", None)]),
        json!({}),
    );
    let other_ns = json!({"apiVersion": "mulligan.dev/v1alpha1", "kind": "MulliganPolicy",
        "metadata": {"name": "p", "namespace": "elsewhere"}, "spec": {"targetRefs": [gateway_ref("eg", None)]}});
    for t in &translations {
        assert!(
            !t.request.clusters.is_empty() && !t.request.routes.is_empty(),
            "{}: empty fixture",
            t.name
        );
        for policies in [
            vec![],
            vec![
                foreign.clone(),
                json!("not even an object"),
                elsewhere.clone(),
                other_ns.clone(),
            ],
        ] {
            let req = t.with_policies(&policies);
            let (sent, back) = translate_raw(&mut client, &req).await;
            assert_same_bytes(&t.name, &sent, &back);
            assert_unchanged(&t.name, &req, &convert(&back));
        }
    }
    assert_eq!(
        server
            .metric("mulligan_extension_invalid_policies_total")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_gateway_listener_policy_adds_exactly_the_documented_wiring() {
    let server = ExtensionServer::start("mulligan.mulligan-system.svc:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let req = t.with_policies(&[policy(
        "http-only",
        json!([gateway_ref("eg", Some("http"))]),
        json!({}),
    )]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &["httproute/default/backend/rule/0/match/0/www_example_com"],
            clusters: &["httproute/default/backend/rule/0"],
            listeners: &["default/eg/http"],
            num_retries: 10,
            max_hold_s: 10,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );

    // The whole Gateway: the gRPC listener's route and cluster too (its
    // HTTP/2 upstream options are kept), with the policy's budget.
    let req = t.with_policies(&[policy(
        "all",
        json!([gateway_ref("eg", None)]),
        json!({"budget": {"numRetries": 3, "maxHold": "5s"}}),
    )]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &[
                "httproute/default/backend/rule/0/match/0/www_example_com",
                "grpcroute/default/backend/rule/0/match/0/www_grpc-example_com",
            ],
            clusters: &[
                "httproute/default/backend/rule/0",
                "grpcroute/default/backend/rule/0",
            ],
            listeners: &["default/eg/http", "default/eg/grpc"],
            num_retries: 3,
            max_hold_s: 5,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );
    assert_eq!(server.metric("mulligan_extension_routes_wired").await, 2.0);

    // A policy on one listener wins over one on the whole Gateway, whatever
    // their names: the http listener gets "z-listener"'s mode off.
    let req = t.with_policies(&[
        policy(
            "a-gateway",
            json!([gateway_ref("eg", None)]),
            json!({"budget": {"numRetries": 3}}),
        ),
        policy(
            "z-listener",
            json!([gateway_ref("eg", Some("http"))]),
            json!({"mode": "off"}),
        ),
    ]);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(
        &req,
        &resp,
        &Expect {
            routes: &["grpcroute/default/backend/rule/0/match/0/www_grpc-example_com"],
            clusters: &["grpcroute/default/backend/rule/0"],
            listeners: &["default/eg/grpc"],
            num_retries: 3,
            max_hold_s: 10,
            mulligan: ("mulligan.mulligan-system.svc", 50051, true),
        },
    );
}

#[tokio::test]
async fn every_translation_is_deterministic_and_idempotent() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    for t in xds::translations() {
        let mut req = t.with_policies(&[policy("gw", json!([gateway_ref("eg", None)]), json!({}))]);
        through_route_hook(
            &mut client,
            &mut req,
            &[policy(
                "routes",
                json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "any"}]),
                json!({"budget": {"numRetries": 4}}),
            )],
        )
        .await;
        let first = translate(&mut client, req.clone()).await;
        // (envoy-patch-policy's translation has an empty route configuration.)
        let has_routes = !route_names(&t.request).is_empty();
        assert_eq!(
            first
                .clusters
                .iter()
                .any(|c| c.name == mulligan::names::CLUSTER),
            has_routes,
            "{}: wired?",
            t.name
        );
        let second = translate(&mut client, req.clone()).await;
        assert_same_resources(&first, &second, &format!("{}: same request twice", t.name));
        let again = translate(&mut client, as_request(first.clone(), &req)).await;
        assert_same_resources(&first, &again, &format!("{}: output fed back", t.name));
    }
}

#[tokio::test]
async fn an_invalid_policy_is_reported_and_its_routes_are_left_alone() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let invalid = [
        json!({"mode": "sometimes"}),
        json!({"budget": {"numRetries": 0}}),
        json!({"budget": {"maxHold": "10m"}}),
        json!({"budget": {"numRetrys": 3}}),
    ];
    for (i, rest) in invalid.iter().enumerate() {
        let bad = policy(
            &format!("bad-{i}"),
            json!([gateway_ref("eg", Some("http"))]),
            rest.clone(),
        );
        let req = t.with_policies(std::slice::from_ref(&bad));
        let (sent, back) = translate_raw(&mut client, &req).await;
        assert_same_bytes(&format!("invalid policy {rest}"), &sent, &back);
        // Beside a valid policy for the other listener: only that one is wired.
        let req = t.with_policies(&[
            bad,
            policy("grpc", json!([gateway_ref("eg", Some("grpc"))]), json!({})),
        ]);
        let resp = translate(&mut client, req.clone()).await;
        assert_wired(
            &req,
            &resp,
            &Expect {
                routes: &["grpcroute/default/backend/rule/0/match/0/www_grpc-example_com"],
                clusters: &["grpcroute/default/backend/rule/0"],
                listeners: &["default/eg/grpc"],
                num_retries: 10,
                max_hold_s: 10,
                mulligan: ("127.0.0.1", 50051, false),
            },
        );
    }
    // An invalid HTTPRoute policy in PostRouteModify: the route comes back as sent.
    let route = t.request.routes[0].virtual_hosts[0].routes[0].clone();
    let back = route_hook(
        &mut client,
        &route,
        &[policy("bad", httproute_ref("backend"), json!({"mode": 3}))],
    )
    .await;
    assert_eq!(back, Some(route.encode_to_vec()), "byte for byte");
    assert_eq!(
        server
            .metric("mulligan_extension_invalid_policies_total")
            .await,
        9.0
    );
}

const WWW_ROUTE: &str = "httproute/default/backend/rule/0/match/0/www_example_com";

/// The fixture with a second route, `other`, in the virtual host of
/// [`WWW_ROUTE`]; no policy selects it (it has no Envoy Gateway metadata).
fn with_a_neighbour(
    req: &PostTranslateModifyRequest,
    action: envoy_types::pb::envoy::config::route::v3::route::Action,
) -> PostTranslateModifyRequest {
    let mut req = req.clone();
    let vhost = req
        .routes
        .iter_mut()
        .flat_map(|c| c.virtual_hosts.iter_mut())
        .find(|v| v.routes.iter().any(|r| r.name == WWW_ROUTE))
        .expect("the www virtual host");
    let mut other = vhost.routes[0].clone();
    other.name = "other".into();
    other.metadata = None;
    other.action = Some(action);
    vhost.routes.push(other);
    req
}

fn www_vhost(
    resp: &PostTranslateModifyResponse,
) -> &envoy_types::pb::envoy::config::route::v3::VirtualHost {
    resp.routes
        .iter()
        .flat_map(|c| &c.virtual_hosts)
        .find(|v| v.routes.iter().any(|r| r.name == WWW_ROUTE))
        .expect("the www virtual host")
}

/// `include_request_attempt_count` is a virtual host setting: a virtual
/// host that also forwards an unwired route (here to the gRPC cluster,
/// which mulligan does not wire, so nothing would strip the header) is left
/// as it was, and its wired route, without the gate, is counted. A
/// neighbour that forwards nothing (a redirect) does not matter.
#[tokio::test]
async fn the_gate_is_on_only_where_every_forwarding_route_of_the_virtual_host_is_wired() {
    use envoy_types::pb::envoy::config::route::v3::{
        route, route_action, RedirectAction, RouteAction,
    };
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let base = t.with_policies(&[policy("route", httproute_ref("backend"), json!({}))]);
    let expect = Expect {
        routes: &[WWW_ROUTE],
        clusters: &["httproute/default/backend/rule/0"],
        listeners: &["default/eg/http"],
        num_retries: 10,
        max_hold_s: 10,
        mulligan: ("127.0.0.1", 50051, false),
    };

    let forward = route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
            "grpcroute/default/backend/rule/0".into(),
        )),
        ..Default::default()
    });
    let req = with_a_neighbour(&base, forward);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(&req, &resp, &expect);
    assert!(!www_vhost(&resp).include_request_attempt_count);
    assert_eq!(
        server.metric("mulligan_extension_routes_ungated").await,
        1.0
    );

    let redirect = route::Action::Redirect(RedirectAction {
        host_redirect: "elsewhere.example.com".into(),
        ..Default::default()
    });
    let req = with_a_neighbour(&base, redirect);
    let resp = translate(&mut client, req.clone()).await;
    assert_wired(&req, &resp, &expect);
    assert!(www_vhost(&resp).include_request_attempt_count);
    assert_eq!(
        server.metric("mulligan_extension_routes_ungated").await,
        0.0
    );
}
