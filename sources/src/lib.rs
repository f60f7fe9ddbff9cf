//! Flumen's sources: Kafka, Kinesis, HTTP ingest, the Nexmark event generator,
//! files and standard input.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
mod json_fit;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod nexmark;
#[cfg(any(feature = "kafka", feature = "kinesis"))]
pub mod payload;
pub mod stdin;

pub use self::file::{FileSource, FileSourceConfig};
#[cfg(feature = "http")]
pub use self::http::{HttpSource, HttpSourceConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSource, KafkaSourceConfig};
#[cfg(feature = "kinesis")]
pub use self::kinesis::{KinesisSource, KinesisSourceConfig};
pub use self::nexmark::{NexmarkConfig, NexmarkSource};
pub use self::stdin::{StdinSource, StdinSourceConfig};

use flumen_core::catalog::ComponentType;

/// The sources pipeline files can name, one line each.
pub const COMPONENTS: &[ComponentType] = &[
    ComponentType::source::<NexmarkConfig>(),
    ComponentType::source::<FileSourceConfig>(),
    ComponentType::source::<StdinSourceConfig>(),
    #[cfg(feature = "kafka")]
    ComponentType::source::<KafkaSourceConfig>(),
    #[cfg(feature = "kinesis")]
    ComponentType::source::<KinesisSourceConfig>(),
    #[cfg(feature = "http")]
    ComponentType::source::<HttpSourceConfig>(),
];
