//! The `mxlimit.v1` API: protobuf messages and the tonic client and server of the
//! `Limiter` service. Every other mxlimit crate and any custom MTA in Rust uses this crate.
//! It also holds the one duration syntax the servers and the `mxlimit` CLI share.

pub mod codec;
pub mod duration;

/// Generated code of the `mxlimit.v1` package.
pub mod v1 {
    tonic::include_proto!("mxlimit.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mxlimit_descriptor");

/// Where the `Limiter` service listens by default (on loopback), and so where agents
/// and the CLI look for it unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7525";
