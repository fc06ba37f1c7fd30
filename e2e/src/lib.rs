//! Nothing but tests here: see `tests/` and the README of this crate's Cargo.toml.
