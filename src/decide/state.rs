//! What earlier attempts of one request did, carried with the request.
//!
//! Envoy asks mulligan about each attempt on its own stream, and with more
//! than one mulligan process those streams reach different processes. So
//! the state travels with the request, in Envoy's dynamic metadata
//! ([`names::state::NAMESPACE`]): every answer on an attempt's stream
//! writes the updated state back, and Envoy forwards it on the next
//! attempt's stream (`metadata_context`), whichever process that reaches.
//! Upstream filters read and write the downstream request's stream info,
//! so what one attempt's filter writes is there for the next attempt's.
//!
//! Only Envoy's filters write dynamic metadata, and the wiring lets
//! mulligan's filter accept only this namespace: neither a client nor a
//! pod can set or clear it.

use envoy_types::pb::{
    envoy::config::core::v3::Metadata,
    google::protobuf::{value::Kind, Struct, Value},
};

use crate::names::state as keys;

/// One request's attempts so far, as far as mulligan judged them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptState {
    /// An attempt may have run a request that is not safe to run twice: no
    /// later attempt may leave.
    pub may_have_run: bool,
    /// Failed attempts mulligan has judged.
    pub failures: u8,
    /// Times a hold released the request; a request that comes back to the
    /// hold waits longer before the next release.
    pub releases: u8,
}

impl AttemptState {
    /// The state Envoy forwarded with a message; the default (nothing
    /// judged yet) when there is none. A value of the wrong type reads as
    /// absent: only mulligan writes this namespace.
    pub fn read(metadata: Option<&Metadata>) -> Self {
        let Some(fields) = metadata
            .and_then(|m| m.filter_metadata.get(keys::NAMESPACE))
            .map(|s| &s.fields)
        else {
            return Self::default();
        };
        let kind = |key: &str| fields.get(key).and_then(|v| v.kind.as_ref());
        let count = |key: &str| match kind(key) {
            Some(Kind::NumberValue(n)) if n.is_finite() && *n >= 0.0 => n.min(255.0) as u8,
            _ => 0,
        };
        Self {
            may_have_run: matches!(kind(keys::MAY_HAVE_RUN), Some(Kind::BoolValue(true))),
            failures: count(keys::FAILURES),
            releases: count(keys::RELEASES),
        }
    }

    /// The state as `ProcessingResponse.dynamic_metadata`: a Struct whose
    /// one key is the namespace, which Envoy merges into the request's
    /// dynamic metadata (key by key: every key is always written).
    pub fn write(&self) -> Struct {
        let mut state = Struct::default();
        let mut put = |key: &str, kind: Kind| {
            state
                .fields
                .insert(key.to_string(), Value { kind: Some(kind) });
        };
        put(keys::MAY_HAVE_RUN, Kind::BoolValue(self.may_have_run));
        put(keys::FAILURES, Kind::NumberValue(self.failures.into()));
        put(keys::RELEASES, Kind::NumberValue(self.releases.into()));
        let mut out = Struct::default();
        out.fields.insert(
            keys::NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(state)),
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(written: Struct) -> Metadata {
        let mut m = Metadata::default();
        for (ns, v) in written.fields {
            let Some(Kind::StructValue(s)) = v.kind else {
                panic!("a namespace holds a Struct")
            };
            m.filter_metadata.insert(ns, s);
        }
        m
    }

    #[test]
    fn what_is_written_reads_back() {
        let s = AttemptState {
            may_have_run: true,
            failures: 3,
            releases: 2,
        };
        assert_eq!(AttemptState::read(Some(&metadata(s.write()))), s);
    }

    #[test]
    fn nothing_or_nonsense_reads_as_nothing_judged() {
        assert_eq!(AttemptState::read(None), AttemptState::default());
        let mut odd = Struct::default();
        for (k, kind) in [
            (keys::MAY_HAVE_RUN, Kind::StringValue("true".into())),
            (keys::FAILURES, Kind::NumberValue(f64::NAN)),
            (keys::RELEASES, Kind::NumberValue(-4.0)),
        ] {
            odd.fields.insert(k.into(), Value { kind: Some(kind) });
        }
        let mut m = Metadata::default();
        m.filter_metadata.insert(keys::NAMESPACE.into(), odd);
        assert_eq!(AttemptState::read(Some(&m)), AttemptState::default());
    }

    #[test]
    fn counts_saturate() {
        let mut s = Struct::default();
        s.fields.insert(
            keys::FAILURES.into(),
            Value {
                kind: Some(Kind::NumberValue(1e9)),
            },
        );
        let mut m = Metadata::default();
        m.filter_metadata.insert(keys::NAMESPACE.into(), s);
        assert_eq!(AttemptState::read(Some(&m)).failures, 255);
    }
}
