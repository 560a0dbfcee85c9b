//! Picks the endpoint for a replay: among the usable endpoints of the
//! cluster (ready, not penalised, not already tried), the less loaded of two
//! chosen at random ("power of two choices"): nearly as good as least-loaded
//! over all, without scanning or coordinating.

use std::{net::SocketAddr, sync::Arc};

use super::{registry::Cluster, Endpoint};

pub fn pick(cluster: &Cluster, exclude: &[SocketAddr], now_ms: u64) -> Option<Arc<Endpoint>> {
    let usable: Vec<&Arc<Endpoint>> = cluster
        .endpoints
        .iter()
        .filter(|e| e.usable(now_ms) && !exclude.contains(&e.addr))
        .collect();
    match usable.len() {
        0 => None,
        1 => Some(Arc::clone(usable[0])),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (usable[a], usable[b]);
            Some(Arc::clone(if b.in_flight() < a.in_flight() {
                b
            } else {
                a
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{registry::loopback as registry, State};

    #[test]
    fn skips_unusable_and_excluded_endpoints() {
        let r = registry(4);
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        r.set_state(addr(1), None, State::Draining, "x").unwrap();
        r.set_state(addr(2), None, State::NotReady, "x").unwrap();
        r.observe_failure(addr(3));
        let c = r.cluster(None).unwrap();
        for _ in 0..100 {
            assert_eq!(pick(&c, &[], r.now_ms()).map(|e| e.addr), Some(addr(4)));
        }
        assert!(pick(&c, &[addr(4)], r.now_ms()).is_none());
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let r = registry(2);
        let c = r.cluster(None).unwrap();
        let _busy = c.endpoints[0].start_request();
        for _ in 0..100 {
            let e = pick(&c, &[], r.now_ms()).unwrap();
            assert_eq!(e.addr, c.endpoints[1].addr);
        }
    }
}
