//! Issue 13's hardening items that need a running mulligan: each test here
//! failed before its fix. Items that need Envoy run real Envoy; the hand-made
//! ext_proc client stands in only for a peer sending exactly what we choose.

use envoy_types::pb::{
    envoy::service::ext_proc::v3::{
        processing_request::Request, processing_response::Response, HttpHeaders, ProcessingRequest,
    },
    google::protobuf::{value::Kind, Struct, Value},
};
use rig::{
    ext_proc::{msg, open, open_as, request_headers, Conversation},
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

/// Item 11: configs that would panic, fail later or silently do nothing are
/// refused by `check-config` with FILE:LINE:COL, and `serve` refuses them
/// the same way instead of starting.
#[test]
fn check_config_and_serve_refuse_what_would_fail_at_run_time() {
    let cases: &[(&str, &str)] = &[
        // tokio's interval panics on a zero period.
        (
            "[probe]\npath = \"/ready\"\ninterval = \"0s\"\n",
            ":3:12: probe.interval",
        ),
        ("[probe]\npath = \"ready\"\n", ":2:8: probe.path"),
        (
            "[rescue]\ndrain_header = \"connection\"\n",
            ":2:16: rescue.drain_header",
        ),
        (
            "[rescue]\nper_try_timeout = \"0s\"\n",
            ":2:19: rescue.per_try_timeout",
        ),
        (
            "[rescue]\nmax_response_body_bytes = 70000000\n",
            ":2:27: rescue.max_response_body_bytes",
        ),
        // In milliseconds it does not fit the registry's u64 clock: the
        // first failure would get a truncated, meaningless penalty.
        (
            "[health]\npenalty_base = \"500000000000years\"\n",
            ":2:16: health.penalty_base",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_mulligan"))
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("check-config");
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{text:?} accepted");
        let at = format!("{}{want}", file.display());
        assert!(err.starts_with(&at), "{text:?}: want {at:?}, got {err:?}");
        let serve = std::process::Command::new(env!("CARGO_BIN_EXE_mulligan"))
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("serve");
        assert_eq!(
            serve.status.code(),
            Some(2),
            "{text:?}: serve must refuse it"
        );
        assert!(String::from_utf8_lossy(&serve.stderr).starts_with(&at));
    }
}

/// tokio's worker threads of a process (`tokio-rt-worker`; older tokio
/// named them `tokio-runtime-worker`, which the kernel cuts to 15 bytes).
fn tokio_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| matches!(comm.trim_end(), "tokio-rt-worker" | "tokio-runtime-w"))
        .count()
}

/// Item 12: `runtime.worker_threads` sizes the runtime. The machine has
/// fewer cores than 5 and more than 1, so neither count is tokio's default.
#[tokio::test]
async fn runtime_worker_threads_is_applied() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1usize, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("m.toml");
        std::fs::write(&cfg, format!("[runtime]\nworker_threads = {threads}\n")).expect("write");
        let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
        // Workers may still be starting when the ports are announced: the
        // count settles within moments (and never exceeds the setting).
        let mut seen = tokio_workers(m.pid());
        for _ in 0..100 {
            if seen >= threads {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            seen = tokio_workers(m.pid());
        }
        assert_eq!(seen, threads, "worker_threads = {threads} on {cores} cores");
    }
}

/// Item 13: a replayed response body is held in memory too, so it counts
/// toward `limits.max_buffered_bytes`: one that does not fit is not used,
/// and the original response passes through.
#[tokio::test]
async fn replayed_response_bodies_count_toward_the_buffer_limit() {
    let pod = Pod::start("a", PodState::Ready).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\nmax_buffered_bytes = 1000\n[endpoints]\nstatic = [\"{}\"]\n",
            pod.addr
        ),
    )
    .expect("write");
    let m = Mulligan::start(&["--config", cfg.to_str().expect("path")]).await;
    let mut c = open(m.grpc).await;
    c.send(request_headers(
        &[(":method", "GET"), (":path", "/bytes/5000")],
        true,
    ))
    .await;
    c.reply().await;
    c.send(with_attributes(
        msg(Request::ResponseHeaders(HttpHeaders::default())),
        &[
            ("response.code", Kind::NumberValue(503.0)),
            ("response.flags", Kind::NumberValue(32.0)),
        ],
    ))
    .await;
    let mut reply = c.reply().await;
    while reply.response.is_none() && reply.override_message_timeout.is_some() {
        reply = c.reply().await;
    }
    assert_eq!(pod.served(), 1, "the replay reached the pod");
    assert!(
        matches!(reply.response, Some(Response::ResponseHeaders(_))),
        "a 5000-byte body was held past a 1000-byte limit: {:?}",
        reply
            .response
            .map(|r| format!("{r:?}").chars().take(200).collect::<String>())
    );
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="response_too_large"}"#)
            .await,
        1.0
    );
}

