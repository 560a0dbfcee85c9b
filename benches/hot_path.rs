//! Micro benchmarks of what mulligan does per request, without the network:
//! - `exchange/healthy`: a request headers and a 200 response headers message
//!   through the per-request state machine (every request pays this);
//! - `exchange/503_decided`: the same for a refused connection, up to the
//!   rescue decision and the rebuilt request (only failures pay this);
//! - `decide/classify_decide_pick`: classification, policy and endpoint choice;
//! - `budget/deposit`: the budget's per-request cost;
//! - `idle_guard/*`: waiting for Envoy's next message with and without the
//!   `limits.stream_idle_timeout` timer around it (every message pays it).
//!
//! `cargo bench --bench hot_path`

use std::{hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use envoy_types::pb::{
    envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::ext_proc::v3::{processing_request::Request, HttpHeaders, ProcessingRequest},
    },
    google::protobuf::{value::Kind, Struct, Value},
};
use mulligan::{
    classify::{classify, Observed},
    config::Config,
    drain::Drain,
    endpoints::{picker, Registry},
    ext_proc::{Context, Exchange},
    metrics::Metrics,
    policy::{decide, RequestFacts},
};

fn header(k: &str, v: &str) -> HeaderValue {
    HeaderValue {
        key: k.into(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    }
}

fn request_headers() -> ProcessingRequest {
    let headers = [
        (":method", "GET"),
        (":path", "/projects/42/documents?page=3"),
        (":authority", "app.example.com"),
        (":scheme", "https"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        (
            "cookie",
            "_session=0123456789abcdef0123456789abcdef; theme=dark",
        ),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6f1c2a4e-9d7b-4c1e-8a3f-2b5d7e9f1a3c"),
    ];
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_headers(code: f64, flags: f64, details: &str) -> ProcessingRequest {
    let mut attrs = Struct::default();
    let mut put = |k: &str, v: Kind| {
        attrs.fields.insert(k.into(), Value { kind: Some(v) });
    };
    put("response.code", Kind::NumberValue(code));
    put("response.flags", Kind::NumberValue(flags));
    put("response.code_details", Kind::StringValue(details.into()));
    put(
        "upstream.address",
        Kind::StringValue("127.0.0.1:8001".into()),
    );
    put("xds.cluster_name", Kind::StringValue("app".into()));
    let mut r = ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    header(":status", &code.to_string()),
                    header("content-type", "text/html; charset=utf-8"),
                    header("cache-control", "no-store"),
                ],
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    r.attributes
        .insert("envoy.filters.http.ext_proc".into(), attrs);
    r
}

fn context() -> Arc<Context> {
    let mut cfg = Config::default();
    cfg.endpoints.default = (1..=10)
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + p)))
        .collect();
    let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
    let metrics = Metrics::new();
    Arc::new(Context::new(&cfg, registry, metrics, Drain::new()))
}

fn exchange(c: &mut Criterion) {
    let ctx = context();
    let req = request_headers();
    let ok = response_headers(200.0, 0.0, "via_upstream");
    let refused = response_headers(
        503.0,
        32.0,
        "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
    );
    let mut g = c.benchmark_group("exchange");
    for (name, response) in [("healthy", &ok), ("503_decided", &refused)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || (req.clone(), response.clone()),
                |(rq, rs)| {
                    futures::executor::block_on(async {
                        let mut x = Exchange::new(Arc::clone(&ctx));
                        black_box(x.on_message(rq).await);
                        black_box(x.on_message(rs).await);
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn decide_path(c: &mut Criterion) {
    let ctx = context();
    let cluster = ctx.registry.cluster(Some("app")).expect("cluster");
    let failed = ["127.0.0.1:8001".parse().expect("addr")];
    c.bench_function("decide/classify_decide_pick", |b| {
        b.iter(|| {
            let cause = classify(black_box(&Observed {
                status: 503,
                flags: 32,
                details: "upstream_reset_before_response_started{remote_connection_failure}",
                ..Default::default()
            }));
            let d = decide(
                cause,
                RequestFacts {
                    idempotent_method: true,
                    idempotency_key: false,
                    body_replayable: true,
                },
                false,
            );
            black_box((d, picker::pick(&cluster, &failed, ctx.registry.now_ms())))
        })
    });
    c.bench_function("budget/deposit", |b| {
        b.iter(|| ctx.rescuer.budget.deposit())
    });
}

/// A message that arrives after the stream started waiting for it (the
/// common case: Envoy's next phase comes later), awaited bare and inside
/// the idle timeout, side by side in one run.
fn idle_guard(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let idle = std::time::Duration::from_secs(300);
    let mut g = c.benchmark_group("idle_guard");
    g.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
                tokio::spawn(async move { tx.send(1) });
                black_box(rx.await.ok())
            })
        })
    });
    g.bench_function("with_timeout", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
                tokio::spawn(async move { tx.send(1) });
                black_box(tokio::time::timeout(idle, rx).await.ok())
            })
        })
    });
    g.finish();
}

criterion_group!(benches, exchange, decide_path, idle_guard);
criterion_main!(benches);
