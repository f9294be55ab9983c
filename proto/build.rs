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
    std::fs::write(out_dir.join("geppetto_directions.rs"), directions(&fds))?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .bytes(".geppetto.v1.AppendLogRequest.data")
        .bytes(".geppetto.v1.LogChunk.data")
        .bytes(".geppetto.v1.ReadLogResponse.data")
        .compile_fds(fds)?;
    Ok(())
}

/// `impl Direction` for every message a method takes or returns: whether a
/// server decodes it (a request), for [`crate::codec`] (in `src/codec.rs`).
fn directions(fds: &prost_types::FileDescriptorSet) -> String {
    use std::collections::BTreeMap;
    let mut types: BTreeMap<String, bool> = BTreeMap::new();
    let mut streamed_out = Vec::new();
    for service in fds.file.iter().flat_map(|f| &f.service) {
        for method in &service.method {
            types.insert(method.input_type().to_string(), true);
            types
                .entry(method.output_type().to_string())
                .or_insert(false);
            if method.server_streaming() {
                streamed_out.push(method.output_type().to_string());
            }
        }
    }
    let mut code = String::new();
    for (name, request) in &types {
        // A request that is also streamed back could not be told apart.
        assert!(
            !(*request && streamed_out.contains(name)),
            "{name} is both a request and a streamed answer"
        );
        let rust = name
            .strip_prefix(".geppetto.v1.")
            .unwrap_or_else(|| panic!("{name} is outside geppetto.v1"));
        code.push_str(&format!(
            "impl crate::codec::Direction for {rust} {{ const REQUEST: bool = {request}; }}\n"
        ));
    }
    code
}
