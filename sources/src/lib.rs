//! Flumen's sources: Kafka, HTTP ingest, the Nexmark event generator and
//! files.

pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;

pub use self::file::{FileSource, FileSourceConfig};
#[cfg(feature = "http")]
pub use self::http::{HttpSource, HttpSourceConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSource, KafkaSourceConfig};
pub use self::nexmark::{NexmarkConfig, NexmarkSource};

use flumen_core::catalog::ComponentType;

/// The sources pipeline files can name, one line each.
pub const COMPONENTS: &[ComponentType] = &[
    ComponentType::source::<NexmarkConfig>(),
    ComponentType::source::<FileSourceConfig>(),
    #[cfg(feature = "kafka")]
    ComponentType::source::<KafkaSourceConfig>(),
    #[cfg(feature = "http")]
    ComponentType::source::<HttpSourceConfig>(),
];
