//! Compiles the .proto files with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "im/v1/packet.proto",
        "im/v1/internal.proto",
        "im/v1/logic.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // `bytes` fields become `bytes::Bytes`, so packets decode without copying payloads.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
