//! PostTranslateModify: sees every route, cluster and listener at once,
//! so it wires a route together with its clusters and its listener, and
//! adds mulligan's cluster and the hold's listeners.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::{
    cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
    listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use prost::Message;

use super::Hooks;
use crate::extension::{
    api::raw,
    policy::Settings,
    select::{self, Choice, Policies},
    wiring,
};

impl Hooks {
    /// Installs the wiring for every route a policy selects.
    pub fn post_translate(
        &self,
        req: raw::PostTranslateModifyRequest,
    ) -> raw::PostTranslateModifyResponse {
        let policies = self.policies(req.post_translate_context.iter().flat_map(|c| {
            c.extension_resources
                .iter()
                .map(|r| r.unstructured_bytes.as_slice())
        }));
        if !policies.is_empty() && req.routes.is_empty() {
            tracing::warn!(
                "MulliganPolicies arrived but no routes: set extensionManager.hooks.xdsTranslator.translation.route.includeAll (and listener.includeAll) in Envoy Gateway"
            );
        }
        let mut resp = raw::PostTranslateModifyResponse {
            clusters: req.clusters,
            secrets: req.secrets,
            listeners: req.listeners,
            routes: req.routes,
        };
        let configs: Vec<Option<RouteConfiguration>> = resp
            .routes
            .iter()
            .map(|b| RouteConfiguration::decode(b.as_slice()).ok())
            .collect();
        let plan = plan(&policies, &configs);
        let wired = if plan.routes.is_empty() {
            self.metrics.routes_ungated(0);
            0
        } else {
            self.install(&plan, configs, &mut resp)
        };
        self.metrics.routes_wired(wired);
        resp
    }

    /// Carries out a plan on the translation; returns the routes wired.
    fn install(
        &self,
        plan: &Plan,
        mut configs: Vec<Option<RouteConfiguration>>,
        resp: &mut raw::PostTranslateModifyResponse,
    ) -> usize {
        let failed = self.install_clusters(&mut resp.clusters, &plan.clusters);
        let done = install_routes(&mut configs, plan, &failed);
        self.metrics.routes_ungated(done.ungated);
        let (wired_configs, wired_routes) = (done.configs, done.routes);
        for (bytes, config) in resp.routes.iter_mut().zip(&configs) {
            if let Some(c) = config.as_ref().filter(|c| wired_configs.contains(&c.name)) {
                *bytes = c.encode_to_vec();
            }
        }
        if !wired_configs.is_empty() {
            install_listeners(&mut resp.listeners, &wired_configs);
            let mulligan = wiring::mulligan_cluster(&self.mulligan);
            upsert(&mut resp.clusters, mulligan, |b| {
                Cluster::decode(b).ok().map(|c| c.name)
            });
            for hold in [wiring::hold_cluster(), wiring::hold_answer_cluster()] {
                upsert(&mut resp.clusters, hold, |b| {
                    Cluster::decode(b).ok().map(|c| c.name)
                });
            }
            for hold in [wiring::hold_listener(), wiring::hold_answer_listener()] {
                upsert(&mut resp.listeners, hold, |b| {
                    Listener::decode(b).ok().map(|l| l.name)
                });
            }
        }
        wired_routes
    }

    /// Wires the planned clusters (an EDS one becomes an aggregate with the
    /// hold, its app member added); returns those that could not be wired.
    fn install_clusters(
        &self,
        clusters: &mut Vec<Vec<u8>>,
        plan: &BTreeMap<String, Settings>,
    ) -> BTreeSet<String> {
        let mut missing: BTreeSet<String> = plan.keys().cloned().collect();
        let mut failed = BTreeSet::new();
        let mut members = Vec::new();
        for bytes in clusters.iter_mut() {
            let Ok(mut cluster) = Cluster::decode(bytes.as_slice()) else {
                continue;
            };
            let Some(settings) = plan.get(&cluster.name) else {
                continue;
            };
            missing.remove(&cluster.name);
            let done = if is_eds(&cluster) || wiring::is_aggregate(&cluster) {
                wiring::install_eds_cluster(&cluster, settings).map(|w| {
                    members.extend(w.app);
                    w.aggregate
                })
            } else {
                wiring::install_cluster(&mut cluster, settings).map(|()| cluster)
            };
            match done {
                Ok(wired) => *bytes = wired.encode_to_vec(),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster left as Envoy Gateway made it");
                    self.metrics.wiring_error();
                    failed.insert(e.cluster().to_string());
                }
            }
        }
        for member in members {
            upsert(clusters, member, |b| {
                Cluster::decode(b).ok().map(|c| c.name)
            });
        }
        // A cluster a route names but the translation lacks cannot be wired.
        failed.extend(missing);
        failed
    }
}

fn is_eds(cluster: &Cluster) -> bool {
    cluster.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
}

