//! The server installs what the reference bootstrap runs
//! (`envoy-config/standalone/envoy.yaml`, docs/decide.md): mulligan's
//! filters, the route's retry policy, the headers removed from clients and
//! the virtual host's attempt count, compared as proto JSON with the
//! server's output for Envoy Gateway's translation. A change to either
//! side that the other does not follow fails here.

use envoy_types::pb::envoy::{
    config::{
        bootstrap::v3::Bootstrap,
        cluster::v3::Cluster,
        listener::v3::{filter, Listener},
        route::v3::{route, RetryPolicy, Route, RouteConfiguration, VirtualHost},
    },
    extensions::{
        filters::network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager, HttpFilter,
        },
        upstreams::http::v3::HttpProtocolOptions,
    },
};
use serde_json::{json, Value};

use mulligan::names;
use rig::render;

use super::{decode, gateway_ref, policy, server::ExtensionServer, translate, xds};

const HPO: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";
const RETRY: &str = "envoy.config.route.v3.RetryPolicy";

/// The reference bootstrap, rendered with its defaults.
fn reference() -> Bootstrap {
    let app = ["127.0.0.1:18081".parse().expect("addr")];
    let text = render::standalone(&app, 50051, &[]);
    let v: Value = serde_yaml_ng::from_str(&text).expect("the reference bootstrap is YAML");
    xds::from_json("envoy.config.bootstrap.v3.Bootstrap", v)
}

fn upstream_filters(c: &Cluster) -> Vec<Value> {
    let any = c.typed_extension_protocol_options.get(HPO).expect("HPO");
    let options: HttpProtocolOptions = decode(&any.value);
    options
        .http_filters
        .iter()
        .map(|f| xds::to_json(FILTER, f))
        .collect()
}

/// The listener's (first) HTTP connection manager.
fn hcm(l: &Listener) -> HttpConnectionManager {
    let any = l
        .filter_chains
        .iter()
        .chain(&l.default_filter_chain)
        .flat_map(|c| &c.filters)
        .find_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a))
                if a.type_url.ends_with("HttpConnectionManager") =>
            {
                Some(a)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{}: no HCM", l.name));
    decode(&any.value)
}

fn named(filters: &[HttpFilter], name: &str) -> Value {
    let f = filters
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    xds::to_json(FILTER, f)
}

fn retry_policy(r: &Route) -> Value {
    let Some(route::Action::Route(a)) = &r.action else {
        panic!("{}: not forwarding", r.name)
    };
    let p: &RetryPolicy = a.retry_policy.as_ref().expect("retry policy");
    xds::to_json(RETRY, p)
}

fn first_vhost(config: &RouteConfiguration) -> &VirtualHost {
    &config.virtual_hosts[0]
}

#[tokio::test]
async fn the_server_installs_the_reference_bootstraps_wiring() {
    let reference = reference();
    let resources = reference.static_resources.as_ref().expect("static");
    let app = resources
        .clusters
        .iter()
        .find(|c| c.name == "app")
        .expect("app");
    let front = resources
        .listeners
        .iter()
        .find(|l| l.name == "mulligan")
        .expect("mulligan listener");
    let front = hcm(front);
    let Some(RouteSpecifier::RouteConfig(routes)) = &front.route_specifier else {
        panic!("inline routes")
    };

    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let mut client = server.client().await;
    let t = super::the_fixture("from-gateway-api-to-xds");
    let req = t.with_policies(&[policy(
        "gw",
        json!([gateway_ref("eg", Some("http"))]),
        json!({}),
    )]);
    let resp = translate(&mut client, req).await;
    let wired = resp
        .clusters
        .iter()
        .find(|c| c.name == "httproute/default/backend/rule/0")
        .expect("wired cluster");
    assert_eq!(
        upstream_filters(wired),
        upstream_filters(app),
        "mulligan.attempt, mulligan.strip, upstream_codec"
    );
    // An EDS cluster's endpoints are its app member's: the endpoint health
    // settings are there; the retry breaker is the aggregate's, the router's.
    let member = resp
        .clusters
        .iter()
        .find(|c| c.name == "httproute/default/backend/rule/0/mulligan_app")
        .expect("the aggregate's app member");
    assert_eq!(member.outlier_detection, app.outlier_detection);
    assert_eq!(
        member
            .common_lb_config
            .as_ref()
            .map(|c| c.healthy_panic_threshold),
        app.common_lb_config
            .as_ref()
            .map(|c| c.healthy_panic_threshold),
        "no panic routing among the app's endpoints"
    );
    assert_eq!(wired.circuit_breakers, app.circuit_breakers);
    assert_eq!(
        wired
            .common_lb_config
            .as_ref()
            .map(|c| c.healthy_panic_threshold),
        app.common_lb_config
            .as_ref()
            .map(|c| c.healthy_panic_threshold),
        "no panic routing between the app and the hold"
    );
    let listener = resp
        .listeners
        .iter()
        .find(|l| l.name == "default/eg/http")
        .expect("http listener");
    assert_eq!(
        named(&hcm(listener).http_filters, names::filter::FINAL),
        named(&front.http_filters, names::filter::FINAL)
    );
    let config = resp
        .routes
        .iter()
        .find(|r| r.name == "default/eg/http")
        .expect("route config");
    let vhost = first_vhost(config);
    let route = &vhost.routes[0];
    let want_vhost = first_vhost(routes);
    assert_eq!(
        retry_policy(route),
        retry_policy(&want_vhost.routes[0]),
        "the retry policy (default budget)"
    );
    assert_eq!(
        route.request_headers_to_remove, want_vhost.routes[0].request_headers_to_remove,
        "what no client may send"
    );
    assert!(want_vhost.include_request_attempt_count);
    assert_eq!(
        vhost.include_request_attempt_count,
        want_vhost.include_request_attempt_count
    );
    // The hold endpoint and its answer: the same connection managers (routes,
    // filters, timeout, local replies), and the same cluster between them.
    for name in [names::hold::LISTENER, names::hold::ANSWER] {
        let manager = |ls: &[Listener]| {
            ls.iter()
                .find(|l| l.name == name)
                .map(|l| {
                    xds::to_json(
                        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        &hcm(l),
                    )
                })
                .unwrap_or_else(|| panic!("{name}: no listener"))
        };
        assert_eq!(
            manager(&resp.listeners),
            manager(&resources.listeners),
            "{name}'s connection manager"
        );
    }
    let cluster = |cs: &[Cluster]| {
        cs.iter()
            .find(|c| c.name == names::hold::ANSWER)
            .map(|c| xds::to_json("envoy.config.cluster.v3.Cluster", c))
            .expect("the hold's answer cluster")
    };
    assert_eq!(
        cluster(&resp.clusters),
        cluster(&resources.clusters),
        "the hold's answer cluster"
    );
}
