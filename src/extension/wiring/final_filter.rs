//! `mulligan.final`, on the listener: mulligan sees the failed response the
//! client is about to get (it learns from it, and adds Retry-After).

use envoy_types::pb::{
    envoy::{
        config::listener::v3::{filter, Filter, Listener},
        extensions::filters::network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager,
        },
    },
    google::protobuf::Any,
};
use prost::Message;

use super::{
    envoy,
    ext_proc::{composite, on_failed_status, Call},
    http_filter, pack,
};
use crate::names;

/// `mulligan.final`: a 5xx on its way to the client.
pub fn final_filter() -> Any {
    let call = Call {
        phase: names::phase::FINAL,
        request_headers: false,
        request_attributes: &[],
        response_attributes: &names::attribute::FINAL,
        max_hold: None,
        attempt_state: false,
    };
    composite(vec![on_failed_status(&call)])
}

/// Puts `mulligan.final` right before the router of every HTTP connection
/// manager of `listener` whose route configuration is `wired`. Returns
/// whether anything changed. An HCM that does not decode is left alone.
pub fn install_listener(listener: &mut Listener, wired: &dyn Fn(&str) -> bool) -> bool {
    let mut changed = false;
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut());
    for chain in chains {
        for f in chain.filters.iter_mut().filter(|f| f.name == envoy::HCM) {
            changed |= install_final_filter(f, wired);
        }
    }
    changed
}

fn install_final_filter(hcm_filter: &mut Filter, wired: &dyn Fn(&str) -> bool) -> bool {
    let Some(filter::ConfigType::TypedConfig(any)) = hcm_filter.config_type.as_mut() else {
        return false;
    };
    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
        return false;
    };
    let name = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name.as_str(),
        Some(RouteSpecifier::RouteConfig(rc)) => rc.name.as_str(),
        _ => return false,
    };
    if !wired(name) {
        return false;
    }
    if !install_final(&mut hcm) {
        return false;
    }
    *any = pack(&hcm);
    true
}

/// Puts `mulligan.final` right before the router of `hcm`; false when it
/// has no router (nothing to put it before).
pub fn install_final(hcm: &mut HttpConnectionManager) -> bool {
    hcm.http_filters.retain(|f| f.name != names::filter::FINAL);
    let Some(at) = hcm
        .http_filters
        .iter()
        .position(|f| f.name == envoy::ROUTER)
    else {
        return false;
    };
    let filter = http_filter(names::filter::FINAL, final_filter());
    hcm.http_filters.insert(at, filter);
    true
}