fn install_listeners(listeners: &mut [Vec<u8>], wired_configs: &BTreeSet<String>) {
    for bytes in listeners.iter_mut() {
        if let Ok(mut listener) = Listener::decode(bytes.as_slice()) {
            if wiring::install_listener(&mut listener, &|name| wired_configs.contains(name)) {
                *bytes = listener.encode_to_vec();
            }
        }
    }
}

/// A route chosen for wiring: where it is and what it forwards to.
struct PlannedRoute {
    config: usize,
    vhost: usize,
    route: usize,
    settings: Settings,
    clusters: Vec<String>,
}

struct Plan {
    routes: Vec<PlannedRoute>,
    /// Per cluster, the settings of the first route (in translation order)
    /// that forwards to it.
    clusters: BTreeMap<String, Settings>,
}

fn plan(policies: &Policies, configs: &[Option<RouteConfiguration>]) -> Plan {
    let mut plan = Plan {
        routes: Vec::new(),
        clusters: BTreeMap::new(),
    };
    for (c, config) in configs.iter().enumerate() {
        let Some(config) = config else { continue };
        for (v, vhost) in config.virtual_hosts.iter().enumerate() {
            for (r, route) in vhost.routes.iter().enumerate() {
                let choice =
                    select::choose(policies, route.metadata.as_ref(), vhost.metadata.as_ref());
                let Choice::Wire(settings) = choice else {
                    continue;
                };
                let clusters = wiring::forwarded_clusters(route);
                if clusters.is_empty() {
                    continue;
                }
                for name in &clusters {
                    plan.clusters.entry(name.clone()).or_insert(settings);
                }
                plan.routes.push(PlannedRoute {
                    config: c,
                    vhost: v,
                    route: r,
                    settings,
                    clusters,
                });
            }
        }
    }
    plan
}

/// What [`install_routes`] did.
#[derive(Default)]
struct RoutesWired {
    /// The names of the route configurations touched.
    configs: BTreeSet<String>,
    routes: usize,
    /// Wired routes whose virtual host also has unwired forwarding routes:
    /// the gate stays off for them (see [`install_gates`]).
    ungated: usize,
}

/// Installs the retry policy on planned routes whose clusters were all
/// wired, then turns the gate on where it may be.
fn install_routes(
    configs: &mut [Option<RouteConfiguration>],
    plan: &Plan,
    failed: &BTreeSet<String>,
) -> RoutesWired {
    let mut done = RoutesWired::default();
    // Per (config, virtual host), the indices of the routes wired.
    let mut by_vhost: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
    for p in &plan.routes {
        if p.clusters.iter().any(|c| failed.contains(c)) {
            continue;
        }
        let Some(config) = configs[p.config].as_mut() else {
            continue;
        };
        wiring::install_route(
            &mut config.virtual_hosts[p.vhost].routes[p.route],
            &p.settings,
        );
        done.configs.insert(config.name.clone());
        done.routes += 1;
        by_vhost
            .entry((p.config, p.vhost))
            .or_default()
            .insert(p.route);
    }
    done.ungated = install_gates(configs, &by_vhost);
    done
}

/// Sets `include_request_attempt_count` (the gate's input, a virtual host
/// setting in Envoy's API) on each virtual host whose forwarding routes are
/// all wired. Elsewhere the header would reach the pods of unwired routes,
/// which must come back as Envoy Gateway made them; so their virtual host is
/// left alone, and its wired routes keep the rest of the wiring without the
/// gate (logged). Returns how many wired routes that leaves ungated.
fn install_gates(
    configs: &mut [Option<RouteConfiguration>],
    by_vhost: &BTreeMap<(usize, usize), BTreeSet<usize>>,
) -> usize {
    let mut ungated = 0;
    for (&(c, v), wired) in by_vhost {
        let Some(config) = configs[c].as_mut() else {
            continue;
        };
        let vhost = &mut config.virtual_hosts[v];
        let unwired = vhost
            .routes
            .iter()
            .enumerate()
            .filter(|(r, route)| {
                !wired.contains(r) && !wiring::forwarded_clusters(route).is_empty()
            })
            .count();
        if unwired == 0 || vhost.include_request_attempt_count {
            wiring::install_attempt_count(vhost);
            continue;
        }
        tracing::warn!(
            route_config = config.name,
            virtual_host = vhost.name,
            wired = wired.len(),
            unwired,
            "virtual host mixes wired and unwired routes: mulligan's retry gate is off for its wired routes"
        );
        ungated += wired.len();
    }
    ungated
}

/// Replaces the resource with the same name, or appends it.
fn upsert<M: Message>(
    items: &mut Vec<Vec<u8>>,
    item: M,
    name_of: impl Fn(&[u8]) -> Option<String>,
) {
    let bytes = item.encode_to_vec();
    let name = name_of(&bytes);
    match items
        .iter()
        .position(|i| name.is_some() && name_of(i) == name)
    {
        Some(at) => items[at] = bytes,
        None => items.push(bytes),
    }
}
