//! Fuzzing entry points: each takes untrusted bytes, shapes them into an
//! input (`arbitrary`), runs it through mulligan and checks what must hold
//! whatever the input, so that a fuzzer finds wrong answers as well as
//! panics.
//!
//! The same functions run under libFuzzer (`fuzz/`, cargo-fuzz) and, for a
//! fixed count, in `cargo test` (`tests/fuzz.rs`); a panic is a finding.
//! What each asserts, and the recorded runs: `docs/reliability.md`.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, OnceLock},
    time::Duration,
};

use arbitrary::{Arbitrary, Unstructured};
use envoy_types::pb::{
    envoy::{
        config::core::v3::{HeaderMap, HeaderValue, Metadata},
        extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
        service::ext_proc::v3::{
            body_mutation::Mutation as BodyChange,
            processing_request::{ClientWindowUpdate, Request},
            processing_response::Response,
            HttpBody, HttpHeaders, HttpTrailers, ImmediateResponse, ProcessingRequest,
            ProcessingResponse, ProtocolConfiguration,
        },
    },
    google::protobuf::{value::Kind, ListValue, Struct, Value},
};
use prost::Message as _;

use crate::{
    classify::{self, flags, Cause, Observed, Reached},
    config::Config,
    decide::{AttemptState, Decider, Role},
    drain::Drain,
    endpoints::{Registry, State},
    ext_proc::{header_value, role_of, Attributes, Context, Exchange},
    metrics::{Metrics, Phase},
    policy::{self, safety, Decision, RequestFacts},
};

/// Messages per stream, at most: every phase twice, and then some.
const MAX_MESSAGES: usize = 16;
/// Streams per input, at most: the attempts of a request, and its final
/// response.
const MAX_STREAMS: usize = 6;
/// Header and body bytes of one input together, at most: huge headers are
/// worth trying, exhausting the fuzzer's memory is not.
const MAX_INPUT_BYTES: usize = 256 * 1024;
/// Longer than any hold can take under the fuzzing config (`max_hold` of at
/// most 20 ms), by far.
const HANG: Duration = Duration::from_secs(5);

/// Loopback ports nothing listens on: a hold's connect check is refused at
/// once, so a hold ends at `max_hold` or when nothing can come back.
const REFUSING: [SocketAddr; 3] = [
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)),
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2)),
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3)),
];

/// Header names mulligan reads or writes, and some near misses.
const NAMES: &[&str] = &[
    ":status",
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "content-length",
    "idempotency-key",
    "x-envoy-overloaded",
    "connection",
    "x-mulligan-drain",
    "x-envoy-expected-rq-timeout-ms",
    "host",
    "x-forwarded-host",
    "x-mulligan-retry",
    "transfer-encoding",
    "Content-Length",
    ":STATUS",
    "te",
    "",
    "bad name",
];

/// Header values and bodies: what those headers usually hold, and the bytes
/// that break parsers.
const VALUES: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"/",
    b"/a/b?c=d",
    b"503",
    b"200",
    b"429",
    b"500",
    b"66039",
    b"close",
    b"1",
    b"0",
    b"20",
    b"100000",
    b"-1",
    b" 7 ",
    b"app.example.com",
    b"127.0.0.1:1",
    b"",
    b"\xc3\xa9",
    b"\xff\xfe",
    b"a\r\nb",
    b"x\0y",
];

/// The attributes mulligan reads (`src/ext_proc/decide.rs`), and one it
/// does not.
const ATTRIBUTE_KEYS: &[&str] = &[
    "response.code",
    "upstream.address",
    "xds.cluster_name",
    "request.id",
    "request.method",
    "request.headers['idempotency-key']",
    "response.flags",
];

const NUMBERS: &[f64] = &[
    503.0,
    200.0,
    429.0,
    500.0,
    502.0,
    504.0,
    32.0,
    2.0,
    16.0,
    64.0,
    128.0,
    4.0,
    2048.0,
    33_554_432.0,
    1.0,
    3.0,
    0.0,
    -1.0,
    66_039.0,
    4_294_967_799.0,
    1e20,
    f64::NAN,
    f64::INFINITY,
    0.5,
    9_007_199_254_740_993.0,
];

/// `response.code_details` as Envoy reports them, addresses, cluster names.
const STRINGS: &[&str] = &[
    "via_upstream",
    "no_healthy_upstream",
    "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
    "upstream_reset_before_response_started{remote_refused_stream_reset}",
    "upstream_reset_before_response_started{connection_termination}",
    "upstream_reset_after_response_started{remote_reset}",
    "response_timeout",
    "127.0.0.1:1",
    "127.0.0.1:2",
    "127.0.0.1:3",
    "[::1]:1",
    "envoy://hold/",
    "req-1",
    "req-2",
    "GET",
    "POST",
    "app",
    "other",
    "503",
    "32",
    "",
    "nonsense",
];

