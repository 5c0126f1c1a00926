//! Compiles `recsys/v1/*.proto` with protoc into Rust and a descriptor set for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "recsys/v1/common.proto",
        "recsys/v1/retrieval.proto",
        "recsys/v1/ranking.proto",
        "recsys/v1/gateway.proto",
        "recsys/v1/catalog.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    if std::env::var_os("PROTOC").is_none() && which_protoc().is_none() {
        return Err(
            "protoc not found: run `make deps` or install Debian's protobuf-compiler \
             (apt-get install protobuf-compiler), or set PROTOC to its path"
                .into(),
        );
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Prost's codec, but an undecodable request is INVALID_ARGUMENT (src/codec.rs).
        .codec_path("crate::codec::RecsysCodec")
        .file_descriptor_set_path(out_dir.join("recsys_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}

fn which_protoc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("protoc"))
        .find(|candidate| candidate.is_file())
}
