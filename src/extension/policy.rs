//! `MulliganPolicy` (mulligan.dev/v1alpha1): which routes get the wiring,
//! and with which settings. Envoy Gateway hands it to the hooks as the JSON
//! of an `unstructured.Unstructured` (`extensionManager.policyResources`).
//!
//! Parsing never fails the hook: an object of another kind is not ours and
//! is ignored; one of ours that does not validate is reported (log and
//! metric) and the routes it targets are left as Envoy Gateway made them.

use std::time::Duration;

use serde::Deserialize;

pub const API_VERSION: &str = "mulligan.dev/v1alpha1";
pub const KIND: &str = "MulliganPolicy";
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// The kinds a policy may target.
pub const TARGET_KINDS: [&str; 3] = ["Gateway", "HTTPRoute", "GRPCRoute"];
/// The route kinds among them: Envoy Gateway hands their policies to
/// PostRouteModify.
pub const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];
pub const DEFAULT_NUM_RETRIES: u32 = 10;
pub const MAX_NUM_RETRIES: u32 = 20;
/// The hold budget when a policy names none: the same as mulligan's own
/// `hold.max_hold` default, and the reference bootstrap's `${MAX_HOLD}`.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(10);
/// A longer hold outlasts any sensible route timeout.
pub const MAX_MAX_HOLD: Duration = Duration::from_secs(60);
/// A shorter hold cannot wait for anything: mulligan keeps
/// [`ANSWER_MARGIN`] of the budget to answer in, and a pod that becomes
/// ready is noticed within a probe interval (100 ms) plus a settle time.
pub const MIN_MAX_HOLD: Duration = Duration::from_secs(1);
/// The part of the hold budget mulligan keeps to send its answer in: it
/// holds at most the budget less this, and asks Envoy to wait the budget.
pub const ANSWER_MARGIN: Duration = crate::config::Hold::ANSWER_MARGIN;

/// What the wiring of one route is tuned by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Route `num_retries`: attempts Envoy may add, each one asked for by
    /// mulligan (or a connect failure).
    pub num_retries: u32,
    /// The hold budget: how long a failed attempt's answer may wait for an
    /// endpoint that can serve. Envoy's `max_message_timeout` on
    /// `mulligan.attempt`, and told to mulligan with each stream
    /// (`x-mulligan-max-hold`), which holds at most this less
    /// [`ANSWER_MARGIN`].
    pub max_hold: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            num_retries: DEFAULT_NUM_RETRIES,
            max_hold: DEFAULT_MAX_HOLD,
        }
    }
}

/// `decide`: Envoy makes every attempt and mulligan decides on failed ones.
/// `off`: no wiring, also where a broader policy (a Gateway's) would apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Decide,
    Off,
}

/// What a policy attaches to: a Gateway API Gateway (`sectionName`: one
/// listener), HTTPRoute or GRPCRoute (`sectionName`: one named rule).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}

/// A valid MulliganPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub target_refs: Vec<TargetRef>,
    pub mode: Mode,
    pub settings: Settings,
}

