//! Which routes get the wiring, with which settings: the policies Envoy
//! Gateway delivered, matched against the metadata it writes on every route
//! and virtual host (`filter_metadata["envoy-gateway"].resources`).
//!
//! Precedence, most specific first: a route marker left by PostRouteModify
//! (an HTTPRoute or GRPCRoute policy: one on the route's rule, by
//! `sectionName`, before one on the whole route), a route policy in the
//! PostTranslate context (the same order), a Gateway policy on the route's
//! listener (`sectionName`), then one on the whole Gateway. Among several
//! policies at one level the first by `namespace/name` wins, so the choice
//! does not depend on delivery order. An invalid policy at the deciding
//! level leaves the route untouched.
//!
//! Envoy Gateway names a route's rule in the route's metadata
//! (`sectionName`) only when the rule has a name; a policy on a rule
//! selects only the routes built from that rule.

use envoy_types::pb::{
    envoy::config::core::v3::Metadata,
    google::protobuf::{value::Kind, Struct, Value},
};

use super::policy::{self, Mode, Parsed, Policy, Settings};

/// `filter_metadata` key of the marker PostRouteModify leaves on a route.
pub const MARKER_KEY: &str = "mulligan.dev";
const EG_KEY: &str = "envoy-gateway";

/// One object Envoy Gateway names in its metadata.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EgResource {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub section: Option<String>,
}

/// What one route gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// No policy applies (or `mode: off`): leave the route as it is.
    Untouched,
    /// A policy applies but is invalid: leave it, it was reported.
    Invalid,
    Wire(Settings),
}

/// The policies of one hook call, read once.
#[derive(Debug, Default)]
pub struct Policies {
    valid: Vec<Policy>,
    /// `namespace/name` and what the invalid ones still target.
    invalid: Vec<(String, Vec<policy::TargetRef>)>,
}

impl Policies {
    /// Reads the resources, reporting each invalid policy through `report`.
    pub fn read<'a>(
        resources: impl IntoIterator<Item = &'a [u8]>,
        report: &mut dyn FnMut(&str, &str),
    ) -> Self {
        let mut this = Self::default();
        for bytes in resources {
            match policy::parse(bytes) {
                Parsed::NotOurs => {}
                Parsed::Invalid {
                    id,
                    targets,
                    reason,
                } => {
                    report(&id, &reason);
                    this.invalid.push((id, targets));
                }
                Parsed::Valid(p) => this.valid.push(p),
            }
        }
        this.valid.sort_by_key(Policy::id);
        this
    }

    /// Whether no policy of ours arrived at all.
    pub fn is_empty(&self) -> bool {
        self.valid.is_empty() && self.invalid.is_empty()
    }

    /// For PostRouteModify, where every delivered policy targets the route
    /// or its rule: one on the rule (`sectionName`, read from the route's
    /// metadata) wins over one on the whole route. Without Envoy Gateway's
    /// metadata to tell them apart, the first of all.
    pub fn for_route(&self, route_meta: Option<&Metadata>) -> Option<Result<&Policy, ()>> {
        let resources = eg_resources(route_meta);
        for sectioned in [true, false] {
            for kind in policy::ROUTE_KINDS {
                if let Some(found) = self.find(kind, sectioned, &resources) {
                    return Some(found);
                }
            }
        }
        if !self.invalid.is_empty() {
            return Some(Err(()));
        }
        self.valid.first().map(Ok)
    }

    /// The choice at one level: policies whose targets select `resources`,
    /// with a `sectionName` (`sectioned`) or without.
    fn choose(&self, kind: &str, sectioned: bool, resources: &[EgResource]) -> Option<Choice> {
        let policy = self.find(kind, sectioned, resources)?;
        Some(match policy {
            Ok(p) => decided(p.mode, p.settings),
            Err(()) => Choice::Invalid,
        })
    }

    /// The policy deciding at one level (`Err` when an invalid one targets
    /// it), if any targets it.
    fn find(
        &self,
        kind: &str,
        sectioned: bool,
        resources: &[EgResource],
    ) -> Option<Result<&Policy, ()>> {
        let hit = |ns: &str, t: &policy::TargetRef| {
            t.section_name.is_some() == sectioned
                && resources.iter().any(|r| {
                    r.kind == kind
                        && policy::selects(ns, t, kind, &r.namespace, &r.name, r.section.as_deref())
                })
        };
        let invalid = self.invalid.iter().any(|(id, targets)| {
            let ns = id.split('/').next().unwrap_or_default();
            targets.iter().any(|t| hit(ns, t))
        });
        if invalid {
            return Some(Err(()));
        }
        self.valid
            .iter()
            .find(|p| p.target_refs.iter().any(|t| hit(&p.namespace, t)))
            .map(Ok)
    }
}

