//! Flumen's sinks: standard output, blackhole and files.

pub mod blackhole;
pub mod encoding;
pub mod file;
pub mod stdout;

pub use self::blackhole::{BlackholeConfig, BlackholeSink};
pub use self::encoding::TextFormat;
pub use self::file::{FileSink, FileSinkConfig};
pub use self::stdout::{StdoutConfig, StdoutFormat, StdoutSink};
