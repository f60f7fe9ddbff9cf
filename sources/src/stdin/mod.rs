//! Reads records from standard input, JSON lines or CSV, until it ends:
//! `flumen run pipeline.yaml < events.jsonl`, or the end of a pipe.
//!
//! Lines are decoded as the file source decodes them (the same decoder, the
//! same rejection of a line that does not fit the schema). Standard input
//! cannot be read again, so the source keeps no position for checkpoints.

use arrow::datatypes::SchemaRef;
use flumen_core::dead_letter::Rejected;
use flumen_core::file_format::FileFormat;
use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;
use serde::Deserialize;

use crate::file::lines::{DecoderSpec, LineSplit, LineSplitReader};

pub use flumen_core::file_format::CsvOptions;

/// Reads records from standard input until it ends.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// `json` (one object per line, the default) or `csv`.
    #[serde(default)]
    pub format: StdinFormat,

    /// Columns and types, e.g. `{ id: int64, text: string }`. Fields not
    /// declared are ignored.
    pub schema: SchemaSpec,

    /// Rows per batch: a batch is emitted when it is full or the input
    /// ends.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// CSV options (header, delimiter).
    #[serde(default)]
    pub csv: CsvOptions,
}

/// How standard input is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StdinFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Comma-separated values (see `csv`).
    Csv,
}

fn default_batch_size() -> usize {
    1024
}

impl SourceConfig for StdinSourceConfig {
    const TYPE: &str = "stdin";
    const DESCRIPTION: &str = "Reads JSON lines or CSV from standard input until it ends (`flumen run p.yaml < events.jsonl`).";
    type Source = StdinSource;

    fn build(&self) -> Result<StdinSource> {
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        Ok(StdinSource {
            config: self.clone(),
            schema: self.schema.to_schema("schema")?,
        })
    }
}

/// The source reading standard input.
#[derive(Debug, Clone)]
pub struct StdinSource {
    config: StdinSourceConfig,
    schema: SchemaRef,
}

impl SourceFactory for StdinSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// There is one standard input.
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }

    fn create(&self, _instance: InstanceInfo) -> Result<Box<dyn Source>> {
        let format = match self.config.format {
            StdinFormat::Json => FileFormat::Json,
            StdinFormat::Csv => FileFormat::Csv,
        };
        let spec = DecoderSpec {
            format,
            schema: self.schema.clone(),
            batch_size: self.config.batch_size,
            csv: self.config.csv.clone(),
        };
        let chunk_bytes = 64 << 10;
        let reader =
            LineSplitReader::new(LineSplit::stdin(chunk_bytes), spec, true, "stdin".into())?;
        Ok(Box::new(StdinInstance {
            reader: Box::new(reader),
        }))
    }
}

struct StdinInstance {
    reader: Box<LineSplitReader>,
}

#[async_trait]
impl Source for StdinInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        Ok(match self.reader.next_batch().await? {
            Some(batch) => SourceStep::Batch(batch),
            None => SourceStep::Finished,
        })
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        self.reader.take_rejected()
    }
}
