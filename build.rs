//! Builds mulligan's own control API (`proto/mulligan/v1`), and the service
//! stubs of Envoy Gateway's Extension Server API (`proto/envoygateway`),
//! whose messages are declared in `src/extension/api.rs` around
//! `envoy-types`' Rust types.
//!
//! protoc comes from the `protoc-bin-vendored` crate so that a fresh machine
//! needs no system package to build mulligan.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/mulligan/v1/lifecycle.proto"], &["proto"])?;
    tonic_build::manual::Builder::new().compile(&[envoy_gateway_extension()]);
    Ok(())
}

/// `envoygateway.extension.EnvoyGatewayExtension`: six unary hooks, each
/// `<Hook>Request` -> `<Hook>Response` in `crate::extension::api::raw`
/// (resources kept as bytes, so what the server leaves alone goes back
/// byte for byte).
fn envoy_gateway_extension() -> tonic_build::manual::Service {
    let hooks = [
        ("post_route_modify", "PostRouteModify"),
        ("post_virtual_host_modify", "PostVirtualHostModify"),
        ("post_http_listener_modify", "PostHTTPListenerModify"),
        ("post_cluster_modify", "PostClusterModify"),
        ("post_endpoints_modify", "PostEndpointsModify"),
        ("post_translate_modify", "PostTranslateModify"),
    ];
    let mut service = tonic_build::manual::Service::builder()
        .name("EnvoyGatewayExtension")
        .package("envoygateway.extension");
    for (name, route) in hooks {
        service = service.method(
            tonic_build::manual::Method::builder()
                .name(name)
                .route_name(route)
                .input_type(format!("crate::extension::api::raw::{route}Request"))
                .output_type(format!("crate::extension::api::raw::{route}Response"))
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        );
    }
    service.build()
}
