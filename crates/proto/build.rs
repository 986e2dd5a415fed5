//! Code generation only: compiles `proto/` in Rust (protox, so no `protoc` is needed), generates
//! the tonic server and client, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The contract lives at the top of the repository, where callers look for it.
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile(["snapgate/v1/snapgate.proto"], [&proto])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("snapgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SnapgateCodec")
        .compile_fds(fds)?;
    Ok(())
}
