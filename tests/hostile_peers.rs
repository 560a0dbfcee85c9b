//! Hostile ext_proc peers on every role the decide wiring gives its filters
//! (`x-mulligan-phase`: `retry`, `attempt`, `final`) and on the hold path.
//! A hand-made gRPC client stands in for a peer sending exactly what we
//! choose (Envoy never sends these on demand): messages out of order, empty,
//! oversized or with made-up attributes; streams half-closed, reset,
//! stalled, or left in the middle of a hold; floods; a missing or unknown
//! role. Each gets a well-formed reply or a clear gRPC status, loses
//! nothing (every message Envoy would wait on is answered, what a stream
//! held is freed, neighbours carry on), and never makes mulligan ask for a
//! retry or fetch anything itself. Peers that are not Envoy are refused
//! where mulligan is configured to refuse them (mutual TLS; the lifecycle
//! API's own port).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::{
        extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
        service::ext_proc::v3::{
            body_mutation::Mutation, processing_request::Request, processing_response::Response,
            HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
            ProtocolConfiguration,
        },
    },
    google::protobuf::value::Kind,
};
use rig::{
    client,
    envoy::Envoy,
    ext_proc::{
        body, connect, msg, open_as, open_as_on, request_headers, with_attributes, Conversation,
        ROLES,
    },
    mulligan::Mulligan,
    pods::{Pod, PodState},
    render,
};

const IN_FLIGHT: &str = "mulligan_ext_proc_streams_in_flight";
const HELD: &str = "mulligan_rescue_held";
/// A bound for what a loaded 2-core machine does in moments.
const LOADED: Duration = Duration::from_secs(20);

async fn start(toml: &str) -> Mulligan {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, toml).expect("write");
    // mulligan has read the file by the time it announces its ports.
    Mulligan::start(&["--config", cfg.to_str().expect("path")]).await
}

fn num(v: f64) -> Kind {
    Kind::NumberValue(v)
}

fn text(v: &str) -> Kind {
    Kind::StringValue(v.to_string())
}

/// Response headers with `attrs`, as Envoy sends a failed attempt.
fn response(attrs: &[(&str, Kind)]) -> ProcessingRequest {
    with_attributes(msg(Request::ResponseHeaders(HttpHeaders::default())), attrs)
}

/// A 503 from the hold endpoint in cluster `app`: Envoy had nowhere to send
/// the request.
fn from_the_hold() -> ProcessingRequest {
    response(&[
        ("response.code", num(503.0)),
        ("upstream.address", text("envoy://mulligan_hold/")),
        ("xds.cluster_name", text("app")),
        ("request.method", text("GET")),
        ("request.id", text("held-request")),
    ])
}

/// Whether `r` asks Envoy for another attempt (`x-mulligan-retry`).
fn asks_for_a_retry(r: &ProcessingResponse) -> bool {
    let Some(Response::ResponseHeaders(h)) = &r.response else {
        return false;
    };
    h.response
        .as_ref()
        .and_then(|c| c.header_mutation.as_ref())
        .is_some_and(|m| {
            m.set_headers.iter().any(|h| {
                h.header
                    .as_ref()
                    .is_some_and(|h| h.key.eq_ignore_ascii_case("x-mulligan-retry"))
            })
        })
}

/// The phase a reply answers, by name.
fn phase(r: &ProcessingResponse) -> &'static str {
    match &r.response {
        Some(Response::RequestHeaders(_)) => "request_headers",
        Some(Response::RequestBody(_)) => "request_body",
        Some(Response::RequestTrailers(_)) => "request_trailers",
        Some(Response::ResponseHeaders(_)) => "response_headers",
        Some(Response::ResponseBody(_)) => "response_body",
        Some(Response::ResponseTrailers(_)) => "response_trailers",
        Some(Response::ImmediateResponse(_)) => "immediate_response",
        Some(Response::StreamedImmediateResponse(_)) => "streamed_immediate_response",
        None if r.override_message_timeout.is_some() => "extend",
        None => "nothing",
    }
}

