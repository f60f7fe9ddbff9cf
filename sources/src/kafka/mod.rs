//! The Kafka source: each instance is a consumer group member; processes
//! that share a group share the topics' partitions.
//!
//! Read positions are per-partition offsets recorded in checkpoints; they
//! are committed to the group only once a checkpoint is complete, and a
//! rebalance that takes partitions away first waits for a checkpoint that
//! covers everything read from them.
//!
//! With `tasks: true` the group hands out tasks instead ([`tasks`]): each
//! partition is a run of the whole pipeline, whose checkpoints (state and
//! offset) follow the partition from process to process.

mod config;
mod consumer;
mod position;
mod repartition;
mod sample;
mod source;
mod tasks;
#[cfg(test)]
mod tests;

pub use self::config::{KafkaSourceConfig, MetadataColumns, StartFrom, StopAt};
pub use self::source::KafkaSource;
pub use crate::payload::{AvroOptions, MessageFormat};
pub use flumen_clients::kafka::{KafkaSecurity, SecurityProtocol};