/// Item 1: the `mulligan.v1.Lifecycle` API is not on the ext_proc port
/// (which Envoy, and so anything that can pass for Envoy, reaches): it has
/// its own listener, and only when configured.
#[tokio::test]
async fn the_lifecycle_api_is_not_served_on_the_ext_proc_port() {
    use mulligan::proto::{lifecycle_client::LifecycleClient, EndpointRef};
    let m = Mulligan::start(&[
        "--endpoints",
        "127.0.0.1:7001",
        "--control-listen",
        "127.0.0.1:0",
    ])
    .await;
    let drain = || EndpointRef {
        address: "127.0.0.1:7001".into(),
        cluster: String::new(),
    };
    let connect = |addr: std::net::SocketAddr| async move {
        let channel = rig::mulligan::grpc_channel(addr).await;
        LifecycleClient::new(channel)
    };
    let refused = connect(m.grpc)
        .await
        .mark_draining(drain())
        .await
        .expect_err("lifecycle on the ext_proc port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused}");
    let control = m.control.expect("control port announced");
    assert_ne!(control, m.grpc);
    connect(control)
        .await
        .mark_draining(drain())
        .await
        .expect("lifecycle on the control port (loopback is trusted)");
}

/// Item 1: the shipped NetworkPolicy (listed in the kustomization) admits
/// only Envoy Gateway's proxy pods to ext_proc, and only the admin port to
/// the application's namespace (the lifecycle hooks). It is read as the
/// Kubernetes API type, so a misspelt field fails here, not at apply time.
#[test]
fn the_network_policy_admits_only_envoy_gateway_to_ext_proc() {
    use k8s_openapi::{
        api::{apps::v1::Deployment, networking::v1::NetworkPolicy},
        apimachinery::pkg::util::intstr::IntOrString,
    };
    let dir = rig::repo_root().join("envoy-config/gateway/kubernetes");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let kz: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("kustomization.yaml")).unwrap();
    assert!(
        kz["resources"]
            .as_sequence()
            .expect("resources")
            .iter()
            .any(|r| r.as_str() == Some("networkpolicy.yaml")),
        "the kustomization must apply networkpolicy.yaml"
    );
    let np: NetworkPolicy =
        serde_yaml_ng::from_str(&read("networkpolicy.yaml")).expect("a NetworkPolicy");
    let deploy: Deployment = serde_yaml_ng::from_str(&read("deployment.yaml")).expect("Deployment");
    let spec = np.spec.expect("spec");
    // It selects mulligan's pods.
    let pod_labels = deploy
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .expect("pod labels");
    let selector = spec.pod_selector.clone().and_then(|s| s.match_labels);
    for (k, v) in selector.expect("matchLabels") {
        assert_eq!(pod_labels.get(&k), Some(&v), "podSelector {k}");
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let rules = spec.ingress.expect("ingress rules");
    let port = |name: &str| IntOrString::String(name.to_string());
    for rule in &rules {
        let ports: Vec<_> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone().expect("port"))
            .collect();
        assert!(!ports.is_empty(), "a rule without ports opens every port");
        let peers = rule
            .from
            .as_ref()
            .expect("a rule without peers admits anyone");
        if ports.contains(&port("grpc")) {
            assert_eq!(ports, vec![port("grpc")], "ext_proc shares no rule");
            for peer in peers {
                let ns = peer.namespace_selector.as_ref().expect("namespace");
                let pods = peer.pod_selector.as_ref().expect("proxy pods only");
                let ns = ns.match_labels.as_ref().expect("labels");
                assert_eq!(ns["kubernetes.io/metadata.name"], "envoy-gateway-system");
                let pods = pods.match_labels.as_ref().expect("labels");
                assert_eq!(pods["app.kubernetes.io/component"], "proxy");
                assert_eq!(pods["app.kubernetes.io/managed-by"], "envoy-gateway");
                assert!(peer.ip_block.is_none());
            }
        } else {
            assert_eq!(ports, vec![port("admin")], "only admin besides ext_proc");
            assert!(peers.iter().all(|p| p.ip_block.is_none()));
        }
    }
    assert!(rules.iter().any(|r| r
        .ports
        .iter()
        .flatten()
        .any(|p| p.port == Some(port("grpc")))));
}

