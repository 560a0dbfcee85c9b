//! `mulligan.attempt` and `mulligan.final`: composite filters that open an
//! ext_proc stream only for a retry or a 5xx.

use super::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::metadata_options::MetadataNamespaces;

/// One matcher of a composite filter: the header it reads, what it looks
/// for, and the ext_proc it runs.
struct Gated {
    header: String,
    /// `request` or `response`: which headers the input reads.
    side: &'static str,
    pattern: MatchPattern,
    /// Never for a request with an `upgrade` header (WebSocket).
    unless_upgrade: bool,
    ext_proc: ExternalProcessor,
}

/// The matchers of a composite filter, in order.
fn gated_ext_procs(f: &HttpFilter) -> Vec<Gated> {
    let any = typed_any(f);
    assert!(any
        .type_url
        .ends_with("envoy.extensions.common.matching.v3.ExtensionWithMatcher"));
    let ewm = ExtensionWithMatcher::decode(any.value.as_slice()).expect("matcher");
    assert_eq!(
        ewm.extension_config.as_ref().map(|c| c.name.as_str()),
        Some("envoy.filters.http.composite")
    );
    let matcher = ewm.xds_matcher.expect("xds_matcher");
    assert!(matcher.on_no_match.is_none(), "no match: no stream");
    let Some(MatcherType::MatcherList(list)) = matcher.matcher_type else {
        panic!("matcher list")
    };
    list.matchers.into_iter().map(gated).collect()
}

/// A single predicate's header, side and pattern.
fn single(p: Predicate) -> (String, &'static str, MatchPattern) {
    let Some(MatchType::SinglePredicate(single)) = p.match_type else {
        panic!("single predicate")
    };
    let input = single.input.and_then(|i| i.typed_config).expect("input");
    let (header, side) = if input.type_url.ends_with("HttpRequestHeaderMatchInput") {
        let i = HttpRequestHeaderMatchInput::decode(input.value.as_slice()).expect("input");
        (i.header_name, "request")
    } else {
        assert!(input.type_url.ends_with("HttpResponseHeaderMatchInput"));
        let i = HttpResponseHeaderMatchInput::decode(input.value.as_slice()).expect("input");
        (i.header_name, "response")
    };
    let Some(single_predicate::Matcher::ValueMatch(value)) = single.matcher else {
        panic!("value match")
    };
    assert!(!value.ignore_case);
    (header, side, value.match_pattern.expect("pattern"))
}

