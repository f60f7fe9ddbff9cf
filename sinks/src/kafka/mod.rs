//! The Kafka sink: one message per row, at least once with an idempotent
//! producer, or exactly once with Kafka transactions committed together
//! with checkpoints.

mod config;
mod encode;
mod sink;

pub use self::config::{
    AvroWriteOptions, Compression, Delivery, KafkaSinkConfig, KafkaValueFormat,
};
pub use self::sink::KafkaSink;
