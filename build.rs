//! Rebuilds the binary when the embedded Python package changes, and generates the gRPC
//! services from proto/ with a protobuf compiler written in Rust (no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=python/torchyard");
    println!("cargo:rerun-if-changed=proto");
    let protos = [
        "proto/torchserve/inference.proto",
        "proto/torchserve/management.proto",
        "proto/torchyard/workflow.proto",
        "proto/kserve/open_inference_grpc.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .bytes(".")
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
