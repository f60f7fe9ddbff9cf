//! Reads JSON lines, CSV or Parquet files, from a local path or an object
//! store, straight into Arrow.
//!
//! With parallelism *p*, a JSON-lines or CSV file is cut into *p* byte
//! ranges, each extended to the next line boundary, so every instance
//! decodes its own share; a Parquet file is shared out by row group.

mod config;
pub(crate) mod lines;
mod parquet;
mod source;
#[cfg(test)]
mod tests;

pub use self::config::{CsvOptions, FileFormat, FileSourceConfig};
pub use self::source::FileSource;
