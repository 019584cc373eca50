//! Compiles `governor/v1/governor.proto` with protox, a pure-Rust protobuf
//! compiler, so that a fresh machine needs no `protoc`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "governor/v1/governor.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;

    // The encoded descriptor set feeds gRPC server reflection.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("governor_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