fn pick<T: Copy>(dictionary: &[T], i: u8) -> T {
    dictionary[usize::from(i) % dictionary.len()]
}

fn shape<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

fn metrics() -> Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new).clone()
}

/// Runs `f` to completion on this thread's runtime, made once: building a
/// runtime per input would cost more than most inputs.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fuzzing runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

// ---------------------------------------------------------------------------
// ext_proc streams, every role

/// The service's settings for one input; the rest is `Config::default()`.
#[derive(Arbitrary, Debug)]
struct Knobs {
    retry_off: bool,
    retry_plain_503: bool,
    max_hold_ms: u8,
    max_held: u8,
    no_budget: bool,
    states: [u8; 3],
}

impl Knobs {
    fn context(&self) -> Arc<Context> {
        let mut cfg = Config::default();
        cfg.endpoints.default = REFUSING[..2].to_vec();
        cfg.endpoints
            .clusters
            .insert("app".into(), REFUSING.to_vec());
        cfg.retry.enabled = !self.retry_off;
        cfg.retry.retry_plain_503 = self.retry_plain_503;
        cfg.hold.max_hold = Duration::from_millis(1 + u64::from(self.max_hold_ms % 20));
        cfg.hold.max_held = usize::from(self.max_held % 3);
        cfg.hold.interval = Duration::from_millis(2);
        cfg.hold.settle = Duration::from_millis(1);
        if self.no_budget {
            cfg.budget.ratio = 0.0;
            cfg.budget.min_per_second = 0;
        }
        let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
        for (addr, s) in REFUSING.iter().zip(self.states) {
            let state = match s % 5 {
                1 => State::NotReady,
                2 => State::Draining,
                3 => State::Gone,
                _ => continue,
            };
            registry
                .set_state(*addr, None, state, "fuzz")
                .expect("a configured endpoint");
        }
        let metrics = metrics();
        Arc::new(Context::new(&cfg, registry, metrics, Drain::new()))
    }
}

/// Streams opened one after the other on one service, as Envoy opens them
/// for the attempts of one request (or of several: the ids are few).
#[derive(Arbitrary, Debug)]
struct Sequence {
    knobs: Knobs,
    streams: Vec<StreamIn>,
}

#[derive(Arbitrary, Debug)]
struct StreamIn {
    role: RoleIn,
    messages: Vec<MessageIn>,
}

/// The `x-mulligan-phase` metadata a stream opens with.
#[derive(Arbitrary, Debug)]
enum RoleIn {
    Retry,
    Attempt,
    Final,
    Missing,
    Other(Vec<u8>),
}

impl RoleIn {
    fn metadata(&self) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        let value: &[u8] = match self {
            RoleIn::Retry => b"retry",
            RoleIn::Attempt => b"attempt",
            RoleIn::Final => b"final",
            RoleIn::Missing => return map,
            RoleIn::Other(bytes) => bytes,
        };
        if let Ok(v) = tonic::metadata::AsciiMetadataValue::try_from(value) {
            map.insert(crate::names::phase::HEADER, v);
        }
        map
    }
}

