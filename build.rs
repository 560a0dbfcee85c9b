//! Builds mulligan's own control API (`proto/mulligan/v1`).
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
    Ok(())
}
