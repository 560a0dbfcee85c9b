//! The app cluster's upstream filters, which run once per attempt:
//! `mulligan.attempt` asks mulligan about a retry before it leaves (the
//! gate) and about a failed attempt; `mulligan.strip` keeps the pod's view
//! and mulligan's retry header exactly as without mulligan.

use envoy_types::pb::{
    envoy::{
        config::common::mutation_rules::v3::{header_mutation::Action, HeaderMutation as Mutation},
        extensions::filters::{
            http::{
                header_mutation::v3::{HeaderMutation, Mutations},
                upstream_codec::v3::UpstreamCodec,
            },
            network::http_connection_manager::v3::HttpFilter,
        },
    },
    google::protobuf::Any,
};

use super::{
    envoy,
    ext_proc::{composite, on_failed_status, on_retry, unless_upgrade, Call},
    http_filter, pack,
};
use crate::{extension::policy::Settings, names};

/// `mulligan.attempt`: the gate on every retry (role `retry`: it sees the
/// retry's request headers, and its answer), then a failed first attempt
/// (role `attempt`: its response only); never for an upgrade. Both carry
/// the request's attempt state and the hold budget.
pub fn attempt_filter(settings: &Settings) -> Any {
    let retry = Call {
        phase: names::phase::RETRY,
        request_headers: true,
        request_attributes: &[],
        response_attributes: &names::attribute::ATTEMPT,
        max_hold: Some(settings.max_hold),
        attempt_state: true,
    };
    let attempt = Call {
        phase: names::phase::ATTEMPT,
        request_headers: false,
        request_attributes: &[],
        response_attributes: &names::attribute::ATTEMPT,
        max_hold: Some(settings.max_hold),
        attempt_state: true,
    };
    composite(vec![
        unless_upgrade(on_retry(&retry)),
        unless_upgrade(on_failed_status(&attempt)),
    ])
}

/// `mulligan.strip`: nobody but mulligan may ask Envoy for a retry (the
/// retry header leaves every pod's answer), and the pod gets the request
/// exactly as without mulligan (no attempt count).
pub fn strip_filter() -> Any {
    let remove = |name: &str| Mutation {
        action: Some(Action::Remove(name.to_string())),
    };
    pack(&HeaderMutation {
        mutations: Some(Mutations {
            request_mutations: vec![remove(names::header::ATTEMPT_COUNT)],
            response_mutations: vec![remove(names::RETRY_HEADER)],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The upstream filter chain: mulligan's two filters right before the
/// codec, after any filter Envoy Gateway put there.
pub fn install_upstream_filters(filters: &mut Vec<HttpFilter>, settings: &Settings) {
    filters.retain(|f| f.name != names::filter::ATTEMPT && f.name != names::filter::STRIP);
    let codec = match filters.iter().position(|f| f.name == envoy::UPSTREAM_CODEC) {
        Some(at) => at,
        None => {
            filters.push(http_filter(envoy::UPSTREAM_CODEC, pack(&UpstreamCodec {})));
            filters.len() - 1
        }
    };
    filters.insert(codec, http_filter(names::filter::STRIP, strip_filter()));
    let attempt = http_filter(names::filter::ATTEMPT, attempt_filter(settings));
    filters.insert(codec, attempt);
}
