//! What the pods ran, counted over all of them: the measure of the first
//! law's "nothing run twice". Each request a test sends carries its own
//! `x-harness-id` ([`send`]), and each pod counts how often its application
//! ran each id ([`crate::pods::Pod::executions`]).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use http::Method;

use crate::{
    client::{full, HttpClient, Proto, Reply},
    payload,
    pods::Pod,
};

/// Ids starting with `prefix` that the pods ran more than once in all,
/// with how often, in order.
pub fn run_twice<'a>(
    pods: impl IntoIterator<Item = &'a Arc<Pod>>,
    prefix: &str,
) -> Vec<(String, u32)> {
    let mut runs: BTreeMap<String, u32> = BTreeMap::new();
    for p in pods {
        for (id, n) in p.executions() {
            if id.starts_with(prefix) {
                *runs.entry(id).or_default() += n;
            }
        }
    }
    runs.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Ids starting with `prefix` that `pod` ran at least once.
pub fn ran(pod: &Pod, prefix: &str) -> usize {
    pod.executions()
        .keys()
        .filter(|id| id.starts_with(prefix))
        .count()
}

/// `method` `path` to Envoy's listener at `front` with a 100-byte body and
/// `x-harness-id: id`, and `headers` besides (the `host` a route matches).
pub async fn send(
    front: SocketAddr,
    headers: &[(&str, &str)],
    method: Method,
    path: &str,
    id: &str,
) -> Reply {
    let mut all = headers.to_vec();
    all.push(("x-harness-id", id));
    HttpClient::new(Proto::Http1)
        .send(method, front, path, &all, full(payload(100)))
        .await
        .unwrap_or_else(|e| panic!("{id} through Envoy at {front}: {e}"))
}
