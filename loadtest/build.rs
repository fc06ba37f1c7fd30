//! Generates the tonic client (and, for the tests, the server) of Envoy's rate limit
//! service from loadtest's trimmed copy of its proto, with a vendored `protoc` as
//! `proto/build.rs` does for mxlimit's own API.
use std::env;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .compile_protos(&["envoy/service/ratelimit/v3/rls.proto"], &["proto"])?;
    Ok(())
}
