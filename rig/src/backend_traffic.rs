//! What Envoy Gateway's BackendTrafficPolicy `retry` puts on a route, taken
//! from its own translator's output (`xds/retry.routes.yaml` in the
//! fixtures), so a test puts the very policy a user's BackendTrafficPolicy
//! would on the route a mulligan wiring then takes over.

use serde_json::Value;

/// The route in the fixture whose retry policy is a BackendTrafficPolicy
/// `retry` with its defaults and a 503 trigger: `retryOn` with
/// `retriable-status-codes`, `retriableStatusCodes: [503]`, two retries,
/// `previous_hosts`.
const RETRY_ON_503: &str = "second-route-defaults";

/// That route's `retryPolicy`, as Envoy Gateway wrote it (proto JSON,
/// camelCase).
pub fn retry_on_503() -> Value {
    let path = crate::envoy_gateway_fixtures().join("xds/retry.routes.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let configs: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let routes = configs
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["virtualHosts"].as_array().into_iter().flatten())
        .flat_map(|v| v["routes"].as_array().into_iter().flatten());
    let policy = routes
        .filter(|r| r["name"] == RETRY_ON_503)
        .map(|r| r["route"]["retryPolicy"].clone())
        .next()
        .unwrap_or_else(|| panic!("no route {RETRY_ON_503} in {}", path.display()));
    let codes = &policy["retriableStatusCodes"];
    let on = policy["retryOn"].as_str().unwrap_or_default();
    assert!(
        codes
            .as_array()
            .is_some_and(|c| c.contains(&Value::from(503)))
            && on.split(',').any(|t| t == "retriable-status-codes"),
        "{RETRY_ON_503} no longer retries 503s: {policy}"
    );
    policy
}