/// Every phase, in the opposite of Envoy's order, on every role: each is
/// answered in its own kind (a retry's request headers may be stopped with
/// an immediate response: that is the gate), bodies are never changed, and
/// no retry is asked for a response nobody said failed.
#[tokio::test]
async fn every_phase_out_of_order_gets_a_reply_of_its_own_kind_on_every_role() {
    let m = start("").await;
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        let sent: [(ProcessingRequest, &str); 6] = [
            (response(&[]), "response_headers"),
            (
                msg(Request::ResponseBody(body(b"reply", true))),
                "response_body",
            ),
            (
                msg(Request::ResponseTrailers(HttpTrailers::default())),
                "response_trailers",
            ),
            (
                msg(Request::RequestBody(body(b"abc", false))),
                "request_body",
            ),
            (
                msg(Request::RequestTrailers(HttpTrailers::default())),
                "request_trailers",
            ),
            (
                request_headers(&[(":method", "GET"), (":path", "/")], true),
                "request_headers",
            ),
        ];
        for (message, want) in sent {
            c.send(message).await;
            let r = c.reply().await;
            let got = phase(&r);
            let gate = role == "retry" && want == "request_headers";
            assert!(
                got == want || (gate && got == "immediate_response"),
                "{role}: {want} answered with {got}"
            );
            assert!(!asks_for_a_retry(&r), "{role}: a retry for {want}");
            let mutated = match &r.response {
                Some(Response::RequestBody(b)) | Some(Response::ResponseBody(b)) => {
                    b.response.as_ref().and_then(|c| c.body_mutation.as_ref())
                }
                _ => None,
            };
            assert!(mutated.is_none(), "{role}: the {want} was changed");
        }
        c.half_close();
        assert!(c.end(LOADED).await.is_ok(), "{role}: a clean end");
    }
    m.wait_metric(IN_FLIGHT, 0.0, LOADED, "every stream freed")
        .await;
}

/// Attributes no Envoy sends: a status past u16 (66039 is 503 modulo
/// 65536), negative, fractional, huge, or a string; an upstream that is no
/// address; a method that is no method. None is read as a failure that
/// another attempt could fix.
#[tokio::test]
async fn made_up_attributes_never_ask_for_a_retry_or_a_hold_on_any_role() {
    let m = Mulligan::start(&["--endpoints", "127.0.0.1:1"]).await;
    let cases: Vec<(&str, Vec<(&str, Kind)>)> = vec![
        ("status 66039", vec![("response.code", num(66039.0))]),
        ("status -503", vec![("response.code", num(-503.0))]),
        ("status 503.5", vec![("response.code", num(503.5))]),
        ("status 1e300", vec![("response.code", num(1e300))]),
        ("status NaN", vec![("response.code", num(f64::NAN))]),
        ("status as text", vec![("response.code", text("503"))]),
        (
            "status as a list",
            vec![("response.code", Kind::ListValue(Default::default()))],
        ),
        (
            "a 200 from nowhere",
            vec![
                ("response.code", num(200.0)),
                ("upstream.address", text("not an address")),
            ],
        ),
        (
            "a method that is none",
            vec![
                ("response.code", num(418.0)),
                ("request.method", text("GET\r\nX: y")),
            ],
        ),
    ];
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        for (what, attrs) in &cases {
            c.send(response(attrs)).await;
            let r = c.reply().await;
            assert_eq!(phase(&r), "response_headers", "{role}, {what}");
            assert!(!asks_for_a_retry(&r), "{role}, {what}: a retry was asked");
        }
    }
    assert_eq!(m.metric(HELD).await, 0.0);
    assert_eq!(m.answers("retry").await, 0.0);
}

/// A message without a phase needs no reply (a flow-control update alone
/// is one); anything else without a phase is counted and ignored, and the
/// stream carries on.
#[tokio::test]
async fn an_empty_message_is_counted_and_the_stream_carries_on_on_every_role() {
    let m = start("").await;
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        c.send(ProcessingRequest::default()).await;
        c.send(msg(Request::RequestBody(body(b"x", false)))).await;
        // The first reply is for the body: none for the empty message.
        assert_eq!(phase(&c.reply().await), "request_body", "{role}");
    }
    let empty = m
        .metric(r#"mulligan_ext_proc_errors_total{kind="empty_message"}"#)
        .await;
    assert_eq!(empty, ROLES.len() as f64);
}