fn decided(mode: Mode, settings: Settings) -> Choice {
    match mode {
        Mode::Decide => Choice::Wire(settings),
        Mode::Off => Choice::Untouched,
    }
}

/// The choice for one route of one virtual host in PostTranslateModify.
pub fn choose(
    policies: &Policies,
    route_meta: Option<&Metadata>,
    vhost_meta: Option<&Metadata>,
) -> Choice {
    if let Some((mode, settings)) = route_meta.and_then(read_marker) {
        return decided(mode, settings);
    }
    if policies.is_empty() {
        return Choice::Untouched;
    }
    let route = eg_resources(route_meta);
    let vhost = eg_resources(vhost_meta);
    let levels = [
        ("HTTPRoute", true, &route),
        ("GRPCRoute", true, &route),
        ("HTTPRoute", false, &route),
        ("GRPCRoute", false, &route),
        ("Gateway", true, &vhost),
        ("Gateway", false, &vhost),
    ];
    let choice = levels
        .into_iter()
        .find_map(|(kind, sectioned, resources)| policies.choose(kind, sectioned, resources));
    choice.unwrap_or(Choice::Untouched)
}

fn string_field(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v.clone()),
        _ => None,
    }
}

fn number_field(s: &Struct, key: &str) -> Option<f64> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::NumberValue(v) => Some(*v),
        _ => None,
    }
}

/// `filter_metadata["envoy-gateway"].resources`, as far as it reads.
pub fn eg_resources(meta: Option<&Metadata>) -> Vec<EgResource> {
    let Some(list) = meta
        .and_then(|m| m.filter_metadata.get(EG_KEY))
        .and_then(|s| s.fields.get("resources"))
        .and_then(|v| match v.kind.as_ref() {
            Some(Kind::ListValue(l)) => Some(l),
            _ => None,
        })
    else {
        return Vec::new();
    };
    list.values
        .iter()
        .filter_map(|v| match v.kind.as_ref() {
            Some(Kind::StructValue(s)) => Some(EgResource {
                kind: string_field(s, "kind")?,
                name: string_field(s, "name")?,
                namespace: string_field(s, "namespace").unwrap_or_default(),
                section: string_field(s, "sectionName"),
            }),
            _ => None,
        })
        .collect()
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

/// Leaves the decision of an HTTPRoute policy on the route, for
/// PostTranslateModify (which is not told about HTTPRoute policies).
pub fn write_marker(meta: &mut Metadata, policy: &Policy) {
    let mode = match policy.mode {
        Mode::Decide => "decide",
        Mode::Off => "off",
    };
    let fields = [
        ("policy", value(Kind::StringValue(policy.id()))),
        ("mode", value(Kind::StringValue(mode.to_string()))),
        (
            "numRetries",
            value(Kind::NumberValue(policy.settings.num_retries.into())),
        ),
        (
            "maxHoldMs",
            value(Kind::NumberValue(
                policy.settings.max_hold.as_millis() as f64
            )),
        ),
    ];
    let marker = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    meta.filter_metadata.insert(MARKER_KEY.to_string(), marker);
}

/// The marker, if present and readable (it is ours, so it always is unless
/// someone edited the route in between).
pub fn read_marker(meta: &Metadata) -> Option<(Mode, Settings)> {
    let s = meta.filter_metadata.get(MARKER_KEY)?;
    let mode = match string_field(s, "mode")?.as_str() {
        "decide" => Mode::Decide,
        "off" => Mode::Off,
        _ => return None,
    };
    let num_retries = number_field(s, "numRetries")?;
    let max_hold_ms = number_field(s, "maxHoldMs")?;
    let settings = Settings {
        num_retries: (num_retries as u32).clamp(1, policy::MAX_NUM_RETRIES),
        max_hold: std::time::Duration::from_millis(max_hold_ms as u64)
            .clamp(std::time::Duration::from_millis(1), policy::MAX_MAX_HOLD),
    };
    Some((mode, settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extension::policy::{Mode, Policy, Settings};

    #[test]
    fn the_route_marker_reads_back_what_was_written() {
        let policy = Policy {
            namespace: "default".into(),
            name: "p".into(),
            target_refs: Vec::new(),
            mode: Mode::Decide,
            settings: Settings {
                num_retries: 3,
                max_hold: std::time::Duration::from_millis(2500),
            },
        };
        let mut meta = Metadata::default();
        write_marker(&mut meta, &policy);
        assert_eq!(read_marker(&meta), Some((Mode::Decide, policy.settings)));
        assert_eq!(
            choose(&Policies::default(), Some(&meta), None),
            Choice::Wire(policy.settings)
        );
    }
}
