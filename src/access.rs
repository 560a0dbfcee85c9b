//! Who may change mulligan's state. The lifecycle calls (drain, ready) on
//! the admin port and in `mulligan.v1.Lifecycle` are refused unless the
//! caller is on loopback (when trusted) or presents the configured bearer
//! token; reads are open unless configured otherwise. Health endpoints are
//! always open: the kubelet probes them.

use std::net::{IpAddr, SocketAddr};

use crate::config;

/// The admin access policy, with its token loaded.
#[derive(Clone, Debug, Default)]
pub struct Access {
    token: Option<String>,
    trust_loopback: bool,
    open_reads: bool,
}

/// A caller as far as access is concerned.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub peer: Option<SocketAddr>,
    /// The `Authorization` header (or gRPC metadata) value.
    pub authorization: Option<&'a [u8]>,
}

impl Access {
    /// Reads the token file, if one is configured.
    pub(crate) fn load(cfg: &config::Admin) -> anyhow::Result<Self> {
        let token = if cfg.token_file.is_empty() {
            None
        } else {
            let t = std::fs::read_to_string(&cfg.token_file)
                .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", cfg.token_file))?;
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "admin.token_file {} is empty",
                cfg.token_file
            );
            Some(t)
        };
        Ok(Self {
            token,
            trust_loopback: cfg.trust_loopback,
            open_reads: cfg.open_reads,
        })
    }

    /// May this caller change endpoint states?
    pub(crate) fn may_write(&self, caller: Caller<'_>) -> bool {
        (self.trust_loopback && caller.peer.is_some_and(|p| is_loopback(p.ip())))
            || self.token_matches(caller.authorization)
    }

    /// May this caller read the endpoint list and metrics?
    pub(crate) fn may_read(&self, caller: Caller<'_>) -> bool {
        self.open_reads || self.may_write(caller)
    }

    fn token_matches(&self, authorization: Option<&[u8]>) -> bool {
        let (Some(token), Some(given)) = (&self.token, authorization) else {
            return false;
        };
        let Some(given) = given.strip_prefix(b"Bearer ") else {
            return false;
        };
        constant_time_eq(given, token.as_bytes())
    }
}

/// Loopback, including an IPv4 loopback address seen through a dual-stack
/// socket as `::ffff:127.x.y.z` (std's `is_loopback` says no to those).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>, trust_loopback: bool, open_reads: bool) -> Access {
        Access {
            token: token.map(str::to_string),
            trust_loopback,
            open_reads,
        }
    }

    fn caller(peer: &str, auth: Option<&'static str>) -> Caller<'static> {
        Caller {
            peer: Some(peer.parse().unwrap()),
            authorization: auth.map(str::as_bytes),
        }
    }

    #[test]
    fn loopback_or_token() {
        let a = access(Some("s3cret"), true, true);
        assert!(a.may_write(caller("127.0.0.1:5", None)));
        assert!(a.may_write(caller("[::1]:5", None)));
        assert!(!a.may_write(caller("10.0.0.9:5", None)));
        assert!(!a.may_write(caller("10.0.0.9:5", Some("Bearer wrong!"))));
        assert!(!a.may_write(caller("10.0.0.9:5", Some("s3cret"))));
        assert!(a.may_write(caller("10.0.0.9:5", Some("Bearer s3cret"))));
        let strict = access(Some("s3cret"), false, false);
        assert!(!strict.may_write(caller("127.0.0.1:5", None)));
        assert!(!strict.may_read(caller("127.0.0.1:5", None)));
        assert!(strict.may_read(caller("127.0.0.1:5", Some("Bearer s3cret"))));
        // No token configured: nothing remote may write.
        assert!(!access(None, true, true).may_write(caller("10.0.0.9:5", Some("Bearer "))));
    }

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        let a = access(None, true, true);
        // A dual-stack listener ([::]:PORT) reports IPv4 peers this way.
        assert!(a.may_write(caller("[::ffff:127.0.0.1]:5", None)));
        assert!(a.may_write(caller("[::ffff:127.9.8.7]:5", None)));
        assert!(!a.may_write(caller("[::ffff:10.0.0.9]:5", None)));
        assert!(!access(None, false, true).may_write(caller("[::ffff:127.0.0.1]:5", None)));
    }
}
