//! Flumen's clients of outside systems: what a system's source and sink
//! share (connection and security settings, error mapping, schemas), in
//! one module per system, each behind the feature of the same name, and
//! what Flumen's HTTP servers share (`http`, behind `http-server`).
//!
//! Sources, operators and sinks depend on `flumen-core` and on this crate,
//! never on each other.

#[cfg(feature = "avro")]
pub mod avro;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "http-server")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "http-client")]
pub mod retry;