/// A test PKI made on the spot: a CA, mulligan's server certificate
/// (`mulligan.test`, 127.0.0.1) and Envoy's client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let write =
            |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).expect(name);
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "mulligan test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
        write("ca.pem", ca.pem());
        let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(sans).expect("params");
            p.extended_key_usages = vec![usage];
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.signed_by(&key, &ca).expect("sign");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        leaf(
            vec!["mulligan.test".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "mulligan",
        );
        leaf(
            vec!["envoy.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "envoy",
        );
        // A client certificate from a CA mulligan does not trust.
        let rogue = rcgen::generate_simple_self_signed(vec!["rogue.test".into()]).expect("rogue");
        write("rogue.pem", rogue.cert.pem());
        write("rogue.key", rogue.signing_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// mulligan's `[grpc_tls]`.
    fn mulligan_toml(&self) -> String {
        format!(
            "[grpc_tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n[budget]\nratio = 1.0\n",
            self.path("mulligan.pem"),
            self.path("mulligan.key"),
            self.path("ca.pem")
        )
    }
}

/// The reference bootstrap with the `mulligan` cluster speaking TLS: Envoy
/// presents its client certificate and checks mulligan's against the CA.
fn bootstrap_with_tls(pki: &Pki, app: &[std::net::SocketAddr], grpc_port: u16) -> String {
    let yaml = rig::render::standalone(app, grpc_port, &[]);
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("bootstrap");
    let tls: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        r#"
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
  sni: mulligan.test
  common_tls_context:
    alpn_protocols: ["h2"]
    tls_certificates:
    - certificate_chain: {{ filename: "{}" }}
      private_key: {{ filename: "{}" }}
    validation_context:
      trusted_ca: {{ filename: "{}" }}
      match_typed_subject_alt_names:
      - san_type: DNS
        matcher: {{ exact: mulligan.test }}
"#,
        pki.path("envoy.pem"),
        pki.path("envoy.key"),
        pki.path("ca.pem")
    ))
    .expect("tls yaml");
    let clusters = doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters");
    let mulligan = clusters
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("mulligan"))
        .expect("mulligan cluster");
    mulligan["transport_socket"] = tls;
    serde_yaml_ng::to_string(&doc).expect("yaml")
}

/// Item 1: with `[grpc_tls]`, real Envoy reaches mulligan over mutual TLS
/// and rescues work through it; a client without a certificate, or with
/// one the CA did not sign, or in plaintext, gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_mulligan_over_mutual_tls_and_others_are_refused() {
    use rig::{client, envoy::Envoy};
    let pki = Pki::new();
    let ready = Pod::start("ready", PodState::Ready).await;
    let draining = Pod::start("draining", PodState::Draining).await;
    let pods = [ready.addr, draining.addr];
    let cfg = pki.dir.path().join("m.toml");
    std::fs::write(&cfg, pki.mulligan_toml()).expect("write");
    let list = format!("{},{}", ready.addr, draining.addr);
    let m = Mulligan::start(&[
        "--config",
        cfg.to_str().expect("path"),
        "--endpoints",
        &list,
    ])
    .await;
    let envoy = Envoy::start(&bootstrap_with_tls(&pki, &pods, m.grpc.port())).await;
    let front = envoy.listener("mulligan").await;

    for _ in 0..10 {
        let r = client::get(front, "/").await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello from ready\n");
    }
    assert_eq!(draining.served(), 0);
    assert!(envoy.stat("cluster.mulligan.ssl.handshake").await >= 1);
    assert_eq!(
        envoy
            .stat("http.mulligan.ext_proc.failure_mode_allowed")
            .await,
        0
    );
    // The decide wiring asks only about failed attempts: the draining
    // pod's refusals, each answered "retry" over TLS.
    assert!(m.streams().await >= 1.0);
    assert!(
        m.metric(r#"mulligan_answers_total{answer="retry"}"#).await >= 1.0,
        "a request the draining pod refused was retried at mulligan's word, over TLS"
    );

    // Anyone else: a TLS client without a certificate, one with a
    // certificate from another CA, and plaintext h2c.
    let health = |tls: Option<tonic::transport::ClientTlsConfig>| {
        let addr = m.grpc;
        async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
                .expect("endpoint")
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(5));
            if let Some(tls) = tls {
                ep = ep.tls_config(tls).expect("tls config");
            }
            let channel = ep.connect().await.map_err(|e| e.to_string())?;
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).unwrap());
    let base = || {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name("mulligan.test")
    };
    let identity = |name: &str| {
        tonic::transport::Identity::from_pem(
            std::fs::read(pki.path(&format!("{name}.pem"))).unwrap(),
            std::fs::read(pki.path(&format!("{name}.key"))).unwrap(),
        )
    };
    // The same client with Envoy's certificate gets through: the refusals
    // below are about the certificate, not the test client.
    health(Some(base().identity(identity("envoy"))))
        .await
        .expect("a client with a certificate the CA signed");
    for (what, tls) in [
        ("no client certificate", Some(base())),
        (
            "a certificate from another CA",
            Some(base().identity(identity("rogue"))),
        ),
        ("plaintext", None),
    ] {
        let r = health(tls).await;
        assert!(r.is_err(), "{what}: mulligan answered");
    }
}

