//! The HTTP ingest source: queue-based load leveling's front door.
//!
//! Clients `POST` events; each request is appended whole to a durable
//! buffer on disk ([`flumen_core::log`]) and answered `202 Accepted` only
//! once it is synced there, with an id whose status can be polled. The
//! pipeline reads the buffer at its own pace; its read position is part of
//! checkpoints, and a record leaves the buffer only once a checkpoint
//! covering it is complete, so an accepted event reaches exactly-once
//! sinks exactly once whatever crashes in between.
//!
//! The buffer is bounded: when it is full, ingest answers 503 with
//! `Retry-After` instead of accepting what it could not keep.

mod config;
mod events;
#[cfg(test)]
mod fuzz;
mod ids;
mod ingest;
mod keys;
mod source;

pub use self::config::{
    AuthConfig, HttpSourceConfig, IngestBufferConfig, RateLimitConfig, TlsConfig,
};
pub use self::source::HttpSource;
pub use flumen_clients::http::auth::sign;
