//! Flumen's sinks: standard output, blackhole, files and Parquet.

pub mod blackhole;
pub mod encoding;
pub mod file;
pub mod parquet;
pub mod stdout;

pub use self::blackhole::{BlackholeConfig, BlackholeSink};
pub use self::encoding::TextFormat;
pub use self::file::{FileSink, FileSinkConfig};
pub use self::parquet::{ParquetSink, ParquetSinkConfig};
pub use self::stdout::{StdoutConfig, StdoutFormat, StdoutSink};
