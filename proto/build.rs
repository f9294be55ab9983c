//! Compiles `proto/geppetto/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates the tonic clients and servers from the result. The
//! descriptor set is kept in OUT_DIR: the puppeteer serves it by reflection.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "proto/geppetto/v1/common.proto",
    "proto/geppetto/v1/puppet.proto",
    "proto/geppetto/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("geppetto_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".geppetto.v1.AppendLogRequest.data")
        .bytes(".geppetto.v1.LogChunk.data")
        .bytes(".geppetto.v1.ReadLogResponse.data")
        .compile_fds(fds)?;
    Ok(())
}