/// A matcher's predicate: a single one, or `and(single, not(an upgrade))`
/// (the `bool`), the single one first so a healthy attempt is rejected
/// before the upgrade check.
fn predicate(p: Predicate) -> ((String, &'static str, MatchPattern), bool) {
    let Some(MatchType::AndMatcher(list)) = p.match_type else {
        return (single(p), false);
    };
    let [inner, not]: [Predicate; 2] = list.predicate.try_into().expect("two predicates");
    let Some(MatchType::NotMatcher(upgrade)) = not.match_type else {
        panic!("not an upgrade")
    };
    let (header, side, pattern) = single(*upgrade);
    assert_eq!((header.as_str(), side), ("upgrade", "request"));
    assert_eq!(regex(&pattern), ".*", "any value: the header is present");
    (single(inner), true)
}

fn gated(m: FieldMatcher) -> Gated {
    let ((header, side, pattern), unless_upgrade) = predicate(m.predicate.expect("predicate"));
    let on = m.on_match.expect("on_match");
    assert!(!on.keep_matching);
    let Some(on_match::OnMatch::Action(action)) = on.on_match else {
        panic!("action")
    };
    let action = ExecuteFilterAction::decode(action.typed_config.expect("action").value.as_slice())
        .expect("execute");
    let proc = action
        .typed_config
        .and_then(|t| t.typed_config)
        .expect("ext_proc");
    Gated {
        header,
        side,
        pattern,
        unless_upgrade,
        ext_proc: ExternalProcessor::decode(proc.value.as_slice()).expect("ext_proc"),
    }
}

fn regex(pattern: &MatchPattern) -> &str {
    match pattern {
        MatchPattern::SafeRegex(r) => {
            assert!(
                matches!(r.engine_type, Some(EngineType::GoogleRe2(_))),
                "RE2"
            );
            &r.regex
        }
        other => panic!("not a regex: {other:?}"),
    }
}

/// `mulligan.attempt`: first the gate on a retry, then a 5xx answer.
pub(super) fn check_attempt_filter(f: &HttpFilter, max_hold_s: i64) {
    let m = gated_ext_procs(f);
    assert_eq!(m.len(), 2, "the retry gate, then the 5xx matcher");
    assert!(
        m[0].unless_upgrade && m[1].unless_upgrade,
        "an upgrade is Envoy's alone (an upgrade's 5xx seen here crashes Envoy 1.40)"
    );
    assert_eq!(
        (m[0].header.as_str(), m[0].side),
        (names::header::ATTEMPT_COUNT, "request")
    );
    assert_eq!(regex(&m[0].pattern), "[2-9]|[1-9][0-9]+");
    check_ext_proc(&m[0].ext_proc, names::phase::RETRY, Some(max_hold_s), 1);
    assert!(
        m[0].ext_proc.request_attributes.is_empty(),
        "the gate reads the request's state, nothing else"
    );
    // The full list is compared with the reference bootstrap's in
    // reference.rs; here, what the safety rule cannot do without.
    let attributes = &m[0].ext_proc.response_attributes;
    for needed in [
        names::attribute::REQUEST_METHOD,
        names::attribute::IDEMPOTENCY_KEY,
    ] {
        assert!(
            attributes.iter().any(|a| a == needed),
            "{needed}: {attributes:?}"
        );
    }
    assert_eq!((m[1].header.as_str(), m[1].side), (":status", "response"));
    assert_eq!(m[1].pattern, MatchPattern::Prefix("5".into()));
    check_ext_proc(&m[1].ext_proc, names::phase::ATTEMPT, Some(max_hold_s), 2);
    assert!(m[1].ext_proc.request_attributes.is_empty());
    assert_eq!(&m[1].ext_proc.response_attributes, attributes);
}

/// `mulligan.final`: a 5xx on its way to the client.
pub(super) fn check_final_filter(f: &HttpFilter) {
    let m = gated_ext_procs(f);
    assert_eq!(m.len(), 1);
    assert!(!m[0].unless_upgrade, "mulligan.final sees every 5xx");
    assert_eq!((m[0].header.as_str(), m[0].side), (":status", "response"));
    assert_eq!(m[0].pattern, MatchPattern::Prefix("5".into()));
    check_ext_proc(&m[0].ext_proc, names::phase::FINAL, None, 2);
    assert!(m[0].ext_proc.request_attributes.is_empty());
    // The full list is compared with the reference bootstrap's in
    // reference.rs; here, what mulligan learns from: the status and the
    // endpoint that answered.
    let attributes = &m[0].ext_proc.response_attributes;
    for needed in [
        names::attribute::RESPONSE_CODE,
        names::attribute::UPSTREAM_ADDRESS,
    ] {
        assert!(
            attributes.iter().any(|a| a == needed),
            "{needed}: {attributes:?}"
        );
    }
}

/// `mulligan.attempt` forwards the request's attempt state to mulligan and
/// takes mulligan's update back, and only that namespace; `mulligan.final`
/// neither.
fn check_metadata_options(p: &ExternalProcessor, attempt_state: bool) {
    let ns = |n: &Option<MetadataNamespaces>| {
        n.as_ref().map(|n| {
            assert!(n.typed.is_empty(), "no typed namespace");
            n.untyped.clone()
        })
    };
    let options = p.metadata_options.as_ref();
    let forwarding = options.and_then(|o| ns(&o.forwarding_namespaces));
    let receiving = options.and_then(|o| ns(&o.receiving_namespaces));
    let want = attempt_state.then(|| vec![names::state::NAMESPACE.to_string()]);
    assert_eq!((forwarding, receiving), (want.clone(), want));
}

/// `request_header_mode`: 1 SEND (the gate), 2 SKIP.
pub(super) fn check_ext_proc(
    p: &ExternalProcessor,
    phase: &str,
    max_hold_s: Option<i64>,
    request_mode: i32,
) {
    let grpc = p.grpc_service.as_ref().expect("grpc");
    let Some(TargetSpecifier::EnvoyGrpc(g)) = &grpc.target_specifier else {
        panic!("envoy_grpc")
    };
    assert_eq!(g.cluster_name, names::CLUSTER);
    let metadata: Vec<(&str, &str)> = grpc
        .initial_metadata
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    let budget = max_hold_s.map(|s| format!("{s}s"));
    let mut want = vec![(names::phase::HEADER, phase)];
    if let Some(budget) = &budget {
        // The hold budget, told to mulligan: the same as Envoy's
        // max_message_timeout below.
        want.push((names::max_hold::HEADER, budget.as_str()));
    }
    assert_eq!(metadata, want);
    check_metadata_options(p, max_hold_s.is_some());
    assert!(p.failure_mode_allow);
    assert_eq!(
        p.message_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 200_000_000
        })
    );
    assert_eq!(
        p.max_message_timeout,
        max_hold_s.map(|s| Duration {
            seconds: s,
            nanos: 0
        })
    );
    let mode = p.processing_mode.as_ref().expect("mode");
    assert_eq!(
        (mode.request_header_mode, mode.response_header_mode),
        (request_mode, 1),
        "{phase}: request headers, response SEND"
    );
    assert_eq!(
        (mode.request_body_mode, mode.response_body_mode),
        (0, 0),
        "no bodies"
    );
    assert_eq!(
        (mode.request_trailer_mode, mode.response_trailer_mode),
        (2, 2),
        "no trailers"
    );
}