impl Policy {
    /// `namespace/name`, as logs and route markers show it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One extension resource, read.
#[derive(Debug)]
pub enum Parsed {
    /// Another kind (another extension's, or garbage we cannot tell apart).
    NotOurs,
    /// Ours, but unusable: `targets` are the refs we could still read.
    Invalid {
        id: String,
        targets: Vec<TargetRef>,
        reason: String,
    },
    Valid(Policy),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    target_refs: Vec<TargetRef>,
    #[serde(default = "decide")]
    mode: Mode,
    #[serde(default)]
    budget: Budget,
}

fn decide() -> Mode {
    Mode::Decide
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Budget {
    num_retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    max_hold: Option<Duration>,
}

/// Reads one `ExtensionResource`'s bytes.
pub fn parse(bytes: &[u8]) -> Parsed {
    let Ok(object) = serde_json::from_slice::<Object>(bytes) else {
        return Parsed::NotOurs;
    };
    if object.api_version.as_deref() != Some(API_VERSION) || object.kind.as_deref() != Some(KIND) {
        return Parsed::NotOurs;
    }
    let id = format!("{}/{}", object.metadata.namespace, object.metadata.name);
    let invalid = |reason: String| Parsed::Invalid {
        id: id.clone(),
        targets: lenient_targets(&object.spec),
        reason,
    };
    let spec: Spec = match serde_json::from_value(object.spec.clone()) {
        Ok(spec) => spec,
        Err(e) => return invalid(format!("spec: {e}")),
    };
    if let Err(reason) = validate(&spec) {
        return invalid(reason);
    }
    Parsed::Valid(Policy {
        namespace: object.metadata.namespace,
        name: object.metadata.name,
        target_refs: spec.target_refs,
        mode: spec.mode,
        settings: Settings {
            num_retries: spec.budget.num_retries.unwrap_or(DEFAULT_NUM_RETRIES),
            max_hold: spec.budget.max_hold.unwrap_or(DEFAULT_MAX_HOLD),
        },
    })
}

fn lenient_targets(spec: &serde_json::Value) -> Vec<TargetRef> {
    spec.get("targetRefs")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default()
}

fn validate(spec: &Spec) -> Result<(), String> {
    if spec.target_refs.is_empty() {
        return Err("spec.targetRefs is empty".into());
    }
    for t in &spec.target_refs {
        if t.group != GATEWAY_API_GROUP || !TARGET_KINDS.contains(&t.kind.as_str()) {
            return Err(format!(
                "spec.targetRefs: {}/{} {} is not a Gateway, HTTPRoute or GRPCRoute of {GATEWAY_API_GROUP}",
                t.group, t.kind, t.name
            ));
        }
    }
    if let Some(n) = spec.budget.num_retries {
        if !(1..=MAX_NUM_RETRIES).contains(&n) {
            return Err(format!(
                "spec.budget.numRetries {n} is outside 1..={MAX_NUM_RETRIES}"
            ));
        }
    }
    if let Some(d) = spec.budget.max_hold {
        check_max_hold(d).map_err(|why| format!("spec.budget.maxHold {d:?}: {why}"))?;
    }
    Ok(())
}

/// Why a hold budget cannot work, if it cannot.
pub fn check_max_hold(d: Duration) -> Result<(), String> {
    if d < MIN_MAX_HOLD {
        return Err(format!(
            "under {MIN_MAX_HOLD:?}: mulligan keeps {ANSWER_MARGIN:?} of it to answer in, \
             and what is left could not wait for a pod to become ready"
        ));
    }
    if d > MAX_MAX_HOLD {
        return Err(format!(
            "over {MAX_MAX_HOLD:?}: a held request would outlast any sensible route timeout"
        ));
    }
    if d.subsec_millis() as u128 * 1_000_000 != d.subsec_nanos() as u128 {
        return Err("finer than a millisecond: Envoy's timeouts count milliseconds".into());
    }
    Ok(())
}

/// Whether `target` selects what Envoy Gateway's metadata names as `kind`
/// `namespace/name` (section `section`). Direct targetRefs resolve in the
/// policy's own namespace.
pub fn selects(
    policy_ns: &str,
    target: &TargetRef,
    kind: &str,
    ns: &str,
    name: &str,
    section: Option<&str>,
) -> bool {
    target.kind == kind
        && target.name == name
        && policy_ns == ns
        && match target.section_name.as_deref() {
            None => true,
            Some(wanted) => section == Some(wanted),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_max_hold(value: &str) -> Parsed {
        let object = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"namespace": "default", "name": "p"},
            "spec": {
                "targetRefs": [{"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": "eg"}],
                "budget": {"maxHold": value},
            },
        });
        parse(object.to_string().as_bytes())
    }

    #[test]
    fn a_hold_budget_that_can_work_is_the_routes_budget() {
        for (value, want) in [
            ("3s", Duration::from_secs(3)),
            ("1s", MIN_MAX_HOLD),
            ("1m", MAX_MAX_HOLD),
        ] {
            match with_max_hold(value) {
                Parsed::Valid(p) => assert_eq!(p.settings.max_hold, want, "{value}"),
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_hold_budget_that_cannot_work_is_refused_with_the_reason() {
        for (value, why) in [
            ("500ms", "to answer in"),
            ("61s", "route timeout"),
            ("2s 1us", "millisecond"),
        ] {
            match with_max_hold(value) {
                Parsed::Invalid { reason, .. } => {
                    assert!(reason.starts_with("spec.budget.maxHold"), "{reason}");
                    assert!(reason.contains(why), "{value}: {reason}");
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }
}
