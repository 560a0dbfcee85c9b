//! Header access on Envoy's `HeaderMap`.
//!
//! Envoy sends values in `raw_value` (bytes, possibly not UTF-8) and leaves
//! `value` empty; older configs may do the reverse. Both are read, nothing
//! is copied, and names compare case-insensitively (HTTP/2 lowercases them,
//! but a hand-made client may not).

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

/// The first value of `name`, as bytes.
pub(crate) fn header_value<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a [u8]> {
    find(&headers?.headers, name)
}

/// The first value of `name` in a list of headers, as bytes.
pub(crate) fn find<'a>(headers: &'a [HeaderValue], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                h.raw_value.as_slice()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;

    #[test]
    fn prefers_raw_value_and_ignores_case() {
        let map = HeaderMap {
            headers: vec![
                HeaderValue {
                    key: ":status".into(),
                    value: String::new(),
                    raw_value: b"503".to_vec(),
                },
                HeaderValue {
                    key: "Connection".into(),
                    value: "close".into(),
                    raw_value: Vec::new(),
                },
            ],
        };
        assert_eq!(header_value(Some(&map), ":status"), Some(&b"503"[..]));
        assert_eq!(header_value(Some(&map), "connection"), Some(&b"close"[..]));
        assert_eq!(header_value(Some(&map), "x"), None);
        assert_eq!(header_value(None, "x"), None);
    }
}