/// A message past `limits.max_message_bytes` fails its own stream with
/// OUT_OF_RANGE; a stream beside it on the same connection carries on.
#[tokio::test]
async fn an_oversized_message_fails_only_its_stream_on_every_role() {
    // The smallest limit every config accepts (a response body must fit).
    let m = start("[limits]\nmax_message_bytes = 4194304\n").await;
    for role in ROLES {
        let mut client = connect(m.grpc).await;
        let mut big = open_as_on(&mut client, role).await.expect("open");
        let mut small = open_as_on(&mut client, role).await.expect("open");
        big.send(msg(Request::RequestBody(body(&[7u8; 5 << 20], true))))
            .await;
        let err = big
            .end(LOADED)
            .await
            .expect_err("an oversized message must fail the stream");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{role}: {err}");
        small.send(response(&[])).await;
        assert_eq!(phase(&small.reply().await), "response_headers", "{role}");
    }
    let transport = m
        .metric(r#"mulligan_ext_proc_errors_total{kind="transport"}"#)
        .await;
    assert_eq!(transport, ROLES.len() as f64);
    m.wait_metric(IN_FLIGHT, 0.0, LOADED, "every stream freed")
        .await;
}

/// A peer that announces full-duplex bodies (the decide wiring never does)
/// gets every chunk back, in order, whole: nothing is lost or changed.
#[tokio::test]
async fn full_duplex_bodies_are_echoed_whole_and_in_order_on_every_role() {
    let m = start("").await;
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        let mut first = msg(Request::RequestBody(body(b"first", false)));
        first.protocol_config = Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            response_body_mode: BodySendMode::FullDuplexStreamed as i32,
            send_body_without_waiting_for_header_response: true,
        });
        c.send(first).await;
        c.send(msg(Request::RequestBody(body(b"second", true))))
            .await;
        for expected in [&b"first"[..], b"second"] {
            let r = c.reply().await;
            let Some(Response::RequestBody(b)) = r.response else {
                panic!("{role}: a request body reply, got {}", phase(&r));
            };
            let Some(Mutation::StreamedResponse(s)) = b
                .response
                .and_then(|r| r.body_mutation)
                .and_then(|m| m.mutation)
            else {
                panic!("{role}: full duplex needs a streamed body mutation");
            };
            assert_eq!(s.body, expected, "{role}");
        }
    }
}

/// Half-closed at any point: the replies still come, then a clean end.
#[tokio::test]
async fn a_half_closed_stream_gets_its_replies_then_ends_ok_on_every_role() {
    let m = start("").await;
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        c.send(response(&[("response.code", num(500.0))])).await;
        c.half_close();
        assert_eq!(phase(&c.reply().await), "response_headers", "{role}");
        assert!(c.end(LOADED).await.is_ok(), "{role}: a clean end");
        let mut c = open_as(m.grpc, role).await;
        c.half_close();
        assert!(c.end(LOADED).await.is_ok(), "{role}: a clean end");
    }
    m.wait_metric(IN_FLIGHT, 0.0, LOADED, "half-closed streams freed")
        .await;
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="transport"}"#)
            .await,
        0.0,
        "a half-close is a normal end, not an error"
    );
}

/// Reset mid-stream (RST_STREAM): freed, and the stream beside it on the
/// same connection carries on.
#[tokio::test]
async fn a_reset_stream_is_freed_and_its_neighbours_carry_on_on_every_role() {
    let m = start("").await;
    let mut client = connect(m.grpc).await;
    let mut neighbour = open_as_on(&mut client, "attempt").await.expect("open");
    for role in ROLES {
        for _ in 0..10 {
            let mut c = open_as_on(&mut client, role).await.expect("open");
            c.send(msg(Request::RequestBody(body(&[1u8; 50], false))))
                .await;
            c.reply().await;
            drop(c);
        }
    }
    m.wait_metric(IN_FLIGHT, 1.0, LOADED, "reset streams freed")
        .await;
    neighbour.send(response(&[])).await;
    assert_eq!(phase(&neighbour.reply().await), "response_headers");
}

