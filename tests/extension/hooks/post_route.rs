//! PostRouteModify: HTTPRoute and GRPCRoute policies (on a route or one of
//! its rules), carried to the translation.

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

fn grpcroute_ref(name: &str, section: Option<&str>) -> serde_json::Value {
    let mut r = json!({ "group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": name });
    if let Some(s) = section {
        r["sectionName"] = json!(s);
    }
    json!([r])
}

/// The GRPCRoute's route of Envoy Gateway's translation; with `rule`, its
/// metadata names that rule (`sectionName`), as Envoy Gateway writes it
/// for a named rule.
fn grpc_route(t: &xds::Translation, rule: Option<&str>) -> Route {
    let mut route = t
        .request
        .routes
        .iter()
        .flat_map(|c| c.virtual_hosts.iter().flat_map(|v| v.routes.iter()))
        .find(|r| r.name.starts_with("grpcroute/"))
        .cloned()
        .expect("the GRPCRoute's route");
    if let Some(rule) = rule {
        use envoy_types::pb::google::protobuf::{value::Kind, Value};
        let eg = route
            .metadata
            .as_mut()
            .and_then(|m| m.filter_metadata.get_mut("envoy-gateway"))
            .expect("Envoy Gateway's metadata");
        let Some(Kind::ListValue(list)) =
            eg.fields.get_mut("resources").and_then(|v| v.kind.as_mut())
        else {
            panic!("resources")
        };
        let Some(Kind::StructValue(s)) = list.values[0].kind.as_mut() else {
            panic!("resource")
        };
        s.fields.insert(
            "sectionName".into(),
            Value {
                kind: Some(Kind::StringValue(rule.into())),
            },
        );
    }
    route
}

#[tokio::test]
async fn a_grpcroute_policy_reaches_translation_through_post_route_modify() {
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let mut req = t.request.clone();
    for config in &mut req.routes {
        for vhost in &mut config.virtual_hosts {
            for route in &mut vhost.routes {
                if route.name.starts_with("grpcroute/") {
                    let back = route_hook(
                        &mut client,
                        route,
                        &[policy("grpc", grpcroute_ref("backend", None), json!({}))],
                    )
                    .await
                    .expect("route back");
                    *route = Route::decode(back.as_slice()).expect("route");
                }
            }
        }
    }
    let resp = translate(&mut client, req).await;
    assert_wired(
        &t.request,
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

/// Envoy Gateway delivers a rule's policy (`sectionName`) together with the
/// route's own to the routes of that rule: the rule's decides, whichever
/// way round, and whatever the policies' names.
#[tokio::test]
async fn a_policy_on_a_rule_wins_over_one_on_its_route() {
    use mulligan::extension::{policy::Mode, select::read_marker};
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = the_fixture("from-gateway-api-to-xds");
    let marker = |bytes: Option<Vec<u8>>| {
        let route = Route::decode(bytes.expect("route back").as_slice()).expect("route");
        read_marker(route.metadata.as_ref().expect("metadata")).expect("marker")
    };
    let named = grpc_route(&t, Some("things"));
    for (route_mode, rule_mode, want) in [
        ("decide", "off", Mode::Off),
        ("off", "decide", Mode::Decide),
    ] {
        let policies = [
            policy(
                "a-route",
                grpcroute_ref("backend", None),
                json!({"mode": route_mode, "budget": {"numRetries": 3}}),
            ),
            policy(
                "z-rule",
                grpcroute_ref("backend", Some("things")),
                json!({"mode": rule_mode, "budget": {"numRetries": 5}}),
            ),
        ];
        let (mode, settings) = marker(route_hook(&mut client, &named, &policies).await);
        assert_eq!(mode, want, "route {route_mode}, rule {rule_mode}");
        assert_eq!(settings.num_retries, 5, "the rule's policy decided");
    }
    // A route of another (or no) rule gets the route's own policy.
    let unnamed = grpc_route(&t, None);
    let policies = [
        policy(
            "a-route",
            grpcroute_ref("backend", None),
            json!({"budget": {"numRetries": 3}}),
        ),
        policy(
            "z-rule",
            grpcroute_ref("backend", Some("things")),
            json!({"mode": "off"}),
        ),
    ];
    let (mode, settings) = marker(route_hook(&mut client, &unnamed, &policies).await);
    assert_eq!((mode, settings.num_retries), (Mode::Decide, 3));
}