/// Item 1: any pod that can reach the ext_proc port can send a made-up
/// request and a made-up 503. mulligan as shipped (`serve`, no `--replay`)
/// must not fetch anything from an app for it, on a legacy stream or a
/// decide-wiring one: the failed response passes through untouched.
#[tokio::test]
async fn no_ext_proc_peer_can_make_mulligan_fetch_from_an_app() {
    let pod = Pod::start("app", PodState::Ready).await;
    let list = pod.addr.to_string();
    let m = Mulligan::spawn(&[
        "serve",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--endpoints",
        &list,
    ])
    .await;
    let failed = || {
        with_attributes(
            msg(Request::ResponseHeaders(HttpHeaders::default())),
            &[
                ("response.code", Kind::NumberValue(503.0)),
                ("response.flags", Kind::NumberValue(32.0)),
                ("upstream.address", Kind::StringValue(list.clone())),
                ("xds.cluster_name", Kind::StringValue("app".into())),
                ("request.method", Kind::StringValue("GET".into())),
            ],
        )
    };
    let attack = request_headers(
        &[
            (":method", "GET"),
            (":path", "/admin/users"),
            ("x-user", "root"),
        ],
        true,
    );
    // The legacy stream: request headers, then the 503.
    let mut legacy = open(m.grpc).await;
    legacy.send(attack).await;
    legacy.reply().await;
    legacy.send(failed()).await;
    expect_pass_through(&mut legacy).await;
    // A stream claiming to be the decide wiring's attempt filter.
    let mut attempt = open_as(m.grpc, "attempt").await;
    attempt.send(failed()).await;
    let reply = attempt.reply().await.response;
    assert!(
        matches!(reply, Some(Response::ResponseHeaders(_))),
        "{reply:?}"
    );
    assert_eq!(pod.served(), 0, "mulligan fetched from the app for a peer");
}

async fn expect_pass_through(c: &mut Conversation) {
    let mut reply = c.reply().await;
    while reply.response.is_none() && reply.override_message_timeout.is_some() {
        reply = c.reply().await;
    }
    assert!(
        matches!(reply.response, Some(Response::ResponseHeaders(_))),
        "the 503 must pass through, got {:?}",
        reply.response
    );
}

/// mulligan with `toml` as its config file.
async fn start_with(toml: &str) -> Mulligan {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, toml).expect("write");
    Mulligan::start(&["--config", cfg.to_str().expect("path")]).await
}

/// The passive-health penalty mulligan holds against `addr` now (ms).
async fn penalty_ms(m: &Mulligan, addr: std::net::SocketAddr) -> u64 {
    let r = rig::client::get(m.admin, "/v1/endpoints")
        .await
        .expect("list endpoints");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let listed = v["endpoints"].as_array().expect("array").iter();
    listed
        .filter(|e| e["address"] == addr.to_string())
        .map(|e| e["penalty_ms"].as_u64().expect("penalty_ms"))
        .max()
        .expect("endpoint listed")
}

/// Sends a legacy-wiring exchange on `c`: request headers `request`, then
/// a 503 response with `attrs`; returns the reply that ends it (after any
/// message-timeout extension).
/// `GET path` on `c`, failed with `attrs`: mulligan must let Envoy's 503
/// through as it came.
async fn assert_passes_through(c: &mut Conversation, path: &str, attrs: &[(&str, Kind)]) {
    let get = request_headers(&[(":method", "GET"), (":path", path)], true);
    let reply = failed_exchange(c, get, attrs).await;
    assert!(
        matches!(reply, Some(Response::ResponseHeaders(_))),
        "the 503 must pass through, got {reply:?}"
    );
}

