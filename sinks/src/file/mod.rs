//! Writes rows to a local file as JSON lines or CSV.

use std::path::PathBuf;

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::encoding::{Encoder, TextFormat};

/// Writes rows to a local file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to write (replaced if it exists). With parallelism above 1
    /// this is a directory, and instance *i* writes `part-<i>.<ext>` in it.
    pub path: PathBuf,
    /// `json` (one object per line) or `csv`.
    #[serde(default)]
    pub format: TextFormat,
}

impl FileSinkConfig {
    /// JSON lines into `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            path: path.into(),
            format: TextFormat::Json,
        }
    }

    /// Checks the settings and returns the sink.
    pub fn build(&self) -> Result<FileSink> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config("path", "must not be empty"));
        }
        Ok(FileSink {
            config: self.clone(),
        })
    }
}

/// A sink writing JSON lines or CSV to local files.
#[derive(Debug, Clone)]
pub struct FileSink {
    config: FileSinkConfig,
}

impl FileSink {
    /// The file instance `instance` writes.
    pub fn path_of(&self, instance: InstanceInfo) -> PathBuf {
        if instance.parallelism == 1 {
            self.config.path.clone()
        } else {
            self.config.path.join(format!(
                "part-{}.{}",
                instance.index,
                self.config.format.extension()
            ))
        }
    }
}

impl SinkFactory for FileSink {
    fn create(&self, instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileInstance {
            path: self.path_of(instance),
            encoder: Encoder::new(self.config.format),
            file: None,
            buffer: Vec::new(),
        }))
    }
}

struct FileInstance {
    path: PathBuf,
    encoder: Encoder,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    buffer: Vec<u8>,
}

impl FileInstance {
    async fn file(&mut self) -> Result<&mut tokio::io::BufWriter<tokio::fs::File>> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| self.io_error(e))?;
            }
            let file = tokio::fs::File::create(&self.path)
                .await
                .map_err(|e| self.io_error(e))?;
            self.file = Some(tokio::io::BufWriter::with_capacity(1 << 20, file));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn io_error(&self, error: std::io::Error) -> Error {
        Error::connector("file", false, format!("{}: {error}", self.path.display()))
    }
}

#[async_trait]
impl Sink for FileInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        self.encoder.encode(&batch, &mut buffer)?;
        let written = self.file().await?.write_all(&buffer).await;
        self.buffer = buffer;
        written.map_err(|e| self.io_error(e))
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        // An empty input still leaves an (empty) file behind.
        let file = self.file().await?;
        let flushed = file.flush().await;
        flushed.map_err(|e| self.io_error(e))
    }
}
