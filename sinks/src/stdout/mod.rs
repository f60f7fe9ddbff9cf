//! Prints batches to standard output.

use std::io::Write;

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use serde::Deserialize;

use crate::encoding::{Encoder, TextFormat};

/// How the stdout sink prints.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// CSV with a header line.
    Csv,
    /// A table per batch, for people.
    Table,
}

/// Prints every row to standard output.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json` (lines), `csv` or `table`.
    #[serde(default)]
    pub format: StdoutFormat,
    /// Print at most this many rows, then count the rest silently. Unset:
    /// print everything.
    #[serde(default)]
    pub limit: Option<u64>,
}

impl SinkConfig for StdoutConfig {
    const TYPE: &str = "stdout";
    const DESCRIPTION: &str = "Prints rows to standard output.";
    type Sink = StdoutSink;

    /// Checks the settings and returns the sink.
    fn build(&self) -> Result<StdoutSink> {
        Ok(StdoutSink {
            config: self.clone(),
        })
    }
}

/// A sink printing to standard output; runs as a single instance so lines
/// never interleave.
#[derive(Debug, Clone)]
pub struct StdoutSink {
    config: StdoutConfig,
}

impl SinkFactory for StdoutSink {
    fn create(&self, _instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let encoder = match self.config.format {
            StdoutFormat::Json => Some(Encoder::new(TextFormat::Json)),
            StdoutFormat::Csv => Some(Encoder::new(TextFormat::Csv)),
            StdoutFormat::Table => None,
        };
        Ok(Box::new(StdoutInstance {
            encoder,
            left: self.config.limit.unwrap_or(u64::MAX),
            buffer: Vec::new(),
            rejected: Vec::new(),
        }))
    }

    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
}

struct StdoutInstance {
    encoder: Option<Encoder>,
    left: u64,
    buffer: Vec<u8>,
    /// Rows of the last batch that could not be printed.
    rejected: Vec<Rejected>,
}

#[async_trait]
impl Sink for StdoutInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        if self.left == 0 {
            return Ok(());
        }
        let rows = (batch.num_rows() as u64).min(self.left);
        self.left -= rows;
        let batch = batch.slice(0, rows as usize);
        self.buffer.clear();
        self.rejected = match &mut self.encoder {
            Some(encoder) => encoder.encode(batch, &mut self.buffer)?,
            None => {
                let (batch, rejected) = flumen_core::writable::split_writable(batch)?;
                writeln!(
                    self.buffer,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&[batch])?
                )?;
                rejected
            }
        };
        let written = flumen_core::console::hide_display_while(|| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&self.buffer).and_then(|()| stdout.flush())
        });
        match written {
            // Piped into `head`: stop printing, keep the pipeline going.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.left = 0,
            other => other?,
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        match std::io::stdout().flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    }
}
