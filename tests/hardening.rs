//! Issue 13's hardening items that need a running mulligan: each test here
//! failed before its fix. Items that need Envoy run real Envoy; the hand-made
//! ext_proc client stands in only for a peer sending exactly what we choose.
mod support;

use envoy_types::pb::{
    envoy::service::ext_proc::v3::{
        processing_request::Request, processing_response::Response, HttpHeaders, ProcessingRequest,
    },
    google::protobuf::{value::Kind, Struct, Value},
};
use support::{
    ext_proc::{msg, open, request_headers},
    mulligan::Mulligan,
    pods::{Pod, PodState},
};

/// `msg` with ext_proc attributes, as Envoy attaches them.
fn with_attributes(mut m: ProcessingRequest, attrs: &[(&str, Kind)]) -> ProcessingRequest {
    let mut s = Struct::default();
    for (k, v) in attrs {
        s.fields.insert(
            (*k).to_string(),
            Value {
                kind: Some(v.clone()),
            },
        );
    }
    m.attributes.insert("envoy.filters.http.ext_proc".into(), s);
    m
}

/// Item 7: a route added to the Gateway after mulligan was configured has a
/// cluster mulligan does not know. Its failed GET must pass through, not be
/// replayed to the endpoints configured for another cluster.
#[tokio::test]
async fn an_unknown_cluster_is_not_served_by_another_clusters_endpoints() {
    let other = Pod::start("other-service", PodState::Ready).await;
    let list = other.addr.to_string();
    // `--endpoints` are the endpoints of cluster "app".
    let m = Mulligan::start(&["--endpoints", &list]).await;
    let cluster = Kind::StringValue("httproute/default/new/rule/0".into());

    let mut c = open(m.grpc).await;
    c.send(with_attributes(
        request_headers(&[(":method", "GET"), (":path", "/private")], true),
        &[("xds.cluster_name", cluster.clone())],
    ))
    .await;
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    // The new route's pod refused the connection (flags 32: UF).
    c.send(with_attributes(
        msg(Request::ResponseHeaders(HttpHeaders::default())),
        &[
            ("response.code", Kind::NumberValue(503.0)),
            ("response.flags", Kind::NumberValue(32.0)),
            ("xds.cluster_name", cluster),
        ],
    ))
    .await;
    // A rescue first extends Envoy's message timeout; the answer follows.
    let mut reply = c.reply().await;
    while reply.response.is_none() && reply.override_message_timeout.is_some() {
        reply = c.reply().await;
    }
    let reply = reply.response;
    assert!(
        matches!(reply, Some(Response::ResponseHeaders(_))),
        "the 503 must pass through untouched, got {reply:?}"
    );
    assert_eq!(other.served(), 0, "another cluster's pod was used");
    assert!(m.metric("mulligan_unknown_cluster_total").await >= 1.0);
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="unknown_cluster"}"#)
            .await,
        1.0
    );
}
