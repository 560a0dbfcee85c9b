//! The endpoint registry shared by every stream.
//!
//! Membership (which endpoints a cluster has) changes rarely: config, later
//! service discovery. It is held in an [`ArcSwap`] snapshot, so the request
//! path reads it without a lock. State changes (drain, ready) are frequent in
//! a rollout and touch one endpoint: they are atomics on the endpoint itself.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config;

/// Where an endpoint is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Serving; requests may go to it.
    Ready = 0,
    /// Booting, or failing its readiness checks.
    NotReady = 1,
    /// Leaving (preStop, terminating): no new request goes to it.
    Draining = 2,
    /// Not accepting connections.
    Gone = 3,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Ready,
            1 => State::NotReady,
            2 => State::Draining,
            _ => State::Gone,
        }
    }
}

/// One upstream endpoint of one cluster.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub cluster: Arc<str>,
    state: AtomicU8,
    /// Why the endpoint is in its state; written only when the state changes.
    reason: Mutex<String>,
}

impl Endpoint {
    fn new(addr: SocketAddr, cluster: Arc<str>, state: State, reason: &str) -> Self {
        Self {
            addr,
            cluster,
            state: AtomicU8::new(state as u8),
            reason: Mutex::new(reason.to_string()),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: State, reason: &str) {
        let mut guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        self.state.store(state as u8, Ordering::Release);
        guard.clear();
        guard.push_str(reason);
    }

    pub fn view(&self) -> EndpointView {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        EndpointView {
            address: self.addr,
            cluster: self.cluster.to_string(),
            state: self.state(),
            reason,
        }
    }
}

/// A serialisable snapshot of an endpoint, for the admin and control APIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub address: SocketAddr,
    pub cluster: String,
    pub state: State,
    pub reason: String,
}

/// The endpoints of one cluster.
#[derive(Debug, Default)]
pub struct Cluster {
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// The name under which `endpoints.static` is kept: it serves every cluster
/// that has no list of its own.
pub const DEFAULT_CLUSTER: &str = "*";

/// Every known cluster and its endpoints.
#[derive(Debug)]
pub struct Registry {
    clusters: ArcSwap<BTreeMap<Arc<str>, Arc<Cluster>>>,
}

/// A lifecycle call named an endpoint the registry does not know. mulligan
/// never learns endpoints from such calls: only config and discovery add them.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint {0} is known")]
pub struct NotFound(pub String);

impl Registry {
    /// Builds the registry from static configuration; every endpoint starts
    /// ready (static endpoints are trusted until a lifecycle call or, later,
    /// a health signal says otherwise).
    pub fn from_config(cfg: &config::Endpoints) -> Self {
        let mut clusters = BTreeMap::new();
        let mut add = |name: &str, addrs: &[SocketAddr]| {
            let name: Arc<str> = Arc::from(name);
            let mut seen = Vec::with_capacity(addrs.len());
            let endpoints = addrs
                .iter()
                .filter(|a| {
                    let fresh = !seen.contains(*a);
                    seen.push(**a);
                    fresh
                })
                .map(|a| Arc::new(Endpoint::new(*a, name.clone(), State::Ready, "static")))
                .collect();
            clusters.insert(name, Arc::new(Cluster { endpoints }));
        };
        if !cfg.default.is_empty() {
            add(DEFAULT_CLUSTER, &cfg.default);
        }
        for (name, addrs) in &cfg.clusters {
            add(name, addrs);
        }
        Self {
            clusters: ArcSwap::from_pointee(clusters),
        }
    }

    /// Every endpoint, or those of one cluster.
    pub fn list(&self, cluster: Option<&str>) -> Vec<EndpointView> {
        let clusters = self.clusters.load();
        clusters
            .iter()
            .filter(|(name, _)| cluster.is_none_or(|c| c == &***name))
            .flat_map(|(_, c)| c.endpoints.iter().map(|e| e.view()))
            .collect()
    }

    /// Sets the state of `addr` in `cluster` (or in every cluster that has
    /// it, when `cluster` is `None`), returning the endpoints changed.
    pub fn set_state(
        &self,
        addr: SocketAddr,
        cluster: Option<&str>,
        state: State,
        reason: &str,
    ) -> Result<Vec<EndpointView>, NotFound> {
        let clusters = self.clusters.load();
        let changed: Vec<EndpointView> = clusters
            .iter()
            .filter(|(name, _)| cluster.is_none_or(|c| c == &***name))
            .flat_map(|(_, c)| c.endpoints.iter())
            .filter(|e| e.addr == addr)
            .map(|e| {
                e.set_state(state, reason);
                e.view()
            })
            .collect();
        if changed.is_empty() {
            let what = match cluster {
                Some(c) => format!("{addr} in cluster {c}"),
                None => addr.to_string(),
            };
            return Err(NotFound(what));
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let cfg = config::Endpoints {
            default: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            clusters: [("app".to_string(), vec!["127.0.0.1:2".parse().unwrap()])].into(),
        };
        Registry::from_config(&cfg)
    }

    #[test]
    fn lists_every_cluster_or_one() {
        let r = registry();
        assert_eq!(r.list(None).len(), 3);
        assert_eq!(r.list(Some("app")).len(), 1);
        assert!(r.list(Some("other")).is_empty());
    }

    #[test]
    fn drain_marks_the_address_in_every_cluster_that_has_it() {
        let r = registry();
        let changed = r
            .set_state(
                "127.0.0.1:2".parse().unwrap(),
                None,
                State::Draining,
                "preStop",
            )
            .expect("known");
        assert_eq!(changed.len(), 2);
        assert!(changed
            .iter()
            .all(|e| e.state == State::Draining && e.reason == "preStop"));
        let one = r
            .set_state(
                "127.0.0.1:2".parse().unwrap(),
                Some("app"),
                State::Ready,
                "postStart",
            )
            .expect("known");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn unknown_addresses_are_refused_not_learned() {
        let r = registry();
        let err = r
            .set_state("10.9.9.9:80".parse().unwrap(), None, State::Ready, "x")
            .expect_err("unknown");
        assert!(err.to_string().contains("10.9.9.9:80"));
        assert_eq!(r.list(None).len(), 3);
    }
}
