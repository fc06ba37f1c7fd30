//! The cluster-wide store: Redis or Redis Cluster, one Lua script per decision. The
//! `Store` trait, the Connect check order and the in-memory store are
//! `mxlimit_core::store`'s.

pub mod redis;

pub use redis::{RedisConfig, RedisStore};
