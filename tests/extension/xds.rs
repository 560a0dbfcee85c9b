//! Envoy Gateway's fixture translations as the Extension Server's hook
//! requests (the reading itself is `rig::xds`).

use mulligan::extension::api::{
    ExtensionResource, PostTranslateExtensionContext, PostTranslateModifyRequest,
};
use serde_json::Value;

pub use rig::xds::{from_json, pool, to_json};

/// One translation: the hook request (no policies yet) and the endpoints
/// Envoy Gateway sends over EDS beside it.
#[derive(Clone)]
pub struct Translation {
    pub name: String,
    pub request: PostTranslateModifyRequest,
    pub endpoints: Vec<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>,
}

impl Translation {
    /// The request with these policies (Kubernetes objects as JSON) in its
    /// context, the way Envoy Gateway delivers Gateway-targeted policies.
    pub fn with_policies(&self, policies: &[Value]) -> PostTranslateModifyRequest {
        let mut req = self.request.clone();
        req.post_translate_context = Some(PostTranslateExtensionContext {
            extension_resources: policies
                .iter()
                .map(|p| ExtensionResource {
                    unstructured_bytes: serde_json::to_vec(p).expect("json"),
                })
                .collect(),
        });
        req
    }
}

/// Every translation in the fixtures.
pub fn translations() -> Vec<Translation> {
    rig::xds::translations()
        .into_iter()
        .map(|t| Translation {
            name: t.name,
            request: PostTranslateModifyRequest {
                clusters: t.clusters,
                listeners: t.listeners,
                routes: t.routes,
                ..Default::default()
            },
            endpoints: t.endpoints,
        })
        .collect()
}
