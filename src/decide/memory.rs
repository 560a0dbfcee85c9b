//! What earlier attempts of the same request did.
//!
//! Envoy asks mulligan about each failed attempt on its own stream, so the
//! verdict on attempt 3 must still know that attempt 1 may have reached an
//! app (a POST that a pod processed and answered 503, then retried by the
//! route's own policy). Notes are keyed by Envoy's request id and live for
//! about two `ttl`s: long enough to outlast a request, short enough to stay
//! small. Only failed attempts write here; healthy requests never do.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::Mutex,
    time::{Duration, Instant},
};

/// What is remembered of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Note {
    /// An attempt may have reached an app and the request is not safe to
    /// send again: no further attempt is ever blessed.
    pub tainted: bool,
    /// Times a hold released this request; a request that comes back to the
    /// hold waits longer before the next release.
    pub releases: u8,
    /// Failed attempts mulligan has judged.
    pub failures: u8,
}

/// Shards keep failures on different requests off each other's lock.
const SHARDS: usize = 16;

/// Notes per shard and generation at most: a flood of failures with fresh
/// ids ages notes out early instead of growing without bound.
const MAX_PER_GENERATION: usize = 16_384;

#[derive(Debug)]
struct Shard {
    current: HashMap<Box<str>, Note>,
    previous: HashMap<Box<str>, Note>,
    rotated: Instant,
}

/// Notes on requests that failed at least once, by request id.
#[derive(Debug)]
pub struct Memory {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    ttl: Duration,
}

impl Memory {
    pub(crate) fn new(ttl: Duration) -> Self {
        let now = Instant::now();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        rotated: now,
                    })
                })
                .collect(),
            hasher: Default::default(),
            ttl,
        }
    }

    /// The note on `id`; default when none (or no id).
    pub(crate) fn get(&self, id: Option<&str>) -> Note {
        let Some(id) = id else { return Note::default() };
        let shard = self.shard(id);
        shard
            .current
            .get(id)
            .or_else(|| shard.previous.get(id))
            .copied()
            .unwrap_or_default()
    }

    /// Changes the note on `id` and returns it (nothing is remembered
    /// without an id: the change applies to a fresh note).
    pub(crate) fn update(&self, id: Option<&str>, change: impl FnOnce(&mut Note)) -> Note {
        let Some(id) = id else {
            let mut note = Note::default();
            change(&mut note);
            return note;
        };
        let mut shard = self.shard(id);
        let mut note = shard
            .current
            .get(id)
            .or_else(|| shard.previous.get(id))
            .copied()
            .unwrap_or_default();
        change(&mut note);
        if shard.current.len() >= MAX_PER_GENERATION {
            shard.rotate();
        }
        shard.current.insert(id.into(), note);
        note
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, Shard> {
        let mut shard = self.shards[self.hasher.hash_one(id) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.rotated.elapsed() >= self.ttl {
            shard.rotate();
        }
        shard
    }
}

impl Shard {
    fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
        self.rotated = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taint_is_remembered_and_ids_are_separate() {
        let m = Memory::new(Duration::from_secs(60));
        m.update(Some("a"), |n| n.tainted = true);
        assert!(m.get(Some("a")).tainted);
        assert!(!m.get(Some("b")).tainted);
        assert_eq!(m.get(None), Note::default());
    }

    #[test]
    fn notes_age_out_after_two_generations() {
        let m = Memory::new(Duration::from_millis(20));
        m.update(Some("a"), |n| n.releases = 2);
        std::thread::sleep(Duration::from_millis(25));
        // One rotation: still known.
        assert_eq!(m.get(Some("a")).releases, 2);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(m.get(Some("a")).releases, 0);
    }

    #[test]
    fn a_flood_of_ids_stays_bounded() {
        let m = Memory::new(Duration::from_secs(60));
        for i in 0..(SHARDS * MAX_PER_GENERATION * 3) {
            m.update(Some(&i.to_string()), |n| n.tainted = true);
        }
        let held: usize = m
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum();
        assert!(held <= SHARDS * MAX_PER_GENERATION * 2, "{held}");
    }
}
