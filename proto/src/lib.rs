//! Geppetto's gRPC API, package `geppetto.v1`, compiled for Rust.
//!
//! The `.proto` files under `proto/` are the contract: every client, in any
//! language, speaks them. This crate also holds [`client`], the one HTTPS
//! transport (gRPC-web over HTTP/1.1 or native gRPC over HTTP/2, custom CA,
//! bearer token, HTTP CONNECT proxies: [`proxy`]) shared by the puppet and
//! the CLI.

pub mod client;
pub mod codec;
pub mod http1;
pub mod proxy;
pub mod ticket;
pub mod units;

/// The generated messages, clients and servers of `geppetto.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("geppetto.v1");
    include!(concat!(env!("OUT_DIR"), "/geppetto_directions.rs"));
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/geppetto_descriptor.bin"));
