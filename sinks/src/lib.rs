//! Flumen's sinks: standard output, blackhole, files, Parquet, Kafka,
//! Kinesis, HTTP, key-value views and search indexes.

pub mod blackhole;
pub mod encoding;
pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[cfg(feature = "kv")]
pub mod kv;
#[cfg(any(feature = "kafka", feature = "kinesis"))]
mod message;
pub mod parquet;
#[cfg(feature = "search")]
pub mod search;
pub mod stdout;

pub use self::blackhole::{BlackholeConfig, BlackholeSink};
pub use self::encoding::TextFormat;
pub use self::file::{FileSink, FileSinkConfig};
#[cfg(feature = "http")]
pub use self::http::{HttpSink, HttpSinkConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSink, KafkaSinkConfig};
#[cfg(feature = "kinesis")]
pub use self::kinesis::{KinesisSink, KinesisSinkConfig};
#[cfg(feature = "kv")]
pub use self::kv::{KvSink, KvSinkConfig};
pub use self::parquet::{ParquetSink, ParquetSinkConfig};
#[cfg(feature = "search")]
pub use self::search::{SearchSink, SearchSinkConfig};
pub use self::stdout::{StdoutConfig, StdoutFormat, StdoutSink};

use flumen_core::catalog::ComponentType;

/// The sinks pipeline files can name, one line each.
pub const COMPONENTS: &[ComponentType] = &[
    ComponentType::sink::<StdoutConfig>(),
    ComponentType::sink::<BlackholeConfig>(),
    ComponentType::sink::<FileSinkConfig>(),
    ComponentType::sink::<ParquetSinkConfig>(),
    #[cfg(feature = "kafka")]
    ComponentType::sink::<KafkaSinkConfig>(),
    #[cfg(feature = "kinesis")]
    ComponentType::sink::<KinesisSinkConfig>(),
    #[cfg(feature = "http")]
    ComponentType::sink::<HttpSinkConfig>(),
    #[cfg(feature = "kv")]
    ComponentType::sink::<KvSinkConfig>(),
    #[cfg(feature = "search")]
    ComponentType::sink::<SearchSinkConfig>(),
];
