//! What each hook does to Envoy Gateway's resources, without gRPC.
//!
//! PostTranslateModify does the work: it sees every route, cluster and
//! listener at once, so it can wire a route together with its cluster and
//! its listener. PostRouteModify only carries HTTPRoute policies forward
//! (Envoy Gateway gives them to that hook alone). PostEndpointsModify adds
//! the hold endpoint to EDS clusters, whose endpoints PostTranslateModify
//! never sees. The other hooks return their input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::{
    cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
    endpoint::v3::ClusterLoadAssignment,
    route::v3::{Route, RouteConfiguration},
};

use super::{
    api::{
        PostRouteModifyRequest, PostRouteModifyResponse, PostTranslateModifyRequest,
        PostTranslateModifyResponse,
    },
    policy::Settings,
    select::{self, Choice, Policies},
    wiring::{self, MulliganAddress},
    ExtensionMetrics,
};

/// The hooks' shared state: where mulligan is, and which EDS clusters the
/// last translation wired (for PostEndpointsModify, which has no context).
pub struct Hooks {
    mulligan: MulliganAddress,
    eds_wired: ArcSwap<BTreeSet<String>>,
    metrics: ExtensionMetrics,
}

impl Hooks {
    pub fn new(mulligan: MulliganAddress) -> Self {
        Self {
            mulligan,
            eds_wired: ArcSwap::from_pointee(BTreeSet::new()),
            metrics: ExtensionMetrics::new(),
        }
    }

    fn policies<'a>(&self, resources: impl IntoIterator<Item = &'a [u8]>) -> Policies {
        let metrics = &self.metrics;
        Policies::read(resources, &mut |id, reason| {
            tracing::warn!(
                policy = id,
                reason,
                "invalid MulliganPolicy: its routes are left as Envoy Gateway made them"
            );
            metrics.invalid_policy();
        })
    }

    /// Carries an HTTPRoute policy's decision on the route (a marker in its
    /// metadata) and installs the route's retry policy.
    pub fn post_route(&self, req: PostRouteModifyRequest) -> PostRouteModifyResponse {
        let Some(mut route) = req.route else {
            return PostRouteModifyResponse { route: None };
        };
        let resources = req.post_route_context.iter().flat_map(|c| {
            c.extension_policies
                .iter()
                .chain(&c.extension_resources)
                .map(|r| r.unstructured_bytes.as_slice())
        });
        let policies = self.policies(resources);
        if let Some(Ok(policy)) = policies.for_route() {
            select::write_marker(route.metadata.get_or_insert_with(Default::default), policy);
            if policy.mode == super::policy::Mode::Decide {
                wiring::install_route(&mut route, &policy.settings);
            }
        }
        PostRouteModifyResponse { route: Some(route) }
    }

    /// Adds the hold endpoint to an EDS cluster the last translation wired.
    pub fn post_endpoints(
        &self,
        assignment: Option<ClusterLoadAssignment>,
    ) -> Option<ClusterLoadAssignment> {
        let mut assignment = assignment?;
        if self.eds_wired.load().contains(&assignment.cluster_name) {
            wiring::install_hold_endpoint(&mut assignment);
        }
        Some(assignment)
    }

    /// Installs the wiring for every route a policy selects.
    pub fn post_translate(&self, req: PostTranslateModifyRequest) -> PostTranslateModifyResponse {
        let context = req.post_translate_context.as_ref();
        let policies = self.policies(context.into_iter().flat_map(|c| {
            c.extension_resources
                .iter()
                .map(|r| r.unstructured_bytes.as_slice())
        }));
        let PostTranslateModifyRequest {
            mut clusters,
            secrets,
            mut listeners,
            mut routes,
            ..
        } = req;
        let plan = plan(&policies, &routes);
        let failed = self.install_clusters(&mut clusters, &plan.clusters);
        let (wired_configs, wired_routes) = install_routes(&mut routes, &plan, &failed);
        if !wired_configs.is_empty() {
            for listener in &mut listeners {
                wiring::install_listener(listener, &|name| wired_configs.contains(name));
            }
            upsert(
                &mut clusters,
                wiring::mulligan_cluster(&self.mulligan),
                |c| &c.name,
            );
            upsert(&mut listeners, wiring::hold_listener(), |l| &l.name);
        }
        self.metrics.routes_wired(wired_routes);
        PostTranslateModifyResponse {
            clusters,
            secrets,
            listeners,
            routes,
        }
    }

    /// Wires the planned clusters; returns those that could not be wired.
    fn install_clusters(
        &self,
        clusters: &mut [Cluster],
        plan: &BTreeMap<String, Settings>,
    ) -> BTreeSet<String> {
        let mut failed = BTreeSet::new();
        let mut eds = BTreeSet::new();
        for cluster in clusters.iter_mut() {
            let Some(settings) = plan.get(&cluster.name) else {
                continue;
            };
            let mut wired = cluster.clone();
            match wiring::install_cluster(&mut wired, settings) {
                Ok(()) => {
                    if is_eds(&wired) {
                        eds.insert(wired.name.clone());
                    }
                    *cluster = wired;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster left as Envoy Gateway made it");
                    self.metrics.wiring_error();
                    failed.insert(cluster.name.clone());
                }
            }
        }
        // Clusters routes name but the translation lacks cannot be wired.
        failed.extend(
            plan.keys()
                .filter(|n| !clusters.iter().any(|c| &c.name == *n))
                .cloned(),
        );
        self.eds_wired.store(Arc::new(eds));
        failed
    }
}

fn is_eds(cluster: &Cluster) -> bool {
    cluster.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
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

fn plan(policies: &Policies, configs: &[RouteConfiguration]) -> Plan {
    let mut plan = Plan {
        routes: Vec::new(),
        clusters: BTreeMap::new(),
    };
    for (c, config) in configs.iter().enumerate() {
        for (v, vhost) in config.virtual_hosts.iter().enumerate() {
            for (r, route) in vhost.routes.iter().enumerate() {
                let Choice::Wire(settings) =
                    select::choose(policies, route.metadata.as_ref(), vhost.metadata.as_ref())
                else {
                    continue;
                };
                let clusters = forwarded_clusters(route);
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

fn forwarded_clusters(route: &Route) -> Vec<String> {
    // install_route on a copy reads the clusters the same way it wires them.
    let mut probe = route.clone();
    wiring::install_route(&mut probe, &Settings::default())
}

/// Installs the retry policy on planned routes whose clusters were all
/// wired; returns the names of the route configurations touched, and how
/// many routes were wired.
fn install_routes(
    configs: &mut [RouteConfiguration],
    plan: &Plan,
    failed: &BTreeSet<String>,
) -> (BTreeSet<String>, usize) {
    let mut touched = BTreeSet::new();
    let mut wired = 0;
    for p in &plan.routes {
        if p.clusters.iter().any(|c| failed.contains(c)) {
            continue;
        }
        let config = &mut configs[p.config];
        wiring::install_route(
            &mut config.virtual_hosts[p.vhost].routes[p.route],
            &p.settings,
        );
        touched.insert(config.name.clone());
        wired += 1;
    }
    (touched, wired)
}

/// Replaces the item with the same name, or appends it.
fn upsert<T>(items: &mut Vec<T>, item: T, name: impl Fn(&T) -> &String) {
    match items.iter().position(|i| name(i) == name(&item)) {
        Some(at) => items[at] = item,
        None => items.push(item),
    }
}