/// A stream on which nothing arrives for `limits.stream_idle_timeout` ends
/// with DEADLINE_EXCEEDED saying why; a stream that talks is never cut.
#[tokio::test]
async fn a_stalled_stream_ends_with_deadline_exceeded_and_others_carry_on_on_every_role() {
    let m = start("[limits]\nstream_idle_timeout = \"400ms\"\n").await;
    let mut client = connect(m.grpc).await;
    let mut stalled = Vec::new();
    for role in ROLES {
        // Before its first message, and after one.
        stalled.push(open_as_on(&mut client, role).await.expect("open"));
        let mut midway = open_as_on(&mut client, role).await.expect("open");
        midway
            .send(msg(Request::RequestBody(body(b"x", false))))
            .await;
        midway.reply().await;
        stalled.push(midway);
    }
    let mut chatty = open_as_on(&mut client, "attempt").await.expect("open");
    let chatter = tokio::spawn(async move {
        for _ in 0..10 {
            chatty
                .send(msg(Request::RequestBody(body(b"x", false))))
                .await;
            assert_eq!(phase(&chatty.reply().await), "request_body");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        chatty
    });
    for c in &mut stalled {
        let status = c
            .end(LOADED)
            .await
            .expect_err("a stalled stream ends in an error status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
        assert!(
            status.message().contains("stream_idle_timeout"),
            "the status says why: {status}"
        );
    }
    let mut chatty = chatter.await.expect("the chatty stream was never cut");
    chatty.send(response(&[])).await;
    assert_eq!(phase(&chatty.reply().await), "response_headers");
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="idle"}"#)
            .await,
        stalled.len() as f64
    );
}

/// The hold path: a peer that resets its stream in the middle of a hold
/// frees the hold at once; one that half-closes, or sends more while held,
/// gets the hold's answer and then a reply to every message, in order.
#[tokio::test]
async fn a_peer_that_leaves_or_talks_in_the_middle_of_a_hold_loses_nothing() {
    // An endpoint the configuration lists but that refuses connections (a
    // pod restarting): worth waiting for, and never ready in this test.
    let m = start("[rescue]\ndeadline = \"1s\"\n[endpoints]\nstatic = [\"127.0.0.1:1\"]\n").await;
    // Reset mid-hold.
    let mut c = open_as(m.grpc, "attempt").await;
    c.send(from_the_hold()).await;
    assert_eq!(phase(&c.reply().await), "extend", "the hold began");
    m.wait_metric(HELD, 1.0, LOADED, "one request held").await;
    drop(c);
    m.wait_metric(HELD, 0.0, LOADED, "the reset stream's hold freed")
        .await;
    m.wait_metric(IN_FLIGHT, 0.0, LOADED, "the reset stream freed")
        .await;
    // Half-closed, with one more message sent, mid-hold.
    let mut c = open_as(m.grpc, "attempt").await;
    c.send(from_the_hold()).await;
    assert_eq!(phase(&c.reply().await), "extend", "the hold began");
    c.send(msg(Request::ResponseBody(body(b"more", true))))
        .await;
    c.half_close();
    let ended = c.reply().await;
    assert_eq!(phase(&ended), "response_headers", "the hold's answer");
    assert!(!asks_for_a_retry(&ended), "nothing came back: no retry");
    assert_eq!(phase(&c.reply().await), "response_body", "then the rest");
    assert!(c.end(LOADED).await.is_ok(), "a clean end");
    assert_eq!(m.metric(HELD).await, 0.0);
    assert_eq!(m.answers("held_too_long").await, 1.0);
}

/// A config is input too: a hold deadline of 500 billion years (which
/// overflows `Instant`) takes neither the stream nor mulligan down.
#[tokio::test]
async fn an_absurd_hold_deadline_in_the_config_takes_nothing_down() {
    let m = start(
        "[rescue]\ndeadline = \"500000000000years\"\n\
         [hold]\nenvoy_max_message_timeout = \"500000000001years\"\n\
         [endpoints]\nstatic = [\"127.0.0.1:1\"]\n",
    )
    .await;
    let mut c = open_as(m.grpc, "attempt").await;
    c.send(from_the_hold()).await;
    assert_eq!(phase(&c.reply().await), "extend", "the hold began");
    drop(c);
    m.wait_metric(HELD, 0.0, LOADED, "the hold freed").await;
    let mut again = open_as(m.grpc, "final").await;
    again.send(response(&[("response.code", num(503.0))])).await;
    assert_eq!(phase(&again.reply().await), "response_headers");
}

