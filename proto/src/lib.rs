//! The recsys gRPC protocol, generated from `proto/recsys/v1/*.proto`.
//!
//! Every service (gateway, retrieval node, ranking node) and every client uses these
//! types; the descriptor set lets servers offer gRPC reflection so `grpcurl` works
//! without the `.proto` files.

pub mod checks;
pub mod codec;
pub mod limits;
mod names;

/// `package recsys.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("recsys.v1");
}

/// Encoded `FileDescriptorSet` of all recsys protos, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recsys_descriptor");
