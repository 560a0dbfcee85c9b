//! "The output runs": what the server returns for Envoy Gateway's real
//! translations, with its EDS endpoints through PostEndpointsModify and
//! rewritten to loopback pods, passes `envoy --mode validate`; and one runs
//! live, with a stand-in for mulligan's decisions (it asks for a retry on
//! every failed attempt), proving the wiring: Envoy makes every attempt,
//! and mulligan is asked only about failed ones.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use envoy_types::pb::envoy::{
    config::{
        bootstrap::v3::{bootstrap::StaticResources, Admin, Bootstrap},
        cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
        core::v3::{address, socket_address, Address, Node, SocketAddress, TypedExtensionConfig},
        endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment},
        listener::v3::{filter, Listener},
        route::v3::RouteConfiguration,
    },
    extensions::{
        bootstrap::internal_listener::v3::InternalListener,
        filters::network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager,
        },
    },
    service::ext_proc::v3::{
        external_processor_server::{ExternalProcessor, ExternalProcessorServer},
        processing_request, processing_response, CommonResponse, HeaderMutation, HeadersResponse,
        ProcessingRequest, ProcessingResponse,
    },
};
use futures::{Stream, StreamExt};
use http::Method;
use prost::{Message, Name};
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

use super::{
    decode, endpoints_hook, gateway_ref, policy,
    server::ExtensionServer,
    support::{
        client::{full, HttpClient, Proto},
        envoy::{envoy_bin, Envoy},
        pods::{Pod, PodState},
    },
    translate, xds,
};
use mulligan::extension::api::PostTranslateModifyResponse;

fn loopback(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port().into())),
            ..Default::default()
        })),
    }
}

/// Inlines the RDS route configuration into each HTTP connection manager.
fn inline_routes(listener: &mut Listener, routes: &[RouteConfiguration]) {
    for chain in listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut())
    {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
                continue;
            };
            if !any.type_url.ends_with(&HttpConnectionManager::full_name()) {
                continue;
            }
            let mut hcm: HttpConnectionManager = decode(&any.value);
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let config = routes
                    .iter()
                    .find(|r| r.name == rds.route_config_name)
                    .cloned()
                    .unwrap_or_default();
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(config));
                any.value = hcm.encode_to_vec();
            }
        }
    }
}

/// A load assignment's app endpoints replaced by one per pod (each a copy
/// of Envoy Gateway's first endpoint, address rewritten); internal
/// addresses (the hold) stay.
fn to_pods(cla: &mut ClusterLoadAssignment, pods: &[SocketAddr]) {
    let is_socket =
        |ep: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint| match &ep.host_identifier {
            Some(HostIdentifier::Endpoint(e)) => {
                matches!(
                    e.address.as_ref().and_then(|a| a.address.as_ref()),
                    Some(address::Address::SocketAddress(_))
                )
            }
            _ => false,
        };
    let Some(locality) = cla
        .endpoints
        .iter_mut()
        .find(|l| l.lb_endpoints.iter().any(is_socket))
    else {
        return;
    };
    let Some(template) = locality.lb_endpoints.iter().find(|e| is_socket(e)).cloned() else {
        return;
    };
    locality.lb_endpoints = pods
        .iter()
        .map(|p| {
            let mut ep = template.clone();
            if let Some(HostIdentifier::Endpoint(e)) = ep.host_identifier.as_mut() {
                e.address = Some(loopback(*p));
            }
            ep
        })
        .collect();
    let first = cla
        .endpoints
        .iter()
        .position(|l| l.lb_endpoints.iter().any(is_socket));
    let mut i = 0;
    cla.endpoints.retain(|l| {
        let keep = Some(i) == first || !l.lb_endpoints.iter().any(is_socket);
        i += 1;
        keep
    });
}

