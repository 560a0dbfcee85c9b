//! Envoy Gateway's Extension Server API (`envoygateway.extension`), as Rust.
//!
//! The wire definition is vendored in `proto/envoygateway/proto/extension/`.
//! Its messages only wrap Envoy's own resources, so they are declared here
//! with prost derives around `envoy-types`' Rust types (same field numbers,
//! same wire format) instead of generating a second copy of Envoy's protos.
//! `tests/extension/` checks the two definitions agree field by field.
//! The service stubs come from tonic's manual codegen in `build.rs`.

// The service code tonic-build generates (included below) is long by
// nature; the lint that keeps src/ functions short is for hand-written code.
#![allow(clippy::too_many_lines)]
#![allow(missing_docs)]

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::Cluster,
        endpoint::v3::ClusterLoadAssignment,
        listener::v3::Listener,
        route::v3::{Route, RouteConfiguration, VirtualHost},
    },
    extensions::transport_sockets::tls::v3::Secret,
};

include!(concat!(
    env!("OUT_DIR"),
    "/envoygateway.extension.EnvoyGatewayExtension.rs"
));

/// A Kubernetes object (an extension resource or policy) as JSON, the way
/// Envoy Gateway marshals an `unstructured.Unstructured`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtensionResource {
    #[prost(bytes = "vec", tag = "1")]
    pub unstructured_bytes: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostRouteExtensionContext {
    #[prost(message, repeated, tag = "1")]
    pub extension_resources: Vec<ExtensionResource>,
    #[prost(string, repeated, tag = "2")]
    pub hostnames: Vec<String>,
    /// Policies targeting the HTTPRoute (or one of its rules) of this route.
    #[prost(message, repeated, tag = "3")]
    pub extension_policies: Vec<ExtensionResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostVirtualHostExtensionContext {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostClusterExtensionContext {
    #[prost(message, repeated, tag = "1")]
    pub backend_extension_resources: Vec<ExtensionResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostEndpointsExtensionContext {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostHTTPListenerExtensionContext {
    #[prost(message, repeated, tag = "1")]
    pub extension_resources: Vec<ExtensionResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostTranslateExtensionContext {
    /// Policies targeting Gateways (or their listeners).
    #[prost(message, repeated, tag = "1")]
    pub extension_resources: Vec<ExtensionResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostRouteModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub route: Option<Route>,
    #[prost(message, optional, tag = "2")]
    pub post_route_context: Option<PostRouteExtensionContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostRouteModifyResponse {
    #[prost(message, optional, tag = "1")]
    pub route: Option<Route>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostClusterModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub cluster: Option<Cluster>,
    #[prost(message, optional, tag = "2")]
    pub post_cluster_context: Option<PostClusterExtensionContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostClusterModifyResponse {
    #[prost(message, optional, tag = "1")]
    pub cluster: Option<Cluster>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostEndpointsModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub load_assignment: Option<ClusterLoadAssignment>,
    #[prost(message, optional, tag = "2")]
    pub post_endpoints_context: Option<PostEndpointsExtensionContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostEndpointsModifyResponse {
    #[prost(message, optional, tag = "1")]
    pub load_assignment: Option<ClusterLoadAssignment>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostVirtualHostModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub virtual_host: Option<VirtualHost>,
    #[prost(message, optional, tag = "2")]
    pub post_virtual_host_context: Option<PostVirtualHostExtensionContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostVirtualHostModifyResponse {
    #[prost(message, optional, tag = "1")]
    pub virtual_host: Option<VirtualHost>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostHTTPListenerModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub listener: Option<Listener>,
    #[prost(message, optional, tag = "2")]
    pub post_listener_context: Option<PostHTTPListenerExtensionContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostHTTPListenerModifyResponse {
    #[prost(message, optional, tag = "1")]
    pub listener: Option<Listener>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostTranslateModifyRequest {
    #[prost(message, optional, tag = "1")]
    pub post_translate_context: Option<PostTranslateExtensionContext>,
    #[prost(message, repeated, tag = "2")]
    pub clusters: Vec<Cluster>,
    #[prost(message, repeated, tag = "3")]
    pub secrets: Vec<Secret>,
    #[prost(message, repeated, tag = "4")]
    pub listeners: Vec<Listener>,
    #[prost(message, repeated, tag = "5")]
    pub routes: Vec<RouteConfiguration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PostTranslateModifyResponse {
    #[prost(message, repeated, tag = "1")]
    pub clusters: Vec<Cluster>,
    #[prost(message, repeated, tag = "2")]
    pub secrets: Vec<Secret>,
    #[prost(message, repeated, tag = "3")]
    pub listeners: Vec<Listener>,
    #[prost(message, repeated, tag = "4")]
    pub routes: Vec<RouteConfiguration>,
}

/// The same messages with every Envoy resource kept as its encoded bytes
/// (a message field and a bytes field share one wire format). The server
/// speaks these: a resource it leaves alone goes back byte for byte, with
/// any field newer than envoy-types knows, and is never decoded at all if
/// nothing needs to read it (secrets).
pub mod raw {
    use super::{
        PostClusterExtensionContext, PostEndpointsExtensionContext,
        PostHTTPListenerExtensionContext, PostRouteExtensionContext, PostTranslateExtensionContext,
        PostVirtualHostExtensionContext,
    };

    /// A request or response with one optional resource and its context.
    macro_rules! single {
        ($req:ident, $resp:ident, $field:ident, $ctx_field:ident, $ctx:ty) => {
            #[derive(Clone, PartialEq, prost::Message)]
            pub struct $req {
                #[prost(bytes = "vec", optional, tag = "1")]
                pub $field: Option<Vec<u8>>,
                #[prost(message, optional, tag = "2")]
                pub $ctx_field: Option<$ctx>,
            }

            #[derive(Clone, PartialEq, prost::Message)]
            pub struct $resp {
                #[prost(bytes = "vec", optional, tag = "1")]
                pub $field: Option<Vec<u8>>,
            }
        };
    }

    single!(
        PostRouteModifyRequest,
        PostRouteModifyResponse,
        route,
        post_route_context,
        PostRouteExtensionContext
    );
    single!(
        PostClusterModifyRequest,
        PostClusterModifyResponse,
        cluster,
        post_cluster_context,
        PostClusterExtensionContext
    );
    single!(
        PostEndpointsModifyRequest,
        PostEndpointsModifyResponse,
        load_assignment,
        post_endpoints_context,
        PostEndpointsExtensionContext
    );
    single!(
        PostVirtualHostModifyRequest,
        PostVirtualHostModifyResponse,
        virtual_host,
        post_virtual_host_context,
        PostVirtualHostExtensionContext
    );
    single!(
        PostHTTPListenerModifyRequest,
        PostHTTPListenerModifyResponse,
        listener,
        post_listener_context,
        PostHTTPListenerExtensionContext
    );

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PostTranslateModifyRequest {
        #[prost(message, optional, tag = "1")]
        pub post_translate_context: Option<PostTranslateExtensionContext>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub clusters: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        pub secrets: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "4")]
        pub listeners: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "5")]
        pub routes: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PostTranslateModifyResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub clusters: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub secrets: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        pub listeners: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "4")]
        pub routes: Vec<Vec<u8>>,
    }
}
