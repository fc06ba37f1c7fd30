#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mxlimit_fuzz::agent_toml(data));
