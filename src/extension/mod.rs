//! mulligan as an Envoy Gateway Extension Server: Envoy Gateway calls these
//! hooks on every xDS translation, and mulligan installs its wiring into
//! the routes its `MulliganPolicy` selects.
//!
//! - [`api`]: the hook messages and service (`envoygateway.extension`);
//! - [`policy`]: the `MulliganPolicy` resource, parsed and validated;
//! - [`select`]: which routes a policy selects, with which settings;
//! - [`wiring`]: the wiring itself, as pure xDS transforms, one file per
//!   part (the names it shares with Envoy are in [`crate::names`]);
//! - [`hooks`]: what each hook does, without gRPC;
//! - [`server`]: the gRPC server and the `extension-server` subcommand.
//!
//! The hooks never fail on input they do not care about: with Envoy
//! Gateway's `failOpen: false`, an error would freeze the gateway's xDS.

pub mod api;
pub mod hooks;
pub mod patch_policy;
pub mod policy;
pub mod select;
pub mod server;
pub mod wiring;

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};

/// The extension server's own Prometheus series.
#[derive(Clone)]
pub struct ExtensionMetrics {
    invalid_policies: Counter,
    wiring_errors: Counter,
    routes_wired: Gauge,
    routes_ungated: Gauge,
}

impl ExtensionMetrics {
    pub fn new() -> Self {
        crate::metrics::prometheus();
        describe_counter!(
            "mulligan_extension_invalid_policies_total",
            "MulliganPolicies that did not validate; their routes were left as Envoy Gateway made them"
        );
        describe_counter!(
            "mulligan_extension_wiring_errors_total",
            "Clusters that could not be wired (left as Envoy Gateway made them)"
        );
        describe_counter!("mulligan_extension_hooks_total", "Hook calls, by hook");
        describe_gauge!(
            "mulligan_extension_routes_wired",
            "Routes wired by the last PostTranslateModify"
        );
        describe_gauge!(
            "mulligan_extension_routes_ungated",
            "Routes wired by the last PostTranslateModify without the retry gate: their virtual host also has unwired routes"
        );
        Self {
            invalid_policies: counter!("mulligan_extension_invalid_policies_total"),
            wiring_errors: counter!("mulligan_extension_wiring_errors_total"),
            routes_wired: gauge!("mulligan_extension_routes_wired"),
            routes_ungated: gauge!("mulligan_extension_routes_ungated"),
        }
    }

    pub fn invalid_policy(&self) {
        self.invalid_policies.increment(1);
    }

    pub fn wiring_error(&self) {
        self.wiring_errors.increment(1);
    }

    pub fn routes_wired(&self, n: usize) {
        self.routes_wired.set(n as f64);
    }

    pub fn routes_ungated(&self, n: usize) {
        self.routes_ungated.set(n as f64);
    }

    pub fn hook(hook: &'static str) {
        counter!("mulligan_extension_hooks_total", "hook" => hook).increment(1);
    }
}

impl Default for ExtensionMetrics {
    fn default() -> Self {
        Self::new()
    }
}
