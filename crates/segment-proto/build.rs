//! Compiles the agent's protobuf API and writes the descriptor set that
//! server reflection serves, so grpcurl needs no .proto file.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // The .proto files stay at the repository's top (`proto/`), where the
    // API's users find them.
    let protos = [
        "../../proto/segment/agent/v1/agent.proto",
        "../../proto/segment/controlplane/v1/controlplane.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("segment_descriptor.bin"))
        .compile_protos(&protos, &["../../proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
