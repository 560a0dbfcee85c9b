//! The hold budget a stream carries (`x-mulligan-max-hold`): the wiring
//! gives mulligan the same value it gives Envoy as `max_message_timeout`,
//! so mulligan never asks Envoy to wait longer than Envoy grants.

use std::time::Duration;

/// Longer budgets are read as this: no hold lasts an hour.
const CEILING: Duration = Duration::from_secs(3600);

/// A duration as the proto JSON mapping writes one (`10s`, `2.5s`,
/// `0.200s`: seconds, an optional fraction of up to nine digits, `s`).
/// `None` for anything else, or zero: such a stream is held by the
/// config's `max_hold`, as one without the metadata.
pub(crate) fn parse(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('s')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (secs, nanos) = match text.split_once('.') {
        None => (text, 0),
        Some((secs, fraction)) if digits(fraction) && fraction.len() <= 9 => {
            (secs, format!("{fraction:0<9}").parse().ok()?)
        }
        Some(_) => return None,
    };
    if !digits(secs) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let d = Duration::new(secs.min(CEILING.as_secs()), nanos).min(CEILING);
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_wiring_writes() {
        assert_eq!(parse(b"10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse(b"2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse(b"0.200s"), Some(Duration::from_millis(200)));
        assert_eq!(parse(b"1.000000001s"), Some(Duration::new(1, 1)));
        assert_eq!(parse(b"99999999999999999999s"), None);
        assert_eq!(parse(b"86400s"), Some(CEILING));
    }

    #[test]
    fn anything_else_is_no_budget() {
        for bad in [
            &b""[..],
            b"s",
            b"10",
            b"10ms",
            b"-1s",
            b"1.s",
            b".5s",
            b"0s",
            b"1.0000000001s",
            b"1e3s",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
