//! The real-Envoy test rig, shared by the integration tests, benches and the
//! `make run` sandbox (through `#[path]`):
//! - [`envoy`]: starts the pinned Envoy binary on free loopback ports;
//! - [`mulligan`]: starts the mulligan binary and talks to its admin port;
//! - [`pods`]: upstream "pods" whose lifecycle a test flips;
//! - [`client`]: HTTP/1.1 and HTTP/2 clients;
//! - [`render`]: fills the `${NAME}` placeholders of `envoy-config/`.
#![allow(dead_code)]

pub mod client;
pub mod envoy;
pub mod mulligan;
pub mod pods;
pub mod render;

/// Deterministic, position-dependent bytes: a shifted or truncated copy never
/// compares equal.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// Root of the repository (for `envoy-config/` and `.tools/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