/// An Envoy bootstrap holding the translation as static resources: EDS
/// clusters become STATIC with `endpoints` (already through the hook).
fn bootstrap(
    resp: &PostTranslateModifyResponse,
    endpoints: &[ClusterLoadAssignment],
    pods: &[SocketAddr],
) -> Bootstrap {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listeners = resp.listeners.iter().cloned().map(|mut l| {
        if let Some(Address {
            address: Some(address::Address::SocketAddress(sa)),
        }) = l.address.as_mut()
        {
            sa.address = "127.0.0.1".into();
            sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(0));
        }
        inline_routes(&mut l, &resp.routes);
        l
    });
    let clusters = resp.clusters.iter().cloned().map(|mut c: Cluster| {
        if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
            let service = c
                .eds_cluster_config
                .take()
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let mut cla = endpoints
                .iter()
                .find(|e| e.cluster_name == service)
                .cloned()
                .unwrap_or_default();
            cla.cluster_name = c.name.clone();
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.load_assignment = Some(cla);
        }
        if c.name != "mulligan" {
            if let Some(cla) = c.load_assignment.as_mut() {
                to_pods(cla, pods);
            }
        }
        c
    });
    let internal_listener = InternalListener::default();
    Bootstrap {
        node: Some(Node {
            id: "extension-test".into(),
            cluster: "extension-test".into(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(loopback(any_port)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: listeners.collect(),
            clusters: clusters.collect(),
            secrets: resp.secrets.clone(),
        }),
        bootstrap_extensions: vec![TypedExtensionConfig {
            name: "envoy.bootstrap.internal_listener".into(),
            typed_config: Some(envoy_types::pb::google::protobuf::Any {
                type_url: InternalListener::type_url(),
                value: internal_listener.encode_to_vec(),
            }),
        }],
        ..Default::default()
    }
}

/// The translation wired by the server, with its endpoints through
/// PostEndpointsModify, as Envoy Gateway would send them to Envoy.
async fn wired(
    server: &ExtensionServer,
    t: &xds::Translation,
) -> (PostTranslateModifyResponse, Vec<ClusterLoadAssignment>) {
    let mut client = server.client().await;
    let mut req = t.with_policies(&[policy("gw", json!([gateway_ref("eg", None)]), json!({}))]);
    super::through_route_hook(
        &mut client,
        &mut req,
        &[policy("routes", super::httproute_ref("any"), json!({}))],
    )
    .await;
    let resp = translate(&mut client, req).await;
    let mut endpoints = Vec::new();
    for cla in &t.endpoints {
        endpoints.push(decode(
            &endpoints_hook(&mut client, &cla.encode_to_vec()).await,
        ));
    }
    (resp, endpoints)
}

#[tokio::test]
async fn every_wired_translation_passes_envoy_validate() {
    let envoy = envoy_bin();
    let server = ExtensionServer::start("127.0.0.1:50051", &[]).await;
    let pods: [SocketAddr; 2] = [
        "127.0.0.1:18081".parse().expect("a"),
        "127.0.0.1:18082".parse().expect("b"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for t in xds::translations() {
        let (resp, endpoints) = wired(&server, &t).await;
        let has_routes = resp.routes.iter().any(|r| !r.virtual_hosts.is_empty());
        assert_eq!(
            resp.listeners.iter().any(|l| l.name == "mulligan_hold"),
            has_routes,
            "{}",
            t.name
        );
        let path = dir
            .path()
            .join(format!("{}.pb", t.name.replace(['/', ':', '.'], "_")));
        std::fs::write(&path, bootstrap(&resp, &endpoints, &pods).encode_to_vec()).expect("write");
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .output()
            .expect("envoy --mode validate");
        assert!(
            out.status.success(),
            "{}: Envoy rejected the wired translation:\n{}{}",
            t.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stands in for mulligan's decisions: on a failed attempt it asks for a
/// retry (`x-mulligan-retry: 1`), on the final response it passes. It counts
/// the streams Envoy opens, per phase.
#[derive(Default)]
struct Decider {
    attempts: AtomicU64,
    finals: AtomicU64,
    statuses: std::sync::Mutex<Vec<String>>,
}

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

struct DeciderService(Arc<Decider>);

#[tonic::async_trait]
impl ExternalProcessor for DeciderService {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let phase = request
            .metadata()
            .get("x-mulligan-phase")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let attempt = phase == "attempt";
        if attempt {
            &self.0.attempts
        } else {
            &self.0.finals
        }
        .fetch_add(1, Ordering::SeqCst);
        let me = Arc::clone(&self.0);
        let replies = request.into_inner().filter_map(move |msg| {
            let me = Arc::clone(&me);
            async move {
                let Ok(ProcessingRequest {
                    request: Some(processing_request::Request::ResponseHeaders(h)),
                    ..
                }) = msg
                else {
                    return None;
                };
                let status = h
                    .headers
                    .iter()
                    .flat_map(|m| &m.headers)
                    .find(|x| x.key == ":status")
                    .map(|x| String::from_utf8_lossy(&x.raw_value).to_string())
                    .unwrap_or_default();
                me.statuses.lock().expect("lock").push(status);
                let mutation = attempt.then(|| HeaderMutation {
                    set_headers: vec![
                        envoy_types::pb::envoy::config::core::v3::HeaderValueOption {
                            header: Some(envoy_types::pb::envoy::config::core::v3::HeaderValue {
                                key: "x-mulligan-retry".into(),
                                raw_value: b"1".to_vec(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                });
                let reply = HeadersResponse {
                    response: Some(CommonResponse {
                        header_mutation: mutation,
                        ..Default::default()
                    }),
                };
                Some(Ok(ProcessingResponse {
                    response: Some(processing_response::Response::ResponseHeaders(reply)),
                    ..Default::default()
                }))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

async fn start_decider() -> (Arc<Decider>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let decider = Arc::new(Decider::default());
    let service = ExternalProcessorServer::new(DeciderService(Arc::clone(&decider)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (decider, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wired_gateway_retries_failed_attempts_and_asks_mulligan_only_about_them() {
    let (decider, decider_addr) = start_decider().await;
    let server = ExtensionServer::start(&decider_addr.to_string(), &[]).await;
    let ready = Pod::start("ready", PodState::Ready).await;
    let draining = Pod::start("draining", PodState::Draining).await;
    let gone = Pod::start("gone", PodState::Gone).await;
    let t = super::the_fixture("from-gateway-api-to-xds");
    let (resp, endpoints) = wired(&server, &t).await;
    let b = bootstrap(&resp, &endpoints, &[draining.addr, ready.addr, gone.addr]);
    let json = xds::to_json("envoy.config.bootstrap.v3.Bootstrap", &b);
    let envoy = Envoy::start(&json.to_string()).await;
    let front = envoy.listener("default/eg/http").await;
    let http = HttpClient::new(Proto::Http1);
    let host = [("host", "www.example.com")];
    let n = 40;
    for i in 0..n {
        let (method, path, body) = if i % 4 == 0 {
            (Method::POST, "/echo", format!("body {i}"))
        } else {
            (Method::GET, "/", String::new())
        };
        let r = http
            .send(method, front, path, &host, full(body.clone()))
            .await
            .expect("request");
        assert_eq!(
            r.status,
            200,
            "request {i}: {:?}\n{}",
            r.headers,
            envoy.stats("retry").await
        );
        assert_eq!(
            r.headers
                .get("x-pod")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("ready")
        );
        if !body.is_empty() {
            assert_eq!(r.body, body.as_bytes(), "the retried POST carried its body");
        }
    }
    assert_eq!(ready.served(), n, "every request served by the ready pod");
    let failed = draining.rejected();
    assert!(failed > 0, "the draining pod was tried");
    assert_eq!(
        decider.attempts.load(Ordering::SeqCst),
        failed,
        "one ext_proc stream per failed attempt, none for healthy ones"
    );
    assert!(
        decider
            .statuses
            .lock()
            .expect("lock")
            .iter()
            .all(|s| s == "503"),
        "asked only about 5xx"
    );
    assert_eq!(
        decider.finals.load(Ordering::SeqCst),
        0,
        "no final 5xx reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_app_endpoint_left_the_attempt_reaches_the_hold_and_mulligan_is_asked() {
    let (decider, decider_addr) = start_decider().await;
    let server = ExtensionServer::start(&decider_addr.to_string(), &[]).await;
    let gone = Pod::start("gone", PodState::Gone).await;
    let t = super::the_fixture("from-gateway-api-to-xds");
    let (resp, endpoints) = wired(&server, &t).await;
    let b = bootstrap(&resp, &endpoints, &[gone.addr]);
    let envoy =
        Envoy::start(&xds::to_json("envoy.config.bootstrap.v3.Bootstrap", &b).to_string()).await;
    let front = envoy.listener("default/eg/http").await;
    let r = HttpClient::new(Proto::Http1)
        .send(
            Method::GET,
            front,
            "/",
            &[("host", "www.example.com")],
            full(String::new()),
        )
        .await
        .expect("request");
    // The refused connection is retried by Envoy without asking mulligan;
    // the ejected pod leaves the hold (priority 1) as the only endpoint, its
    // 503 goes through mulligan.attempt, and the stand-in asks for retries
    // until the route's budget is spent.
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "no healthy upstream".as_bytes());
    let attempts = decider.attempts.load(Ordering::SeqCst);
    assert!(
        (1..=6).contains(&attempts),
        "the hold's 503s were put to mulligan: {attempts}"
    );
    assert!(decider
        .statuses
        .lock()
        .expect("lock")
        .iter()
        .all(|s| s == "503"));
    assert_eq!(
        decider.finals.load(Ordering::SeqCst),
        1,
        "the final 503 too"
    );
    assert!(
        envoy
            .stat("cluster.httproute/default/backend/rule/0.upstream_cx_connect_fail")
            .await
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_behind_the_wired_gateway_shows_the_client_no_503() {
    let (decider, decider_addr) = start_decider().await;
    let server = ExtensionServer::start(&decider_addr.to_string(), &[]).await;
    let old = [
        Pod::start("old-1", PodState::Ready).await,
        Pod::start("old-2", PodState::Ready).await,
    ];
    let new = [
        Pod::start("new-1", PodState::Booting).await,
        Pod::start("new-2", PodState::Booting).await,
    ];
    let addrs: Vec<SocketAddr> = old.iter().chain(&new).map(|p| p.addr).collect();
    let t = super::the_fixture("from-gateway-api-to-xds");
    let (resp, endpoints) = wired(&server, &t).await;
    let b = bootstrap(&resp, &endpoints, &addrs);
    let envoy =
        Envoy::start(&xds::to_json("envoy.config.bootstrap.v3.Bootstrap", &b).to_string()).await;
    let front = envoy.listener("default/eg/http").await;

    // A second client keeps requests in flight while the first one steps
    // the rollout along at fixed points of its own sequence.
    let background = tokio::spawn(async move {
        let http = HttpClient::new(Proto::Http1);
        let mut statuses = Vec::new();
        for i in 0..300 {
            let body = if i % 3 == 0 {
                format!("bg {i}")
            } else {
                String::new()
            };
            let method = if body.is_empty() {
                Method::GET
            } else {
                Method::POST
            };
            let r = http
                .send(
                    method,
                    front,
                    "/echo",
                    &[("host", "www.example.com")],
                    full(body),
                )
                .await;
            statuses.push(r.map(|r| r.status.as_u16()).unwrap_or(0));
        }
        statuses
    });
    let http = HttpClient::new(Proto::Http1);
    let grace = std::time::Duration::from_secs(2);
    for i in 0..400 {
        match i {
            50 => new[0].set_state(PodState::Ready).await,
            100 => old[0].set_state(PodState::Draining).await,
            150 => old[0].exit(grace),
            200 => new[1].set_state(PodState::Ready).await,
            250 => old[1].set_state(PodState::Draining).await,
            300 => old[1].exit(grace),
            _ => {}
        }
        let r = http
            .send(
                Method::GET,
                front,
                "/",
                &[("host", "www.example.com")],
                full(String::new()),
            )
            .await
            .expect("request");
        assert_eq!(
            r.status, 200,
            "request {i} during the rollout: {:?}",
            r.headers
        );
    }
    let statuses = background.await.expect("background client");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "background client saw {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let rejected: u64 = old.iter().chain(&new).map(|p| p.rejected()).sum();
    assert!(rejected > 0, "the rollout produced failed attempts");
    assert_eq!(
        decider.attempts.load(Ordering::SeqCst),
        rejected,
        "mulligan asked once per failed attempt, never for a healthy one"
    );
    assert_eq!(decider.finals.load(Ordering::SeqCst), 0);
    assert_eq!(
        new.iter().map(|p| p.served()).sum::<u64>() + old.iter().map(|p| p.served()).sum::<u64>(),
        700
    );
}