/// Envoy's attributes for a refused or failed connection (flag UF): a
/// failure that is replayable whatever the method.
fn connection_failure() -> [(&'static str, Kind); 2] {
    [
        ("response.code", Kind::NumberValue(503.0)),
        ("response.flags", Kind::NumberValue(32.0)),
    ]
}

async fn failed_exchange(
    c: &mut Conversation,
    request: ProcessingRequest,
    attrs: &[(&str, Kind)],
) -> Option<Response> {
    c.send(request).await;
    assert!(matches!(
        c.reply().await.response,
        Some(Response::RequestHeaders(_))
    ));
    c.send(with_attributes(
        msg(Request::ResponseHeaders(HttpHeaders::default())),
        attrs,
    ))
    .await;
    let mut reply = c.reply().await;
    while reply.response.is_none() && reply.override_message_timeout.is_some() {
        reply = c.reply().await;
    }
    reply.response
}

/// Item 8: a path that `http::Uri` rejects is the request's fault. It
/// passes through unreplayed, and no endpoint is penalised for it.
#[tokio::test]
async fn a_path_http_cannot_carry_penalises_no_endpoint() {
    let mut pods = Vec::new();
    for name in ["a", "b", "c"] {
        pods.push(Pod::start(name, PodState::Ready).await);
    }
    let list: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let m = start_with(&format!("[endpoints]\nstatic = [{}]\n", list.join(","))).await;
    let mut c = open(m.grpc).await;
    assert_passes_through(&mut c, "/a<b>", &connection_failure()).await;
    for p in &pods {
        assert_eq!(penalty_ms(&m, p.addr).await, 0, "{} penalised", p.name());
        assert_eq!(p.served(), 0);
    }
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="unreplayable"}"#)
            .await,
        1.0
    );
}

/// Item 8: a replay that would start at the deadline (here the backoff
/// before the second replay runs up to it) is not sent with a ~0 ms
/// timeout: it could only time out, and the healthy endpoint it was meant
/// for would be penalised.
#[tokio::test]
async fn a_replay_at_the_deadline_is_not_sent_and_penalises_no_one() {
    let gone = Pod::start("gone", PodState::Gone).await;
    let ready = Pod::start("ready", PodState::Ready).await;
    let m = start_with(&format!(
        "[rescue]\ndeadline = \"300ms\"\nbackoff_base = \"1h\"\nbackoff_max = \"1h\"\n\
         retry_plain_503 = true\n[endpoints]\nstatic = [\"{}\", \"{}\"]\n",
        gone.addr, ready.addr
    ))
    .await;
    let mut c = open(m.grpc).await;
    // A plain 503 from `ready` (not its fault, so it is not penalised, but
    // not tried again at once): the first replay goes to `gone` and is
    // refused; the second waits out its backoff, cut to the deadline, and
    // only `ready` is left.
    let plain_503 = [
        ("response.code", Kind::NumberValue(503.0)),
        (
            "upstream.address",
            Kind::StringValue(ready.addr.to_string()),
        ),
    ];
    assert_passes_through(&mut c, "/", &plain_503).await;
    assert!(penalty_ms(&m, gone.addr).await > 0, "the refusal was seen");
    assert_eq!(penalty_ms(&m, ready.addr).await, 0, "ready was penalised");
    assert_eq!(
        m.metric(r#"mulligan_rescues_total{outcome="no_time_left"}"#)
            .await,
        1.0
    );
}

/// Item 8: a replay whose timeout the deadline cut short of
/// `per_try_timeout` says nothing of the endpoint when it runs out: the
/// endpoint was not given its time, and is not penalised for it.
#[tokio::test]
async fn a_replay_cut_short_by_the_deadline_penalises_no_one() {
    let slow = Pod::start("slow", PodState::Ready).await;
    let m = start_with(&format!(
        "[rescue]\ndeadline = \"300ms\"\nper_try_timeout = \"5s\"\n\
         [endpoints]\nstatic = [\"{}\"]\n",
        slow.addr
    ))
    .await;
    let mut c = open(m.grpc).await;
    // The replay goes to `slow`, which answers `/delay/5000` after 5 s: the
    // replay runs out with the deadline, 300 ms in.
    assert_passes_through(&mut c, "/delay/5000", &connection_failure()).await;
    assert_eq!(
        m.metric(r#"mulligan_replay_failures_total{why="timeout"}"#)
            .await,
        1.0,
        "the replay was sent and ran out"
    );
    assert_eq!(penalty_ms(&m, slow.addr).await, 0, "slow was penalised");
}