/// A stream with no `x-mulligan-phase`, or one mulligan does not know, is
/// refused at once with INVALID_ARGUMENT naming the header and the values it
/// takes, and counted; mulligan never guesses a role.
#[tokio::test]
async fn a_stream_with_a_missing_or_unknown_phase_is_refused_and_counted() {
    let m = start("").await;
    let mut client = connect(m.grpc).await;
    let refused: [Option<&str>; 5] = [
        None,
        Some(""),
        Some("gate"),
        Some("Attempt"),
        Some("retries"),
    ];
    for role in refused {
        let status = match open_as_on(&mut client, role).await {
            Err(status) => status,
            // A refusal may also come as the stream's first word.
            Ok(mut c) => {
                c.send(response(&[("response.code", num(503.0))])).await;
                c.half_close();
                c.end(LOADED)
                    .await
                    .expect_err("a stream without a known role is refused")
            }
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{role:?}: {status}"
        );
        let says = status.message();
        assert!(
            says.contains("x-mulligan-phase") && ROLES.iter().all(|r| says.contains(r)),
            "{role:?}: the status names the header and its values: {says}"
        );
    }
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="unknown_role"}"#)
            .await,
        refused.len() as f64
    );
    // Refusing streams costs the connection nothing.
    let mut c = open_as_on(&mut client, "final").await.expect("open");
    c.send(response(&[])).await;
    assert_eq!(phase(&c.reply().await), "response_headers");
}

/// Through real Envoy: a filter configured with a role mulligan does not
/// know is refused, and Envoy's `failure_mode_allow` carries the request on
/// exactly as Envoy alone would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_an_unknown_phase_is_refused_and_the_request_ends_as_envoy_alone() {
    let draining = Pod::start("a", PodState::Draining).await;
    let m = Mulligan::start(&["--endpoints", &draining.addr.to_string()]).await;
    let yaml = render::tolerant(&[draining.addr], m.grpc.port(), &[]);
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    let renamed = rename_role(&mut v, "attempt", "bogus");
    assert!(renamed > 0, "the attempt filter names its role");
    let yaml = serde_yaml_ng::to_string(&v).expect("YAML");
    let envoy = Envoy::start(&yaml).await;
    let front = envoy.listener("mulligan").await;
    let baseline = envoy.listener("baseline").await;
    for _ in 0..5 {
        let with = client::get(front, "/").await.expect("via mulligan");
        let alone = client::get(baseline, "/").await.expect("baseline");
        assert_eq!(with.status, alone.status);
        assert_eq!(with.body, alone.body);
    }
    assert!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="unknown_role"}"#)
            .await
            >= 5.0,
        "every attempt stream was refused as an unknown role"
    );
    assert_eq!(m.answers("retry").await, 0.0);
}

/// Sets every `x-mulligan-phase: from` in a bootstrap's ext_proc
/// `initial_metadata` to `to`; how many it changed.
fn rename_role(v: &mut serde_yaml_ng::Value, from: &str, to: &str) -> usize {
    use serde_yaml_ng::Value;
    match v {
        Value::Mapping(m) => {
            let is_role = m.get("key").and_then(Value::as_str) == Some("x-mulligan-phase")
                && m.get("value").and_then(Value::as_str) == Some(from);
            if is_role {
                m.insert("value".into(), to.into());
                return 1;
            }
            m.values_mut().map(|c| rename_role(c, from, to)).sum()
        }
        Value::Sequence(s) => s.iter_mut().map(|c| rename_role(c, from, to)).sum(),
        Value::Tagged(t) => rename_role(&mut t.value, from, to),
        _ => 0,
    }
}

/// Any pod that can reach the ext_proc port can make up a request and a
/// 503 from a real app. On no role does mulligan fetch anything from an app
/// for it: Envoy makes every attempt.
#[tokio::test]
async fn no_ext_proc_peer_can_make_mulligan_fetch_from_an_app() {
    let pod = Pod::start("app", PodState::Ready).await;
    let list = pod.addr.to_string();
    let m = Mulligan::start(&["--endpoints", &list]).await;
    for role in ROLES {
        let mut c = open_as(m.grpc, role).await;
        c.send(request_headers(
            &[
                (":method", "GET"),
                (":path", "/admin/users"),
                ("x-user", "root"),
            ],
            true,
        ))
        .await;
        c.reply().await;
        c.send(response(&[
            ("response.code", num(503.0)),
            ("upstream.address", text(&list)),
            ("xds.cluster_name", text("app")),
            ("request.method", text("GET")),
        ]))
        .await;
        let r = c.reply().await;
        assert!(
            matches!(phase(&r), "response_headers" | "extend"),
            "{role}: {}",
            phase(&r)
        );
    }
    assert_eq!(pod.served(), 0, "mulligan fetched from the app for a peer");
}

