//! Generates the Modal gRPC client (and the server trait the fake Modal implements) from
//! proto/modal.proto, with the protoc that protoc-bin-vendored ships, so no system protoc
//! is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/modal.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[PathBuf::from("proto/modal.proto")], &[PathBuf::from("proto")])?;
    Ok(())
}
