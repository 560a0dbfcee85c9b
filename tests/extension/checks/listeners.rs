//! The listeners: `mulligan.final` before the router of each wired
//! connection manager, nothing else changed.

use super::*;

/// Each HTTP connection manager in the listener, decoded, with where it is.
pub(super) fn hcms(l: &Listener) -> Vec<HttpConnectionManager> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(|c| &c.filters)
        .filter(|f| f.name == "envoy.filters.network.http_connection_manager")
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => {
                Some(HttpConnectionManager::decode(a.value.as_slice()).expect("hcm"))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn without_final(l: &Listener) -> Listener {
    let mut l = l.clone();
    for chain in l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut())
    {
        for f in &mut chain.filters {
            if let Some(filter::ConfigType::TypedConfig(a)) = &mut f.config_type {
                if f.name == "envoy.filters.network.http_connection_manager" {
                    let mut h = HttpConnectionManager::decode(a.value.as_slice()).expect("hcm");
                    if h.http_filters
                        .iter()
                        .any(|x| x.name == names::filter::FINAL)
                    {
                        h.http_filters.retain(|x| x.name != names::filter::FINAL);
                        a.value = h.encode_to_vec();
                    }
                }
            }
        }
    }
    l
}

pub(super) fn check_listeners(
    req: &PostTranslateModifyRequest,
    resp: &PostTranslateModifyResponse,
    e: &Expect,
) {
    assert_eq!(
        resp.listeners.len(),
        req.listeners.len() + 2,
        "two listeners added: the hold and its answer"
    );
    for (a, b) in resp.listeners.iter().zip(&req.listeners) {
        if !e.listeners.contains(&b.name.as_str()) {
            assert_eq!(a, b, "listener {} must be untouched", b.name);
            continue;
        }
        let wired: Vec<_> = hcms(a)
            .into_iter()
            .filter(|h| {
                h.http_filters
                    .iter()
                    .any(|f| f.name == names::filter::FINAL)
            })
            .collect();
        assert_eq!(wired.len(), 1, "{}: one HCM wired", b.name);
        let names: Vec<&str> = wired[0]
            .http_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let at = names
            .iter()
            .position(|n| *n == names::filter::FINAL)
            .expect("final");
        assert_eq!(
            names[at + 1],
            "envoy.filters.http.router",
            "{}: final right before the router",
            b.name
        );
        assert_eq!(
            names.iter().filter(|n| **n == names::filter::FINAL).count(),
            1
        );
        check_final_filter(&wired[0].http_filters[at]);
        let routes = match &wired[0].route_specifier {
            Some(RouteSpecifier::Rds(r)) => r.route_config_name.clone(),
            _ => panic!("rds"),
        };
        assert!(req.routes.iter().any(|c| c.name == routes));
        // Decoding and re-encoding an untouched HCM is lossless, so compare whole.
        let (a_plain, b_plain) = (without_final(a), b.clone());
        assert_eq!(
            hcms(&a_plain),
            hcms(&b_plain),
            "{}: HCMs beyond the final filter",
            b.name
        );
        let strip = |l: &Listener| {
            let mut l = l.clone();
            for c in l
                .filter_chains
                .iter_mut()
                .chain(l.default_filter_chain.as_mut())
            {
                c.filters
                    .retain(|f| f.name != "envoy.filters.network.http_connection_manager");
            }
            l
        };
        assert_eq!(strip(a), strip(b), "{}: beyond its HCMs", b.name);
    }
    let n = resp.listeners.len();
    check_hold_listeners(&resp.listeners[n - 2], &resp.listeners[n - 1]);
}
