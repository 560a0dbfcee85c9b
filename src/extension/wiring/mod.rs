//! The decide wiring as pure xDS transforms, one file per part: what the
//! Extension Server installs into Envoy Gateway's output, and what
//! `make wiring` writes into the reference bootstrap ([`outputs`]).
//!
//! - [`retry_policy`]: the route's retry policy and the client headers it
//!   removes;
//! - [`final_filter`]: `mulligan.final`, on the listener;
//! - [`attempt_filter`]: `mulligan.attempt` and `mulligan.strip`, upstream
//!   filters of the app cluster;
//! - [`cluster`]: the app cluster's outlier, panic and circuit breaker
//!   settings, and mulligan's own cluster;
//! - [`hold`]: the hold (an endpoint, or an aggregate's member for EDS
//!   clusters) and its internal listeners;
//! - [`outputs`]: the files generated from all of the above, and
//!   [`standalone`]: the reference bootstrap, one of them.
//!
//! Each `install_*` function is idempotent: it finds what it installed
//! before by name and replaces it, so output fed back in comes out equal.
//! The names Envoy and mulligan share are in [`crate::names`].

pub mod attempt_filter;
pub mod cluster;
mod ext_proc;
pub mod final_filter;
pub mod hold;
pub mod outputs;
pub mod retry_policy;
pub mod standalone;

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
            HeaderValueOption, TypedExtensionConfig,
        },
        extensions::filters::network::http_connection_manager::v3::{http_filter, HttpFilter},
    },
    google::protobuf::{Any, UInt32Value},
};
use prost::{Message, Name};

pub use attempt_filter::install_upstream_filters;
pub use cluster::{
    install_cluster, install_eds_cluster, is_aggregate, mulligan_cluster, wired_inline_cluster,
    EdsWired,
};
pub use final_filter::install_listener;
pub use hold::{
    hold_answer_cluster, hold_answer_listener, hold_cluster, hold_listener, install_hold_endpoint,
};
pub use retry_policy::{forwarded_clusters, install_attempt_count, install_route};

/// Envoy's own names of the extensions the wiring uses.
mod envoy {
    pub const UPSTREAM_CODEC: &str = "envoy.filters.http.upstream_codec";
    pub const ROUTER: &str = "envoy.filters.http.router";
    pub const BUFFER: &str = "envoy.filters.http.buffer";
    pub const COMPOSITE: &str = "envoy.filters.http.composite";
    pub const EXT_PROC: &str = "envoy.filters.http.ext_proc";
    pub const HCM: &str = "envoy.filters.network.http_connection_manager";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
}

/// Where Envoy reaches mulligan's gRPC port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulliganAddress {
    pub host: String,
    pub port: u16,
}

/// Why a resource could not be wired; it is then left as it was.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("cluster {cluster}: its HttpProtocolOptions do not decode: {source}")]
    ProtocolOptions {
        cluster: String,
        source: prost::DecodeError,
    },
}

impl WiringError {
    /// The cluster left unwired.
    pub fn cluster(&self) -> &str {
        match self {
            Self::ProtocolOptions { cluster, .. } => cluster,
        }
    }
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn typed(name: &str, config: Any) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(config),
    }
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// `text` as an inline data source.
fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    }
}

/// Header `key: value`, replacing any `key` already there.
fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}