#[derive(Arbitrary, Debug)]
enum MessageIn {
    Built(Box<Built>),
    /// Bytes decoded as the gRPC server would decode a message.
    Encoded(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Built {
    phase: Option<PhaseIn>,
    protocol: Option<(ModeIn, ModeIn, bool)>,
    observability: bool,
    window_update: bool,
    attributes: Option<Vec<(KeyIn, ValueIn)>>,
    /// Start from the attributes of a POST that 127.0.0.1:1 answered 503.
    refused: bool,
    /// Filed under another filter's name: not mulligan's to read.
    elsewhere: bool,
}

#[derive(Arbitrary, Debug)]
enum PhaseIn {
    RequestHeaders(HeadersIn),
    RequestBody(BodyIn),
    RequestTrailers(Option<Vec<HeaderIn>>),
    ResponseHeaders(HeadersIn),
    ResponseBody(BodyIn),
    ResponseTrailers(Option<Vec<HeaderIn>>),
}

#[derive(Arbitrary, Debug)]
struct HeadersIn {
    /// Start from what Envoy sends for a plain GET (request) or a 503
    /// (response): a verdict needs several fields right at once, which
    /// random bytes alone take long to find.
    template: bool,
    headers: Option<Vec<HeaderIn>>,
    end_of_stream: bool,
}

#[derive(Arbitrary, Debug)]
struct BodyIn {
    body: BytesIn,
    end_of_stream: bool,
    end_of_stream_without_message: bool,
}

#[derive(Arbitrary, Debug)]
struct HeaderIn {
    name: NameIn,
    value: BytesIn,
    placement: Placement,
}

#[derive(Arbitrary, Debug)]
enum NameIn {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum BytesIn {
    Known(u8),
    Any(Vec<u8>),
    /// Up to 256 KiB of one byte.
    Huge {
        byte: u8,
        quarter_kib: u16,
    },
}

/// Where a value goes: Envoy uses `raw_value`, older configs `value`.
#[derive(Arbitrary, Debug)]
enum Placement {
    Raw,
    Value,
    Both,
}

/// A body send mode: a defined one, or any number at all.
#[derive(Arbitrary, Debug)]
enum ModeIn {
    Known(u8),
    Any(i32),
}

#[derive(Arbitrary, Debug)]
enum KeyIn {
    Known(u8),
    Other(String),
}

/// An attribute of any protobuf kind, the expected one or not.
#[derive(Arbitrary, Debug)]
enum ValueIn {
    Number(u8),
    AnyNumber(f64),
    Str(u8),
    AnyStr(String),
    Bool(bool),
    Null,
    List(Vec<u8>),
    Struct,
    NoKind,
}

/// What is left of [`MAX_INPUT_BYTES`] while building one input.
struct Allowance(usize);

impl Allowance {
    fn take(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(self.0);
        self.0 -= bytes.len();
        bytes
    }
}

impl BytesIn {
    fn build(&self, left: &mut Allowance) -> Vec<u8> {
        let bytes = match self {
            BytesIn::Known(i) => pick(VALUES, *i).to_vec(),
            BytesIn::Any(b) => b.clone(),
            BytesIn::Huge { byte, quarter_kib } => {
                vec![*byte; (usize::from(*quarter_kib) * 256).min(left.0)]
            }
        };
        left.take(bytes)
    }
}

impl HeaderIn {
    fn build(&self, left: &mut Allowance) -> HeaderValue {
        let key = match &self.name {
            NameIn::Known(i) => pick(NAMES, *i).to_string(),
            NameIn::Other(s) => {
                String::from_utf8_lossy(&left.take(s.clone().into_bytes())).into_owned()
            }
        };
        let bytes = self.value.build(left);
        let (value, raw_value) = match self.placement {
            Placement::Raw => (String::new(), bytes),
            Placement::Value => (String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
            Placement::Both => (String::from_utf8_lossy(&bytes).into_owned(), bytes),
        };
        HeaderValue {
            key,
            value,
            raw_value,
        }
    }
}

fn header_map(headers: &Option<Vec<HeaderIn>>, left: &mut Allowance) -> Option<HeaderMap> {
    headers.as_ref().map(|hs| HeaderMap {
        headers: hs.iter().map(|h| h.build(left)).collect(),
    })
}

impl ModeIn {
    fn build(&self) -> i32 {
        match self {
            ModeIn::Known(i) => i32::from(i % 6),
            ModeIn::Any(n) => *n,
        }
    }
}

impl ValueIn {
    fn build(&self) -> Value {
        let kind = match self {
            ValueIn::Number(i) => Some(Kind::NumberValue(pick(NUMBERS, *i))),
            ValueIn::AnyNumber(n) => Some(Kind::NumberValue(*n)),
            ValueIn::Str(i) => Some(Kind::StringValue(pick(STRINGS, *i).into())),
            ValueIn::AnyStr(s) => Some(Kind::StringValue(s.clone())),
            ValueIn::Bool(b) => Some(Kind::BoolValue(*b)),
            ValueIn::Null => Some(Kind::NullValue(0)),
            ValueIn::List(items) => Some(Kind::ListValue(ListValue {
                values: items
                    .iter()
                    .map(|i| Value {
                        kind: Some(Kind::NumberValue(pick(NUMBERS, *i))),
                    })
                    .collect(),
            })),
            ValueIn::Struct => Some(Kind::StructValue(Struct::default())),
            ValueIn::NoKind => None,
        };
        Value { kind }
    }
}

fn build_body(b: &BodyIn, left: &mut Allowance) -> HttpBody {
    HttpBody {
        body: b.body.build(left),
        end_of_stream: b.end_of_stream,
        end_of_stream_without_message: b.end_of_stream_without_message,
        ..Default::default()
    }
}

/// Headers from the input; with `h.template`, `template` first.
fn build_headers(h: &HeadersIn, template: &[(&str, &str)], left: &mut Allowance) -> HttpHeaders {
    let mut map = header_map(&h.headers, left);
    if h.template {
        let fields = &mut map.get_or_insert_with(HeaderMap::default).headers;
        fields.splice(
            0..0,
            template.iter().map(|(k, v)| HeaderValue {
                key: (*k).into(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            }),
        );
    }
    HttpHeaders {
        headers: map,
        end_of_stream: h.end_of_stream,
        ..Default::default()
    }
}

impl Built {
    fn build(&self, left: &mut Allowance) -> ProcessingRequest {
        let get = [(":method", "GET"), (":path", "/"), (":authority", "app")];
        let failed = [(":status", "503")];
        let request = self.phase.as_ref().map(|p| match p {
            PhaseIn::RequestHeaders(h) => Request::RequestHeaders(build_headers(h, &get, left)),
            PhaseIn::RequestBody(b) => Request::RequestBody(build_body(b, left)),
            PhaseIn::RequestTrailers(t) => Request::RequestTrailers(HttpTrailers {
                trailers: header_map(t, left),
            }),
            PhaseIn::ResponseHeaders(h) => {
                Request::ResponseHeaders(build_headers(h, &failed, left))
            }
            PhaseIn::ResponseBody(b) => Request::ResponseBody(build_body(b, left)),
            PhaseIn::ResponseTrailers(t) => Request::ResponseTrailers(HttpTrailers {
                trailers: header_map(t, left),
            }),
        });
        let mut message = ProcessingRequest {
            request,
            observability_mode: self.observability,
            protocol_config: self
                .protocol
                .as_ref()
                .map(|(rq, rs, wait)| ProtocolConfiguration {
                    request_body_mode: rq.build(),
                    response_body_mode: rs.build(),
                    send_body_without_waiting_for_header_response: *wait,
                }),
            client_window_update: self.window_update.then(ClientWindowUpdate::default),
            ..Default::default()
        };
        if let Some((filter, s)) = self.attributes() {
            message.attributes.insert(filter.into(), s);
        }
        message
    }

    /// The attributes to attach, and the filter name they go under.
    fn attributes(&self) -> Option<(&'static str, Struct)> {
        if self.attributes.is_none() && !self.refused {
            return None;
        }
        let mut s = Struct::default();
        if self.refused {
            for (k, v) in [
                ("response.code", Kind::NumberValue(503.0)),
                ("upstream.address", Kind::StringValue("127.0.0.1:1".into())),
                ("xds.cluster_name", Kind::StringValue("app".into())),
                ("request.id", Kind::StringValue("req-1".into())),
                ("request.method", Kind::StringValue("POST".into())),
            ] {
                s.fields.insert(k.into(), Value { kind: Some(v) });
            }
        }
        for (k, v) in self.attributes.iter().flatten() {
            let key = match k {
                KeyIn::Known(i) => pick(ATTRIBUTE_KEYS, *i).to_string(),
                KeyIn::Other(s) => s.clone(),
            };
            s.fields.insert(key, v.build());
        }
        let filter = if self.elsewhere {
            "envoy.filters.http.other"
        } else {
            "envoy.filters.http.ext_proc"
        };
        Some((filter, s))
    }
}

/// The phase a message carries (and so the reply it must get).
fn phase_of_request(r: &Request) -> Phase {
    match r {
        Request::RequestHeaders(_) => Phase::RequestHeaders,
        Request::RequestBody(_) => Phase::RequestBody,
        Request::RequestTrailers(_) => Phase::RequestTrailers,
        Request::ResponseHeaders(_) => Phase::ResponseHeaders,
        Request::ResponseBody(_) => Phase::ResponseBody,
        Request::ResponseTrailers(_) => Phase::ResponseTrailers,
    }
}

/// The reply's phase; `None` for an immediate response.
fn phase_of_response(r: &Response) -> Option<Phase> {
    Some(match r {
        Response::RequestHeaders(_) => Phase::RequestHeaders,
        Response::RequestBody(_) => Phase::RequestBody,
        Response::RequestTrailers(_) => Phase::RequestTrailers,
        Response::ResponseHeaders(_) => Phase::ResponseHeaders,
        Response::ResponseBody(_) => Phase::ResponseBody,
        Response::ResponseTrailers(_) => Phase::ResponseTrailers,
        Response::ImmediateResponse(_) | Response::StreamedImmediateResponse(_) => return None,
    })
}

/// What the harness notes of a message before handing it over.
#[derive(Debug)]
struct Sent {
    phase: Option<Phase>,
    observability: bool,
    protocol: Option<(i32, i32)>,
    /// Response headers: the status as Envoy reported it, unclipped.
    status: Option<u64>,
    /// A body chunk's bytes.
    body: Option<Vec<u8>>,
    /// The request's state forwarded with the message said an earlier
    /// attempt may have run it.
    may_have_run: bool,
}

impl Sent {
    fn of(m: &ProcessingRequest) -> Self {
        let attrs = Attributes::of(m);
        let (mut status, mut body) = (None, None);
        match &m.request {
            Some(Request::ResponseHeaders(h)) => {
                let fields = h.headers.as_ref();
                status = attrs.uint("response.code").or_else(|| {
                    header_value(fields, ":status")
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                });
            }
            Some(Request::RequestBody(b) | Request::ResponseBody(b)) => body = Some(b.body.clone()),
            _ => {}
        }
        Sent {
            phase: m.request.as_ref().map(phase_of_request),
            observability: m.observability_mode,
            protocol: m
                .protocol_config
                .as_ref()
                .map(|p| (p.request_body_mode, p.response_body_mode)),
            status,
            body,
            may_have_run: AttemptState::read(m.metadata_context.as_ref()).may_have_run,
        }
    }

    /// A status Envoy could have sent on a failed attempt or response.
    fn failed(&self) -> bool {
        (500..=u64::from(u16::MAX)).contains(&self.status.unwrap_or(0))
    }
}

/// The headers a response-headers reply sets, by name.
fn set_headers(r: &ProcessingResponse) -> Vec<&str> {
    match &r.response {
        Some(Response::ResponseHeaders(h)) => h
            .response
            .iter()
            .flat_map(|c| c.header_mutation.iter())
            .flat_map(|m| m.set_headers.iter())
            .filter_map(|o| o.header.as_ref().map(|h| h.key.as_str()))
            .collect(),
        _ => Vec::new(),
    }
}

/// A body chunk is echoed, unchanged, exactly in the duplex modes.
fn check_echo(sent_body: &[u8], response: &Response, mode: i32) {
    let echoed = match response {
        Response::RequestBody(b) | Response::ResponseBody(b) => {
            b.response.as_ref().and_then(|c| match &c.body_mutation {
                Some(m) => match &m.mutation {
                    Some(BodyChange::StreamedResponse(s)) => Some(&s.body),
                    other => panic!("body changed: {other:?}"),
                },
                None => None,
            })
        }
        _ => None,
    };
    assert_eq!(
        echoed.is_some(),
        duplex(mode),
        "a body is echoed exactly in the duplex modes (mode {mode})"
    );
    if let Some(echoed) = echoed {
        assert!(echoed == sent_body, "an echoed body changed");
    }
}

fn duplex(mode: i32) -> bool {
    matches!(
        BodySendMode::try_from(mode),
        Ok(BodySendMode::FullDuplexStreamed | BodySendMode::Grpc)
    )
}

/// What one stream has seen so far, for the checks that span messages.
#[derive(Debug)]
struct Stream {
    role: Role,
    /// The body modes of the first message (`(NONE, NONE)` when it had none).
    announced: Option<(i32, i32)>,
    retry_enabled: bool,
    max_hold: Duration,
    /// A failed attempt was judged before (on this stream or an earlier
    /// one of this input): only then can the gate know of a request it
    /// must stop.
    judged_before: bool,
}

impl Stream {
    fn check(
        &mut self,
        sent: &Sent,
        reply: Option<ProcessingResponse>,
        resumed: Option<ProcessingResponse>,
    ) {
        let announced = *self
            .announced
            .get_or_insert(sent.protocol.unwrap_or((0, 0)));
        let Some(phase) = sent.phase.filter(|_| !sent.observability) else {
            assert!(
                reply.is_none() && resumed.is_none(),
                "a reply to a message that wants none ({sent:?}): {reply:?} {resumed:?}"
            );
            return;
        };
        let reply = reply.unwrap_or_else(|| panic!("no reply to {sent:?}"));
        assert!(reply.mode_override.is_none(), "a mode override: {reply:?}");
        let Some(response) = &reply.response else {
            self.check_hold(sent, phase, &reply, resumed);
            return;
        };
        assert!(resumed.is_none(), "resumed without a hold: {resumed:?}");
        if let Response::ImmediateResponse(r) = response {
            self.check_stop(sent, phase, r);
            return;
        }
        assert_eq!(
            phase_of_response(response),
            Some(phase),
            "reply of another phase: {sent:?} -> {reply:?}"
        );
        if phase == Phase::ResponseHeaders {
            self.check_answer(sent, &reply);
        }
        if let Some(sent_body) = &sent.body {
            let mode = if phase == Phase::RequestBody {
                announced.0
            } else {
                announced.1
            };
            check_echo(sent_body, response, mode);
        }
    }

    /// The answer on a response: a retry only for a failed attempt with
    /// retries on, `Retry-After` only on a 503 or a failed attempt that
    /// stands, and nothing else set.
    fn check_answer(&self, sent: &Sent, reply: &ProcessingResponse) {
        for name in set_headers(reply) {
            match name {
                crate::names::RETRY_HEADER => {
                    assert_ne!(
                        self.role,
                        Role::Final,
                        "a retry asked of the final response"
                    );
                    assert!(self.retry_enabled, "a retry with retries off");
                    assert!(sent.failed(), "a retry of status {:?}", sent.status);
                }
                "retry-after" => assert!(
                    if self.role == Role::Final {
                        sent.status == Some(503)
                    } else {
                        sent.failed()
                    },
                    "Retry-After on status {:?}",
                    sent.status
                ),
                other => panic!("a response header mulligan never sets: {other:?}"),
            }
        }
    }

    /// A reply without a phase extends Envoy's timeout for a hold: only for
    /// a failed attempt with retries on, by `max_hold` and the margin; the
    /// hold ends in an answer on the response headers.
    fn check_hold(
        &self,
        sent: &Sent,
        phase: Phase,
        reply: &ProcessingResponse,
        resumed: Option<ProcessingResponse>,
    ) {
        assert_eq!(phase, Phase::ResponseHeaders, "a hold in {phase:?}");
        assert_ne!(self.role, Role::Final, "a hold of the final response");
        assert!(self.retry_enabled, "a hold with retries off");
        assert!(sent.failed(), "a hold of status {:?}", sent.status);
        let t = reply
            .override_message_timeout
            .as_ref()
            .expect("a hold extends Envoy's timeout");
        let timeout = Duration::new(
            u64::try_from(t.seconds).expect("a timeout ahead"),
            u32::try_from(t.nanos).expect("a timeout ahead"),
        );
        assert_eq!(timeout, self.max_hold, "exactly the budget, never more");
        let resumed = resumed.expect("a hold ends with a reply");
        assert!(
            matches!(resumed.response, Some(Response::ResponseHeaders(_))),
            "a hold ended with {resumed:?}"
        );
        self.check_answer(sent, &resumed);
    }

    /// The one immediate response: the gate stopping a retry of a request
    /// an earlier attempt may have run.
    fn check_stop(&self, sent: &Sent, phase: Phase, r: &ImmediateResponse) {
        assert_eq!(
            phase,
            Phase::RequestHeaders,
            "an immediate response in {phase:?}"
        );
        assert_eq!(
            self.role,
            Role::Retry,
            "an immediate response to {:?}",
            self.role
        );
        assert!(
            self.judged_before || sent.may_have_run,
            "a retry stopped with nothing judged before and no state saying so"
        );
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(503), "{r:?}");
    }
}

/// What an ext_proc input produced, for picking seeds: one label per reply.
pub type Trace = Vec<&'static str>;

fn label(r: &ProcessingResponse) -> &'static str {
    let sets = set_headers(r);
    match &r.response {
        None => "hold",
        Some(Response::RequestHeaders(_)) => "request_headers",
        Some(Response::RequestBody(b) | Response::ResponseBody(b)) if b.response.is_some() => {
            "body_echo"
        }
        Some(Response::RequestBody(_)) => "request_body",
        Some(Response::RequestTrailers(_)) => "request_trailers",
        Some(Response::ResponseHeaders(_)) if sets.contains(&crate::names::RETRY_HEADER) => "retry",
        Some(Response::ResponseHeaders(_)) if sets.contains(&"retry-after") => "retry_after",
        Some(Response::ResponseHeaders(_)) => "response_headers",
        Some(Response::ResponseBody(_)) => "response_body",
        Some(Response::ResponseTrailers(_)) => "response_trailers",
        Some(Response::ImmediateResponse(_) | Response::StreamedImmediateResponse(_)) => "stopped",
    }
}

/// Streams of every role (and none) through one service, each driven as
/// the stream handler drives it: the role from the stream's metadata, then
/// every message through one `Exchange` (`on_message`, then `resume`).
/// Asserts: a stream without a known role is refused with
/// INVALID_ARGUMENT naming the metadata key; every message with a phase
/// gets exactly one reply of that phase (none in observability mode, none
/// without a phase), no mode override ever; a hold (a reply with no phase)
/// only for a failed attempt, never the final response, with retries on,
/// asking Envoy for exactly `max_hold` plus the margin, and ending in an
/// answer on the response headers; `x-mulligan-retry` only on a failed
/// attempt with retries on; `Retry-After` only on a failed status; the one
/// immediate response a 503 from the gate, after a failed attempt was
/// judged; body chunks echoed unchanged exactly in the duplex modes; no
/// request left held once its stream ends; no input takes longer than
/// [`HANG`].
pub fn ext_proc_sequence(data: &[u8]) -> Trace {
    let Some(input) = shape::<Sequence>(data) else {
        return Trace::new();
    };
    let mut left = Allowance(MAX_INPUT_BYTES);
    let ctx = input.knobs.context();
    let mut trace = Trace::new();
    let mut judged_before = false;
    // The request's dynamic metadata, as Envoy keeps it across the
    // streams of its attempts.
    let mut metadata = Metadata::default();
    for s in input.streams.iter().take(MAX_STREAMS) {
        let role = match role_of(&s.role.metadata(), &ctx.metrics) {
            Ok(role) => role,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert!(
                    status.message().contains(crate::names::phase::HEADER),
                    "{status:?}"
                );
                trace.push("unknown_role");
                continue;
            }
        };
        let messages: Vec<ProcessingRequest> = s
            .messages
            .iter()
            .take(MAX_MESSAGES)
            .filter_map(|m| match m {
                MessageIn::Built(b) => Some(b.build(&mut left)),
                MessageIn::Encoded(bytes) => ProcessingRequest::decode(bytes.as_slice()).ok(),
            })
            .collect();
        let mut stream = Stream {
            role,
            announced: None,
            retry_enabled: ctx.decider.cfg.enabled,
            max_hold: ctx.decider.hold_cfg.max_hold,
            judged_before,
        };
        block_on(async {
            let run = drive(&ctx, messages, &mut stream, &mut metadata, &mut trace);
            tokio::time::timeout(HANG, run)
                .await
                .unwrap_or_else(|_| panic!("hang: a stream took over {HANG:?}"))
        });
        assert_eq!(
            ctx.decider.holds.held(),
            0,
            "a request still held after its stream"
        );
        judged_before = stream.judged_before;
    }
    trace
}

async fn drive(
    ctx: &Arc<Context>,
    messages: Vec<ProcessingRequest>,
    stream: &mut Stream,
    metadata: &mut Metadata,
    trace: &mut Trace,
) {
    let mut exchange = Exchange::new(Arc::clone(ctx), stream.role);
    for mut m in messages {
        // Envoy forwards the request's state with every message (a peer's
        // own bytes for it are kept: they are fuzzed too).
        if m.metadata_context.is_none() {
            m.metadata_context = Some(metadata.clone());
        }
        let sent = Sent::of(&m);
        let reply = exchange.on_message(m).await;
        let resumed = exchange.resume().await;
        for r in reply.iter().chain(&resumed) {
            envoy_keeps(metadata, r);
        }
        trace.extend(reply.iter().chain(&resumed).map(label));
        stream.check(&sent, reply, resumed);
        // Response headers are judged whatever the mode: from here on the
        // gate may know of a request to stop.
        if sent.phase == Some(Phase::ResponseHeaders) && stream.role != Role::Final {
            stream.judged_before = true;
        }
    }
}

/// What Envoy keeps of a reply's dynamic metadata: the namespaces the
/// wiring accepts, each merged key by key.
fn envoy_keeps(metadata: &mut Metadata, reply: &ProcessingResponse) {
    let Some(written) = &reply.dynamic_metadata else {
        return;
    };
    for (ns, v) in &written.fields {
        if let (crate::names::state::NAMESPACE, Some(Kind::StructValue(s))) = (ns.as_str(), &v.kind)
        {
            let kept = metadata.filter_metadata.entry(ns.clone()).or_default();
            kept.fields.extend(s.fields.clone());
        }
    }
}

// ---------------------------------------------------------------------------
// The classifier

#[derive(Arbitrary, Debug)]
struct ObservedIn {
    status: StatusIn,
    flags: FlagsIn,
    details: DetailsIn,
    connection_close: bool,
    drain_header: bool,
    overloaded: bool,
    endpoint: Option<u8>,
    idempotent_method: bool,
    idempotency_key: bool,
    retry_plain_503: bool,
}

#[derive(Arbitrary, Debug)]
enum StatusIn {
    Known(u8),
    Any(u16),
}

#[derive(Arbitrary, Debug)]
enum FlagsIn {
    /// Each byte picks one of the flags mulligan knows.
    Known(Vec<u8>),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum DetailsIn {
    Known(u8),
    Any(String),
}

const STATUSES: &[u16] = &[
    200, 404, 429, 499, 500, 502, 503, 504, 599, 0, 100, 600, 65535,
];

const FLAGS: &[u64] = &[
    flags::FAILED_LOCAL_HEALTH_CHECK,
    flags::NO_HEALTHY_UPSTREAM,
    flags::UPSTREAM_REQUEST_TIMEOUT,
    flags::LOCAL_RESET,
    flags::UPSTREAM_REMOTE_RESET,
    flags::UPSTREAM_CONNECTION_FAILURE,
    flags::UPSTREAM_CONNECTION_TERMINATION,
    flags::UPSTREAM_OVERFLOW,
    flags::RATE_LIMITED,
    flags::OVERLOAD_MANAGER,
    flags::DROP_OVERLOAD,
];

/// One observed response through `classify` and the safety policy.
/// Asserts: a status below 500 other than 429 is a success and nothing else
/// is; any sign of overload is `Overload`, and `Overload` needs one;
/// "never reached the app" causes need the evidence for it (UH, UF or the
/// reset details, the drain header on a 503); the 503-only causes need a
/// 503; a retry is decided only for a retriable cause and a request that
/// is safe to send again.
pub fn classify(data: &[u8]) -> Option<Cause> {
    let input = shape::<ObservedIn>(data)?;
    let observed = input.build();
    let cause = classify::classify(&observed);
    assert_eq!(cause, classify::classify(&observed), "not deterministic");
    check_cause(&observed, cause);
    let facts = RequestFacts {
        idempotent_method: input.idempotent_method,
        idempotency_key: input.idempotency_key,
    };
    if policy::decide(cause, facts, input.retry_plain_503) == Decision::Retry {
        assert!(
            !matches!(
                cause,
                Cause::Success | Cause::Overload | Cause::Timeout | Cause::OtherError
            ),
            "retry of {cause:?}"
        );
        assert!(
            cause != Cause::App503 || input.retry_plain_503,
            "plain 503 retried"
        );
        assert!(safety::is_safe(cause.reached_app(), facts), "unsafe retry");
    }
    Some(cause)
}

impl ObservedIn {
    fn build(&self) -> Observed<'_> {
        Observed {
            status: match self.status {
                StatusIn::Known(i) => pick(STATUSES, i),
                StatusIn::Any(s) => s,
            },
            flags: match &self.flags {
                FlagsIn::Known(bits) => bits.iter().fold(0, |acc, i| acc | pick(FLAGS, *i)),
                FlagsIn::Any(f) => *f,
            },
            details: match &self.details {
                DetailsIn::Known(i) => pick(STRINGS, *i),
                DetailsIn::Any(s) => s.as_str(),
            },
            connection_close: self.connection_close,
            drain_header: self.drain_header,
            overloaded: self.overloaded,
            endpoint: self.endpoint.map(|s| match s % 4 {
                0 => State::Ready,
                1 => State::NotReady,
                2 => State::Draining,
                _ => State::Gone,
            }),
        }
    }
}

/// The evidence each cause needs is in the response.
fn check_cause(observed: &Observed<'_>, cause: Cause) {
    let (status, flag_bits, details) = (observed.status, observed.flags, observed.details);
    let failed = status >= 500 || status == 429;
    assert_eq!(cause != Cause::Success, failed, "{observed:?} -> {cause:?}");
    let shedding = status == 429
        || observed.overloaded
        || flag_bits
            & (flags::UPSTREAM_OVERFLOW
                | flags::RATE_LIMITED
                | flags::OVERLOAD_MANAGER
                | flags::DROP_OVERLOAD)
            != 0;
    assert_eq!(
        cause == Cause::Overload,
        failed && shedding,
        "{observed:?} -> {cause:?}"
    );
    match cause {
        Cause::NoHealthyUpstream => assert!(
            flag_bits & flags::NO_HEALTHY_UPSTREAM != 0 || details == "no_healthy_upstream",
            "{observed:?}"
        ),
        Cause::ConnectFailure => assert!(
            flag_bits & flags::UPSTREAM_CONNECTION_FAILURE != 0
                || details.starts_with("upstream_reset_before_response_started"),
            "{observed:?}"
        ),
        Cause::UpstreamRejected => {
            assert!(observed.drain_header && status == 503, "{observed:?}")
        }
        Cause::Timeout => assert!(
            flag_bits & flags::UPSTREAM_REQUEST_TIMEOUT != 0,
            "{observed:?}"
        ),
        Cause::UpstreamDraining | Cause::UpstreamNotReady | Cause::App503 => {
            assert_eq!(status, 503, "{observed:?} -> {cause:?}")
        }
        _ => {}
    }
    if cause.reached_app() == Reached::Never {
        assert!(
            matches!(
                cause,
                Cause::NoHealthyUpstream | Cause::ConnectFailure | Cause::UpstreamRejected
            ),
            "{cause:?} claims the app never saw the request"
        );
    }
}

// ---------------------------------------------------------------------------
// The config parser

/// Config text through the parser, then through what `mulligan serve`
/// builds from a config before it opens a socket (the endpoint registry,
/// the decider with its budget and holds). Asserts: an error names a line and column
/// that exist in the text (1-based, the column within its line) and says
/// so in its message; a config that parses builds without a panic, and
/// parses the same twice. Returns whether the text parsed.
pub fn config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    match Config::parse("fuzz.toml", &text) {
        Err(e) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                e.line >= 1 && e.line <= lines.len(),
                "line {} of {}",
                e.line,
                lines.len()
            );
            let width = lines[e.line - 1].chars().count();
            assert!(
                e.column >= 1 && e.column <= width + 1,
                "column {} of a line {width} wide",
                e.column
            );
            assert!(
                e.to_string()
                    .starts_with(&format!("fuzz.toml:{}:{}: ", e.line, e.column)),
                "{e}"
            );
            false
        }
        Ok(cfg) => {
            let again = Config::parse("fuzz.toml", &text).expect("parses twice");
            assert_eq!(
                format!("{cfg:?}"),
                format!("{again:?}"),
                "parses differently"
            );
            let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
            let decider = Decider::new(&cfg, Arc::clone(&registry), metrics());
            let _ = decider.holds.plausible(None);
            let _ = registry.cluster(None);
            true
        }
    }
}
