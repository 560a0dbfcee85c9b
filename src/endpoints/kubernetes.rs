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
            cluster.clone(),
            Arc::clone(&registry),
            Arc::clone(&drain),
        )));
        tasks.push(tokio::spawn(watch_pods(
            client.clone(),
            cfg.namespace.clone(),
            svc.name.clone(),
            cluster.clone(),
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

/// The Service's Pods that are not leaving (not being deleted, not
/// finished), by name, with their addresses: none while Pending.
type Live = BTreeMap<String, Vec<IpAddr>>;

/// Follows a Service's Pods: a Pod with a `deletionTimestamp` is draining
/// at once, and Pods that are not leaving but that no endpoint of `cluster`
/// stands for yet are counted as coming up (`Registry::set_coming_up`). The
/// count is taken again whenever the cluster's endpoints change, so a pod
/// stops counting once its EndpointSlice lists it.
async fn watch_pods(
    client: Client,
    namespace: String,
    service: String,
    cluster: String,
    registry: Arc<Registry>,
) {
    let Some(selector) = selector(&Api::namespaced(client.clone(), &namespace), &service).await
    else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = watcher(pods, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut members = registry.membership();
    let mut live = Live::new();
    let mut relist: Option<Live> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => on_pod_event(&registry, &mut live, &mut relist, event),
                Some(Err(e)) => {
                    tracing::warn!(service, error = %e, "kubernetes: Pod watch (retrying)");
                }
                None => return,
            },
            changed = members.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if relist.is_none() {
            let known = registry.ips_of(&cluster);
            let up = live
                .values()
                .filter(|ips| !ips.iter().any(|ip| known.contains(ip)))
                .count();
            registry.set_coming_up(&cluster, up);
        }
    }
}

/// One Pod watch event into `live` (or the relist under way).
fn on_pod_event(
    registry: &Registry,
    live: &mut Live,
    relist: &mut Option<Live>,
    event: watcher::Event<Pod>,
) {
    match event {
        watcher::Event::Init => *relist = Some(Live::new()),
        watcher::Event::InitApply(p) => note_pod(registry, relist.as_mut().unwrap_or(live), &p),
        watcher::Event::InitDone => *live = relist.take().unwrap_or_default(),
        watcher::Event::Apply(p) => note_pod(registry, live, &p),
        watcher::Event::Delete(p) => {
            live.remove(&p.metadata.name.unwrap_or_default());
        }
    }
}

/// The Service's selector as a label selector, retried until the Service
/// exists; `None` for a Service that selects no pods.
async fn selector(services: &Api<Service>, service: &str) -> Option<String> {
    loop {
        match services.get(service).await {
            Ok(s) => {
                let sel = s.spec.and_then(|s| s.selector).unwrap_or_default();
                let sel = sel
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                return (!sel.is_empty()).then_some(sel);
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "kubernetes: reading the Service (retrying)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// One Pod as the API server shows it: a deleting pod's addresses drain
/// and it leaves `live`, as does a finished one (`Failed`, `Succeeded`);
/// any other pod is in `live` with its addresses.
fn note_pod(registry: &Registry, live: &mut Live, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let finished = matches!(status.phase.as_deref(), Some("Failed" | "Succeeded"));
    let ips: Vec<IpAddr> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .chain(status.pod_ip)
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect();
    if pod.metadata.deletion_timestamp.is_some() {
        for ip in &ips {
            registry.drain_ip(*ip, "kubernetes: pod deleting");
        }
        live.remove(&name);
    } else if finished {
        live.remove(&name);
    } else {
        live.insert(name, ips);
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

    fn pod(phase: &str, ip: Option<&str>, deleting: bool) -> Pod {
        let mut p = serde_json::json!({
            "metadata": {"name": "backend-1"},
            "status": {"phase": phase},
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = ip.into();
        }
        if deleting {
            p["metadata"]["deletionTimestamp"] = "2026-11-22T09:00:00Z".into();
        }
        serde_json::from_value(p).expect("pod")
    }

    #[test]
    fn a_pod_is_live_until_it_is_deleting_or_finished() {
        let registry =
            Registry::from_config(&config::Endpoints::default(), &config::Health::default());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut live = Live::new();
        note_pod(&registry, &mut live, &pod("Pending", None, false));
        assert_eq!(live.get("backend-1"), Some(&Vec::new()), "pending: no IP");
        note_pod(
            &registry,
            &mut live,
            &pod("Running", Some("10.0.0.7"), false),
        );
        assert_eq!(live.get("backend-1"), Some(&vec![ip]));
        note_pod(
            &registry,
            &mut live,
            &pod("Running", Some("10.0.0.7"), true),
        );
        assert!(live.is_empty(), "deleting: not coming up");
        note_pod(&registry, &mut live, &pod("Pending", None, false));
        note_pod(&registry, &mut live, &pod("Failed", None, false));
        assert!(live.is_empty(), "finished: not coming up");
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