/// `limits.max_streams`: past it, RESOURCE_EXHAUSTED; a place comes back
/// when a stream ends.
#[tokio::test]
async fn streams_past_the_limit_are_refused_and_places_come_back() {
    let m = start("[limits]\nmax_streams = 2\n").await;
    let mut client = connect(m.grpc).await;
    let mut first = open_as_on(&mut client, "attempt").await.expect("open");
    let mut second = open_as_on(&mut client, "final").await.expect("open");
    for c in [&mut first, &mut second] {
        c.send(response(&[])).await;
        c.reply().await;
    }
    let refused = open_as_on(&mut client, "retry")
        .await
        .err()
        .expect("a third stream is over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
            .await,
        1.0
    );
    drop(first);
    let until = Instant::now() + LOADED;
    let mut c: Conversation = loop {
        match open_as_on(&mut client, "retry").await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(Instant::now() < until, "the place never came back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    c.send(response(&[])).await;
    assert_eq!(phase(&c.reply().await), "response_headers");
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

/// Opens `n` streams over `connections` connections, the roles in turn,
/// each saying a failed response; returns the answered (kept open) and how
/// many were refused.
async fn flood(grpc: SocketAddr, n: usize, connections: usize) -> (Vec<Conversation>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let share = n / connections + usize::from(i < n % connections);
        tasks.spawn(async move {
            let client = connect(grpc).await;
            let mut pending = tokio::task::JoinSet::new();
            for j in 0..share {
                let mut client = client.clone();
                pending.spawn(async move {
                    let mut c = open_as_on(&mut client, ROLES[j % ROLES.len()]).await?;
                    c.send(response(&[("response.code", num(500.0))])).await;
                    let answered = tokio::time::timeout(LOADED, c.rx.message())
                        .await
                        .expect("every stream is answered");
                    match answered {
                        Ok(Some(_)) => Ok(c),
                        Ok(None) => panic!("closed without a status"),
                        Err(status) => Err(status),
                    }
                });
            }
            let (mut opened, mut refused) = (Vec::new(), 0);
            while let Some(r) = pending.join_next().await {
                match r.expect("stream task") {
                    Ok(c) => opened.push(c),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                        refused += 1;
                    }
                }
            }
            (opened, refused)
        });
    }
    let (mut opened, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (o, f) = r.expect("connection task");
        opened.extend(o);
        refused += f;
    }
    (opened, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_get_clear_answers_and_leave_nothing_behind() {
    const STREAMS: usize = 10_000;
    const LIMIT: usize = 4_000;
    let m = start(&format!("[limits]\nmax_streams = {LIMIT}\n")).await;
    // A stream opened before the flood, on its own connection.
    let mut canary = open_as(m.grpc, "final").await;
    canary.send(response(&[])).await;
    canary.reply().await;
    let before = rss_mib(m.pid());
    let mut after = Vec::new();
    for round in 0..4 {
        let (opened, refused) = flood(m.grpc, STREAMS, 10).await;
        // Every stream got an answer: a reply, or RESOURCE_EXHAUSTED past
        // the limit (the canary holds one place).
        assert_eq!(opened.len() + refused, STREAMS);
        assert_eq!(opened.len(), LIMIT - 1, "round {round}");
        // The canary is unaffected while the flood holds every place.
        let t = Instant::now();
        canary.send(response(&[])).await;
        assert_eq!(phase(&canary.reply().await), "response_headers");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        drop(opened);
        m.wait_metric(IN_FLIGHT, 1.0, Duration::from_secs(60), "flood freed")
            .await;
        after.push(rss_mib(m.pid()));
    }
    println!("mulligan RSS MiB: before {before:.1}, after each flood {after:.1?}");
    // Memory a flood took is reused, not leaked: a leak would add the whole
    // flood's footprint every round; reuse makes the growth shrink towards
    // nothing (RSS itself does not fall back: the allocator keeps pages).
    let footprint = after[0] - before;
    let last_growth = after[3] - after[2];
    assert!(
        last_growth < footprint * 0.25,
        "RSS still grows flood over flood (a leak?): before {before:.1}, after each {after:.1?}"
    );
    assert_eq!(
        m.metric(r#"mulligan_ext_proc_errors_total{kind="stream_limit"}"#)
            .await,
        (4 * (STREAMS - LIMIT + 1)) as f64
    );
}

/// The `mulligan.v1.Lifecycle` API is not on the ext_proc port
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
    let yaml = rig::render::tolerant(app, grpc_port, &[]);
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

/// With `[grpc_tls]`, real Envoy reaches mulligan over mutual TLS
/// and retries work through it; a client without a certificate, or with
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
