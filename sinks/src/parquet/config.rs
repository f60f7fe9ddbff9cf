//! The Parquet sink's settings.

use std::time::Duration;

use flumen_core::prelude::*;
use flumen_core::storage::StorageOptions;
use schemars::JsonSchema;
use serde::Deserialize;

use super::writer::ParquetSink;

/// Writes rows as Parquet files, partitioned Hive-style, committed with
/// checkpoints.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Where the table lives: a local directory, or an object-store URL
    /// (`s3://bucket/prefix`, `file:///data/bids`). Files go under it, in
    /// partition directories; files being written are staged under
    /// `_staging/` until committed.
    #[schemars(extend("format" = "path"))]
    pub path: String,

    /// Partition by these columns: `channel=mobile/`. The columns are
    /// stored in the path, not in the files.
    #[serde(default)]
    pub partition_by: Vec<String>,

    /// Partition by event time as well: `day` (`dt=2026-11-26/`) or `hour`
    /// (`dt=2026-11-26/hour=14/`), in UTC.
    #[serde(default)]
    pub time_partition: Option<TimePartition>,

    /// The time column `time_partition` reads. Default: the input's event
    /// time.
    #[serde(default)]
    pub time_column: Option<String>,

    /// Start a new file after this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,

    /// Start a new file once this many bytes are written to it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,

    /// Start a new file once the current one is this old (e.g. `5m`), so
    /// that a slow stream still lands in files of bounded age. Files become
    /// visible at the next checkpoint (or the end) all the same.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,

    /// Compression of the column chunks.
    #[serde(default)]
    pub compression: ParquetCompression,

    /// Rows per row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,

    /// How to reach an object store given as `path`.
    #[serde(default)]
    pub storage: StorageOptions,
}

/// Event-time partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimePartition {
    /// `dt=YYYY-MM-DD/`
    Day,
    /// `dt=YYYY-MM-DD/hour=HH/`
    Hour,
}

/// Parquet compression codecs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// Zstandard (level 3): small files, fast to read.
    #[default]
    Zstd,
    /// Snappy: faster to write, larger.
    Snappy,
    /// No compression.
    None,
}

fn default_max_rows() -> u64 {
    1_000_000
}
fn default_max_bytes() -> u64 {
    128 << 20
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_row_group_rows() -> usize {
    128 * 1024
}

impl ParquetSinkConfig {
    /// Parquet files under `path`, with every other setting at its default.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSinkConfig {
            path: path.into(),
            partition_by: Vec::new(),
            time_partition: None,
            time_column: None,
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            compression: ParquetCompression::default(),
            row_group_rows: default_row_group_rows(),
            storage: StorageOptions::default(),
        }
    }

    /// Whether `path` is on the local filesystem.
    pub(super) fn is_local(&self) -> bool {
        match url::Url::parse(&self.path) {
            Ok(url) if url.scheme().len() > 1 => url.scheme() == "file",
            _ => true,
        }
    }
}

impl SinkConfig for ParquetSinkConfig {
    const TYPE: &str = "parquet";
    const DESCRIPTION: &str = "Writes rows as Parquet files to a directory or object store, partitioned Hive-style, committed with checkpoints.";
    type Sink = ParquetSink;

    /// Checks the settings and returns the sink.
    fn build(&self) -> Result<ParquetSink> {
        let positive = |key: &str, value: u64| {
            if value == 0 {
                Err(Error::config(key, "must be more than zero"))
            } else {
                Ok(())
            }
        };
        positive("max_rows", self.max_rows)?;
        positive("max_bytes", self.max_bytes)?;
        positive("row_group_rows", self.row_group_rows as u64)?;
        if self.max_age.is_zero() {
            return Err(Error::config("max_age", "must be more than zero"));
        }
        if self.time_column.is_some() && self.time_partition.is_none() {
            return Err(Error::config(
                "time_column",
                "is only used with `time_partition`",
            ));
        }
        let location = flumen_core::storage::resolve(&self.path, &self.storage, "path")?;
        Ok(ParquetSink::new(self.clone(), location))
    }
}
