//! A discovery source: Kubernetes, watched directly, so mulligan learns that
//! a pod is leaving before Envoy does.
//!
//! For each configured Service, mulligan watches its EndpointSlices
//! (`kubernetes.io/service-name=<service>`) and maps their conditions as
//! Envoy Gateway does: `ready` is ready, `serving` + `terminating` is
//! draining, anything else not ready. It also watches the Service's Pods: a
//! Pod with a `deletionTimestamp` is draining the moment the API server
//! knows, before the EndpointSlice controller and xDS catch up.
//!
//! The watches are kube-runtime reflectors: a full list, then a watch from
//! its resourceVersion; a watch that expires (410 Gone) relists; API errors
//! back off exponentially. mulligan is not ready until every Service's first
//! list has completed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::task::JoinHandle;

use super::{Registry, State};
use crate::{config, drain::Drain};

/// The Envoy cluster a Service's endpoints belong to.
pub(crate) fn cluster_name(namespace: &str, svc: &config::KubeService) -> String {
    svc.cluster
        .clone()
        .unwrap_or_else(|| format!("httproute/{namespace}/{}/rule/0", svc.name))
}

/// Starts the watches; each Service holds mulligan's readiness until its
/// first EndpointSlice list is in.
pub(crate) async fn spawn(
    registry: Arc<Registry>,
    drain: Arc<Drain>,
    cfg: &config::Kubernetes,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let client = client(cfg).await?;
    let mut tasks = Vec::new();
    for svc in &cfg.services {
        let cluster = cluster_name(&cfg.namespace, svc);
        drain.hold_readiness();
        tasks.push(tokio::spawn(watch_slices(
            Api::namespaced(client.clone(), &cfg.namespace),
            svc.clone(),
            cluster,
            Arc::clone(&registry),
            Arc::clone(&drain),
        )));
        tasks.push(tokio::spawn(watch_pods(
            client.clone(),
            cfg.namespace.clone(),
            svc.name.clone(),
            Arc::clone(&registry),
        )));
    }
    Ok(tasks)
}

async fn client(cfg: &config::Kubernetes) -> anyhow::Result<Client> {
    let mut config = if cfg.api_server.is_empty() {
        kube::Config::infer().await?
    } else {
        kube::Config::new(cfg.api_server.parse()?)
    };
    config.default_namespace = cfg.namespace.clone();
    Ok(Client::try_from(config)?)
}

/// Follows one Service's EndpointSlices into the registry.
async fn watch_slices(
    api: Api<EndpointSlice>,
    svc: config::KubeService,
    cluster: String,
    registry: Arc<Registry>,
    drain: Arc<Drain>,
) {
    let selector = format!("kubernetes.io/service-name={}", svc.name);
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    // Slices by name: the Service's endpoints are their union.
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut synced = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(r) = &mut relist {
                    r.insert(name_of(&s), s);
                }
            }
            Ok(watcher::Event::InitDone) => {
                slices = relist.take().unwrap_or_default();
                publish(&registry, &cluster, &svc, &slices);
                if !synced {
                    synced = true;
                    drain.release_readiness();
                    tracing::info!(service = svc.name, cluster, "kubernetes: first list in");
                }
            }
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(name_of(&s), s);
                publish(&registry, &cluster, &svc, &slices);
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&name_of(&s));
                publish(&registry, &cluster, &svc, &slices);
            }
            Err(e) => {
                tracing::warn!(service = svc.name, error = %e, "kubernetes: EndpointSlice watch (retrying)")
            }
        }
    }
}

fn name_of(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

fn publish(
    registry: &Registry,
    cluster: &str,
    svc: &config::KubeService,
    slices: &BTreeMap<String, EndpointSlice>,
) {
    let entries: Vec<(SocketAddr, State)> =
        slices.values().flat_map(|s| endpoints(s, svc)).collect();
    registry.replace_cluster(cluster, &entries, "kubernetes");
}

/// One slice's endpoints with their states, as Envoy Gateway reads them.
pub(crate) fn endpoints(
    slice: &EndpointSlice,
    svc: &config::KubeService,
) -> Vec<(SocketAddr, State)> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| match &svc.port {
            None => true,
            Some(want) => {
                p.name.as_deref() == Some(want.as_str())
                    || p.port.map(|n| n.to_string()).as_deref() == Some(want.as_str())
            }
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .flat_map(|e| {
            let c = e.conditions.as_ref();
            // Unset conditions mean true, except terminating.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let state = if terminating {
                if serving {
                    State::Draining
                } else {
                    State::Gone
                }
            } else if ready {
                State::Ready
            } else {
                State::NotReady
            };
            e.addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .map(move |ip| (SocketAddr::new(ip, port), state))
        })
        .collect()
}

/// Marks a Service's pods draining as soon as they get a deletionTimestamp.
async fn watch_pods(client: Client, namespace: String, service: String, registry: Arc<Registry>) {
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    // The Service's selector names its pods; retried until the Service exists.
    let selector = loop {
        match services.get(&service).await {
            Ok(s) => {
                let sel = s.spec.and_then(|s| s.selector).unwrap_or_default();
                break sel
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "kubernetes: reading the Service (retrying)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    if selector.is_empty() {
        return;
    }
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = watcher(pods, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(service, error = %e, "kubernetes: Pod watch (retrying)");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let status = pod.status.unwrap_or_default();
        let ips = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .chain(status.pod_ip);
        for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            registry.drain_ip(ip, "kubernetes: pod deleting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ready: bool, serving: bool, terminating: bool) -> BTreeMap<String, EndpointSlice> {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {
                "ready": ready, "serving": serving, "terminating": terminating}}],
        }))
        .expect("slice");
        [("backend-abc".to_string(), s)].into()
    }

    #[test]
    fn a_pod_that_drains_then_flaps_ready_stays_draining() {
        let registry =
            Registry::from_config(&config::Endpoints::default(), &config::Health::default());
        let svc = config::KubeService {
            name: "backend".into(),
            cluster: None,
            port: None,
        };
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        publish(&registry, "c", &svc, &slice(true, true, false));
        assert_eq!(registry.state_of(addr), Some(State::Ready));
        // Terminating but serving: draining.
        publish(&registry, "c", &svc, &slice(false, true, true));
        assert_eq!(registry.state_of(addr), Some(State::Draining));
        // The slice then says not ready, then ready (a slice rewritten by
        // the controller, or an endpoint reused): still draining.
        publish(&registry, "c", &svc, &slice(false, false, false));
        publish(&registry, "c", &svc, &slice(true, true, false));
        assert_eq!(registry.state_of(addr), Some(State::Draining));
    }
}
