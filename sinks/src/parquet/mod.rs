//! Writes rows as Parquet files to a local directory or any object store,
//! in Hive-style partitions, with two-phase commits: files are uploaded
//! under a staging prefix as they are written (multipart, so memory stays
//! bounded) and appear under their final names only on commit.

mod config;
mod partition;
mod writer;

pub use self::config::{ParquetCompression, ParquetSinkConfig, TimePartition};
pub use self::writer::ParquetSink;
