//! The routes: the retry policy, the headers no client may send, and the
//! virtual host's attempt count (the gate's input).

use super::*;

fn strip_marker(route: &mut Route, before: &Route) {
    if let Some(m) = route.metadata.as_mut() {
        let marker = m.filter_metadata.remove("mulligan.dev");
        if marker.is_some()
            && m.filter_metadata.is_empty()
            && m.typed_filter_metadata.is_empty()
            && before.metadata.is_none()
        {
            route.metadata = None;
        }
    }
}

pub(super) fn check_routes(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_eq!(resp.routes.len(), req.routes.len());
    let mut seen = 0;
    for (a, b) in resp.routes.iter().zip(&req.routes) {
        assert_eq!(a.virtual_hosts.len(), b.virtual_hosts.len());
        let (mut a_cfg, mut b_cfg) = (a.clone(), b.clone());
        for (va, vb) in a_cfg.virtual_hosts.iter_mut().zip(&mut b_cfg.virtual_hosts) {
            check_attempt_count(va, vb, e);
            for (ra, rb) in va.routes.iter_mut().zip(&mut vb.routes) {
                strip_marker(ra, rb);
                if !e.routes.contains(&rb.name.as_str()) {
                    continue;
                }
                seen += 1;
                let added = ra
                    .request_headers_to_remove
                    .split_off(rb.request_headers_to_remove.len());
                assert_eq!(
                    added,
                    names::header::FROM_CLIENTS_REMOVED,
                    "{}: client-sent headers removed",
                    rb.name
                );
                let added = ra
                    .response_headers_to_remove
                    .split_off(rb.response_headers_to_remove.len());
                assert_eq!(
                    added,
                    names::header::TO_CLIENTS_REMOVED,
                    "{}: headers no client receives removed",
                    rb.name
                );
                let (Some(route::Action::Route(aa)), Some(route::Action::Route(ab))) =
                    (ra.action.as_mut(), rb.action.as_mut())
                else {
                    panic!("{}: not a forwarding route", rb.name);
                };
                let p = aa
                    .retry_policy
                    .take()
                    .unwrap_or_else(|| panic!("{}: no retry policy", rb.name));
                assert_eq!(
                    p.retry_on,
                    "connect-failure,refused-stream,reset-before-request,retriable-headers"
                );
                assert_eq!(p.num_retries.map(|n| n.value), Some(e.num_retries));
                assert_eq!(p.retriable_headers.len(), 1);
                let h = &p.retriable_headers[0];
                assert_eq!(h.name, names::RETRY_HEADER);
                let Some(HeaderMatchSpecifier::StringMatch(m)) = &h.header_match_specifier else {
                    panic!("header match")
                };
                assert_eq!(m.match_pattern, Some(EnvoyMatchPattern::Exact("1".into())));
                assert_eq!(p.retry_host_predicate.len(), 1);
                assert_eq!(
                    p.retry_host_predicate[0].name,
                    "envoy.retry_host_predicates.previous_hosts"
                );
                assert_eq!(p.host_selection_retry_max_attempts, 20);
                let back_off = p.retry_back_off.as_ref().expect("back-off");
                assert_eq!(
                    back_off.base_interval,
                    Some(Duration {
                        seconds: 0,
                        nanos: 10_000_000
                    })
                );
                assert_eq!(
                    back_off.max_interval,
                    Some(Duration {
                        seconds: 0,
                        nanos: 100_000_000
                    })
                );
                assert!(p.retriable_status_codes.is_empty() && p.retry_priority.is_none());
                let before = ab.retry_policy.take();
                assert_eq!(
                    p.per_try_timeout,
                    before.as_ref().and_then(|b| b.per_try_timeout),
                    "per-try timeout kept"
                );
            }
        }
        assert_eq!(
            a_cfg, b_cfg,
            "route config {}: more than the retry policy changed",
            b.name
        );
    }
    assert_eq!(seen, e.routes.len(), "wired routes found");
}

/// A virtual host with a wired route gets `include_request_attempt_count`
/// (the gate's input) only when every route of it that forwards is wired;
/// otherwise it is left as it was (docs/envoy-gateway.md).
pub(super) fn check_attempt_count(after: &mut VirtualHost, before: &VirtualHost, e: &Expect) {
    let wired = |r: &Route| e.routes.contains(&r.name.as_str());
    let forwards = |r: &Route| matches!(r.action, Some(route::Action::Route(_)));
    let gated =
        before.routes.iter().any(wired) && before.routes.iter().filter(|r| forwards(r)).all(wired);
    assert_eq!(
        after.include_request_attempt_count,
        before.include_request_attempt_count || gated,
        "{}: include_request_attempt_count",
        before.name
    );
    after.include_request_attempt_count = before.include_request_attempt_count;
}
