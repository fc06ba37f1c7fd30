//! Generates the tonic client and server for `mxlimit.v1` with a vendored `protoc`,
//! so that a fresh machine needs no system protobuf compiler.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The contract's `Connect` RPC would clash with the generated client's
        // `connect(dst)` constructor; callers build a `Channel` and use `new`.
        .build_transport(false)
        // Garbage from a caller is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(out.join("mxlimit_descriptor.bin"))
        .compile_protos(
            &["mxlimit/v1/limiter.proto", "mxlimit/v1/admin.proto"],
            &["."],
        )?;
    Ok(())
}
