//! Flumen's sources: Kafka, the Nexmark event generator and files.

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;

pub use self::file::{FileSource, FileSourceConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSource, KafkaSourceConfig};
pub use self::nexmark::{NexmarkConfig, NexmarkSource};
