//! Generates the Pub/Sub API client and server from `proto/eventbus/v1/pubsub_api.proto`.
//!
//! protox parses the proto in Rust, so the build needs no `protoc` on the machine.
#![allow(clippy::print_stdout)] // a build script talks to cargo on stdout

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let proto = root.join("eventbus/v1/pubsub_api.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
