//! Generates the Modal gRPC client from proto/modal.proto (and the server trait when the
//! `server` feature is on: only the fake Modal uses it), with the protoc that
//! protoc-bin-vendored ships, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/modal.proto");
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(server)
        .compile_protos(&[PathBuf::from("proto/modal.proto")], &[PathBuf::from("proto")])?;
    Ok(())
}
