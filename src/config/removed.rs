//! Keys of settings mulligan does not have, each with where the setting
//! lives or why there is none. Refused with a message of its own, not
//! serde's "unknown field": a file that sets one learns which key to use
//! instead, or why Envoy owns that choice.

use toml::de::{DeTable, DeValue};

/// Where a key's setting lives.
enum Fate {
    /// The same setting, under this key.
    Moved(&'static str),
    /// No counterpart; why not.
    Gone(&'static str),
}

/// mulligan sends no request itself: Envoy makes every attempt, so nothing
/// about sending, timing or buffering a re-sent request is mulligan's.
const ENVOY_ATTEMPTS: &str = "mulligan sends no request itself: Envoy makes every attempt \
     (the route's retry policy sets their number, timeout and backoff; Envoy buffers the body)";

/// Envoy picks the endpoint of every attempt.
const ENVOY_PICKS: &str =
    "mulligan lists no endpoints for Envoy: Envoy picks the endpoint of every attempt";

/// Refused keys by section, then key (`*`: every key of the section).
const REMOVED: &[(&str, &str, Fate)] = &[
    ("rescue", "enabled", Fate::Moved("retry.enabled")),
    ("rescue", "drain_header", Fate::Moved("retry.drain_header")),
    (
        "rescue",
        "retry_plain_503",
        Fate::Moved("retry.retry_plain_503"),
    ),
    (
        "rescue",
        "retry_after_seconds",
        Fate::Moved("retry.retry_after_seconds"),
    ),
    ("rescue", "deadline", Fate::Moved("hold.max_hold")),
    ("rescue", "max_held", Fate::Moved("hold.max_held")),
    ("rescue", "*", Fate::Gone(ENVOY_ATTEMPTS)),
    ("steer", "*", Fate::Gone(ENVOY_PICKS)),
    ("limits", "max_buffered_bytes", Fate::Gone(ENVOY_ATTEMPTS)),
];

/// The first refused key `text` sets: its path, the byte offset of the key,
/// and what to tell the user.
pub(super) fn find(text: &str) -> Option<(String, usize, String)> {
    let doc = DeTable::parse(text).ok()?;
    for (section, value) in doc.get_ref() {
        let section_name = section.get_ref().as_ref();
        let DeValue::Table(keys) = value.get_ref() else {
            continue;
        };
        let mut entries: Vec<_> = keys.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, _) in entries {
            let key_name = key.get_ref().as_ref();
            let Some(fate) = fate(section_name, key_name) else {
                continue;
            };
            let path = format!("{section_name}.{key_name}");
            let message = match fate {
                Fate::Moved(to) => format!("{path}: use {to}"),
                Fate::Gone(why) => format!("{path} is not a setting: {why}"),
            };
            return Some((path, key.span().start, message));
        }
        if keys.is_empty() {
            if let Some(Fate::Gone(why)) = fate(section_name, "*") {
                let message = format!("[{section_name}] is not a section: {why}");
                return Some((section_name.to_string(), section.span().start, message));
            }
        }
    }
    None
}

fn fate(section: &str, key: &str) -> Option<&'static Fate> {
    REMOVED
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .or_else(|| REMOVED.iter().find(|(s, k, _)| *s == section && *k == "*"))
        .map(|(_, _, fate)| fate)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn refused(text: &str) -> String {
        Config::parse("m.toml", text)
            .expect_err("the key must be refused")
            .to_string()
    }

    #[test]
    fn a_moved_key_names_the_key_that_replaced_it() {
        let cases = [
            (
                "[rescue]\ndeadline = \"5s\"\n",
                "m.toml:2:1: rescue.deadline: use hold.max_hold",
            ),
            (
                "[rescue]\nmax_held = 3\n",
                "m.toml:2:1: rescue.max_held: use hold.max_held",
            ),
            (
                "[rescue]\nenabled = false\n",
                "m.toml:2:1: rescue.enabled: use retry.enabled",
            ),
            (
                "[rescue]\ndrain_header = \"x-d\"\n",
                "m.toml:2:1: rescue.drain_header: use retry.drain_header",
            ),
            (
                "[rescue]\nretry_plain_503 = true\n",
                "m.toml:2:1: rescue.retry_plain_503: use retry.retry_plain_503",
            ),
            (
                "[listen]\n[rescue]\nretry_after_seconds = 2\n",
                "m.toml:3:1: rescue.retry_after_seconds: use retry.retry_after_seconds",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(refused(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_key_with_no_counterpart_says_why() {
        for key in [
            "replay = true",
            "max_attempts = 3",
            "per_try_timeout = \"1s\"",
            "backoff_base = \"1ms\"",
            "backoff_max = \"1s\"",
            "max_request_body_bytes = 1",
            "max_response_body_bytes = 1",
            "replay_http2 = true",
        ] {
            let err = refused(&format!("[rescue]\n{key}\n"));
            assert!(err.contains("is not a setting"), "{err}");
            assert!(err.contains("Envoy makes every attempt"), "{err}");
        }
        let err = refused("[steer]\nenabled = true\n");
        assert!(
            err.starts_with("m.toml:2:1: steer.enabled is not a setting: "),
            "{err}"
        );
        let err = refused("[steer]\n");
        assert!(
            err.starts_with("m.toml:1:2: [steer] is not a section"),
            "{err}"
        );
        let err = refused("[limits]\nmax_buffered_bytes = 1000\n");
        assert!(
            err.contains("limits.max_buffered_bytes is not a setting"),
            "{err}"
        );
    }
}
