//! Flumen's sinks: standard output, blackhole, files, Parquet and Kafka.

pub mod blackhole;
pub mod encoding;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod parquet;
pub mod stdout;

pub use self::blackhole::{BlackholeConfig, BlackholeSink};
pub use self::encoding::TextFormat;
pub use self::file::{FileSink, FileSinkConfig};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSink, KafkaSinkConfig};
pub use self::parquet::{ParquetSink, ParquetSinkConfig};
pub use self::stdout::{StdoutConfig, StdoutFormat, StdoutSink};
