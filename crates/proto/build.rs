//! Code generation only: compiles `proto/` in Rust (protox, so no `protoc` is needed), generates
//! the tonic server and client, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The contract lives at the top of the repository, where callers look for it.
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut compiler = protox::Compiler::new([&proto])?;
    // Source info keeps the comments, which reflection serves (grpcurl describe shows them).
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("snapgate/v1/snapgate.proto")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded from the compiler's own descriptors: prost's `FileDescriptorSet` would drop the
    // `google.api.http` options (extensions), which the HTTP/JSON routes and reflection need.
    std::fs::write(out_dir.join("snapgate_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SnapgateCodec")
        .compile_fds(fds)?;
    Ok(())
}
