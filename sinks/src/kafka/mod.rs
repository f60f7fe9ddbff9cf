//! The Kafka sink: one message per row, at least once with an idempotent
//! producer, or exactly once with Kafka transactions committed together
//! with checkpoints.

mod config;
mod sink;

pub use self::config::{Compression, Delivery, KafkaSinkConfig};
pub use self::sink::KafkaSink;
pub use crate::message::{AvroWriteOptions, ValueFormat};
