//! The route: Envoy makes every attempt, and retries connection failures
//! and whatever mulligan marks with [`names::RETRY_HEADER`]; no client may
//! send the headers that speak for mulligan or pick an endpoint.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::route::v3::{
        header_matcher::HeaderMatchSpecifier, retry_policy, route, route_action, HeaderMatcher,
        RetryPolicy, Route, RouteAction, VirtualHost,
    },
    extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate,
    r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher},
};

use super::{duration, envoy, pack, u32v};
use crate::{extension::policy::Settings, names};

/// Route retry triggers; Envoy's own 5xx triggers are left out on purpose:
/// they would resend POSTs that reached an app.
pub const RETRY_ON: &str = "connect-failure,refused-stream,reset-before-request,retriable-headers";
/// How often Envoy may re-pick a host that `previous_hosts` rejects
/// (drawing is cheap; each retry should really go somewhere new).
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 20;
/// Envoy's pause between attempts: short, since mulligan (not the clock)
/// decides when an endpoint is worth another try.
pub const RETRY_BACK_OFF_BASE: Duration = Duration::from_millis(10);
pub const RETRY_BACK_OFF_MAX: Duration = Duration::from_millis(100);

/// The route retry policy: Envoy retries connect failures and whatever
/// mulligan marks with the retry header. A per-try timeout set by Envoy
/// Gateway (BackendTrafficPolicy) is kept: it is the user's choice.
pub fn retry_policy(settings: &Settings, previous: Option<&RetryPolicy>) -> RetryPolicy {
    let predicate = retry_policy::RetryHostPredicate {
        name: envoy::PREVIOUS_HOSTS.to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            pack(&PreviousHostsPredicate {}),
        )),
    };
    RetryPolicy {
        retry_on: RETRY_ON.to_string(),
        num_retries: u32v(settings.num_retries),
        per_try_timeout: previous.and_then(|p| p.per_try_timeout),
        retriable_headers: vec![HeaderMatcher {
            name: names::RETRY_HEADER.to_string(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(names::RETRY_VALUE.to_string())),
                ignore_case: false,
            })),
            ..Default::default()
        }],
        retry_host_predicate: vec![predicate],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(RETRY_BACK_OFF_BASE)),
            max_interval: Some(duration(RETRY_BACK_OFF_MAX)),
        }),
        ..Default::default()
    }
}

/// Installs the retry policy on a forwarding route, and removes
/// [`names::header::FROM_CLIENTS_REMOVED`] from its requests and
/// [`names::header::TO_CLIENTS_REMOVED`] from its responses; returns the
/// clusters it forwards to (empty for redirects and direct responses, left
/// untouched).
pub fn install_route(route: &mut Route, settings: &Settings) -> Vec<String> {
    let Some(route::Action::Route(action)) = route.action.as_mut() else {
        return Vec::new();
    };
    action.retry_policy = Some(retry_policy(settings, action.retry_policy.as_ref()));
    let clusters = route_clusters(action);
    add_missing(
        &mut route.request_headers_to_remove,
        &names::header::FROM_CLIENTS_REMOVED,
    );
    add_missing(
        &mut route.response_headers_to_remove,
        &names::header::TO_CLIENTS_REMOVED,
    );
    clusters
}

/// Appends each of `names` that `list` lacks, keeping the route's own.
fn add_missing(list: &mut Vec<String>, names: &[&str]) {
    for name in names {
        if !list.iter().any(|h| h == name) {
            list.push(name.to_string());
        }
    }
}

/// Turns the gate on for a virtual host: Envoy then adds
/// [`names::header::ATTEMPT_COUNT`] to every attempt of every route of it.
/// Only for a virtual host whose forwarding routes are all wired (their
/// clusters' `mulligan.strip` removes the header before the pod); see
/// docs/envoy-gateway.md.
pub fn install_attempt_count(vhost: &mut VirtualHost) {
    vhost.include_request_attempt_count = true;
}

/// The clusters a forwarding route sends to (none for other routes).
pub fn forwarded_clusters(route: &Route) -> Vec<String> {
    match route.action.as_ref() {
        Some(route::Action::Route(action)) => route_clusters(action),
        _ => Vec::new(),
    }
}

fn route_clusters(action: &RouteAction) -> Vec<String> {
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) => vec![name.clone()],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| c.name.clone()).collect()
        }
        _ => Vec::new(),
    }
}
