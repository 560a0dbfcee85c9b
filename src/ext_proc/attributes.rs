//! The attributes Envoy attaches to a phase (`request_attributes`,
//! `response_attributes` in the filter config), read without copying.
//!
//! They arrive as a `google.protobuf.Struct` under the filter's name, keyed by
//! the attribute's full dotted name; numbers arrive as doubles.

use envoy_types::pb::{
    envoy::config::core::v3::HeaderMap,
    google::protobuf::{value::Kind, Struct},
};

/// The key Envoy files its attributes under.
pub const FILTER_KEY: &str = "envoy.filters.http.ext_proc";

/// A borrowed view of one message's attributes; empty when it has none.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a>(Option<&'a Struct>);

impl<'a> Attributes<'a> {
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn of(
        request: &'a envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest,
    ) -> Self {
        Self(request.attributes.get(FILTER_KEY))
    }

    /// A view of attributes already taken out of their message.
    pub(crate) fn from_struct(attributes: Option<&'a Struct>) -> Self {
        Self(attributes)
    }

    fn kind(&self, key: &str) -> Option<&'a Kind> {
        self.0?.fields.get(key)?.kind.as_ref()
    }

    /// A string attribute; `None` when absent or of another type.
    pub(crate) fn str(&self, key: &str) -> Option<&'a str> {
        match self.kind(key)? {
            Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// A numeric attribute; strings holding a number are accepted too, since
    /// some Envoy attributes change representation between versions.
    pub(crate) fn number(&self, key: &str) -> Option<f64> {
        match self.kind(key)? {
            Kind::NumberValue(n) if n.is_finite() => Some(*n),
            Kind::StringValue(s) => s.parse().ok().filter(|n: &f64| n.is_finite()),
            _ => None,
        }
    }

    /// The response status: Envoy's `response.code`, else the `:status`
    /// header; 0 when neither is a valid HTTP status. A code past u16 is no
    /// HTTP status (a plain cast would wrap 66039 to 503).
    pub(crate) fn status(&self, headers: Option<&HeaderMap>) -> u16 {
        self.uint(crate::names::attribute::RESPONSE_CODE)
            .or_else(|| {
                super::header_value(headers, ":status")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            })
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0)
    }

    /// A non-negative integer attribute (status codes, flags, counts).
    pub(crate) fn uint(&self, key: &str) -> Option<u64> {
        self.number(key)
            .filter(|n| *n >= 0.0 && *n <= u64::MAX as f64 && n.fract() == 0.0)
            .map(|n| n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::{
        envoy::service::ext_proc::v3::ProcessingRequest, google::protobuf::Value,
    };

    fn request(fields: Vec<(&str, Kind)>) -> ProcessingRequest {
        let mut s = Struct::default();
        for (k, v) in fields {
            s.fields.insert(k.to_string(), Value { kind: Some(v) });
        }
        let mut r = ProcessingRequest::default();
        r.attributes.insert(FILTER_KEY.to_string(), s);
        r
    }

    #[test]
    fn reads_strings_and_doubles() {
        let r = request(vec![
            ("response.code", Kind::NumberValue(503.0)),
            (
                "upstream.address",
                Kind::StringValue("127.0.0.1:8080".into()),
            ),
            ("response.flags", Kind::StringValue("32".into())),
        ]);
        let a = Attributes::of(&r);
        assert_eq!(a.uint("response.code"), Some(503));
        assert_eq!(a.str("upstream.address"), Some("127.0.0.1:8080"));
        assert_eq!(a.uint("response.flags"), Some(32));
    }

    #[test]
    fn wrong_types_and_absence_are_none() {
        let r = request(vec![
            ("response.code", Kind::BoolValue(true)),
            ("response.flags", Kind::NumberValue(-1.0)),
            ("x", Kind::NumberValue(f64::NAN)),
        ]);
        let a = Attributes::of(&r);
        assert_eq!(a.uint("response.code"), None);
        assert_eq!(a.uint("response.flags"), None);
        assert_eq!(a.number("x"), None);
        assert_eq!(a.str("missing"), None);
        assert_eq!(Attributes::of(&ProcessingRequest::default()).str("y"), None);
    }
}
