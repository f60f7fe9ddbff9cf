//! Text encodings shared by the sinks that write bytes.

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use flumen_core::writable::split_writable;
use serde::Deserialize;

/// How a sink turns batches into text.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// One JSON object per row and line.
    #[default]
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

impl TextFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            TextFormat::Json => "jsonl",
            TextFormat::Csv => "csv",
        }
    }
}

/// Encodes batches as one text stream (a CSV header is written once).
#[derive(Debug)]
pub struct Encoder {
    format: TextFormat,
    wrote_header: bool,
}

impl Encoder {
    /// An encoder for `format`.
    pub fn new(format: TextFormat) -> Self {
        Encoder {
            format,
            wrote_header: false,
        }
    }

    /// Appends the encoding of `batch` to `out`, but for the rows holding
    /// a value no text can show (see [`flumen_core::writable`]), which it
    /// returns rejected.
    pub fn encode(&mut self, batch: RecordBatch, out: &mut Vec<u8>) -> Result<Vec<Rejected>> {
        let (batch, rejected) = split_writable(batch)?;
        let batch = &batch;
        match self.format {
            TextFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(out);
                writer.write(batch)?;
                writer.finish()?;
            }
            TextFormat::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(!self.wrote_header)
                    .build(out);
                writer.write(batch)?;
                self.wrote_header = true;
            }
        }
        Ok(rejected)
    }
}
