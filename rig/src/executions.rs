//! What the pods ran, counted over all of them: the measure of the first
//! law's "nothing run twice". Each request a test sends carries its own
//! `x-harness-id`, and each pod counts how often its application ran each
//! id ([`crate::pods::Pod::executions`]).

use std::{collections::BTreeMap, sync::Arc};

use crate::pods::Pod;

/// Ids starting with `prefix` that the pods ran more than once in all,
/// with how often, in order.
pub fn run_twice(pods: &[Arc<Pod>], prefix: &str) -> Vec<(String, u32)> {
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
