//! Generated Rust types and gRPC stubs for the governor sidecar's public API,
//! `proto/governor/v1/governor.proto` (package `governor.v1`).
//!
//! Both the sidecar and the Rust client build on this crate, so the two can
//! never disagree about the wire format.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// The `governor.v1` package.
pub mod v1 {
    tonic::include_proto!("governor.v1");
}

/// The encoded `FileDescriptorSet` of `governor.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/governor_descriptor.bin"));
