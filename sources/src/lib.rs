//! Flumen's sources: Kafka, HTTP ingest, the Nexmark event generator,
//! files and standard input.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
mod json_fit;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;
pub mod stdin;

pub use self::file::{FileSource, FileSourceConfig};
#[cfg(feature = "http")]
pub use self::http::{HttpSource, HttpSourceConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSource, KafkaSourceConfig};
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
    #[cfg(feature = "http")]
    ComponentType::source::<HttpSourceConfig>(),
];
