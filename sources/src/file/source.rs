//! The file source and its instances.

use arrow::datatypes::SchemaRef;
use flumen_core::dead_letter::Rejected;
use flumen_core::prelude::*;
use flumen_core::storage::Location;
use object_store::ObjectStoreExt;

use super::config::{FileFormat, FileSourceConfig};
use super::lines::{CHUNK_BYTES, DecoderSpec, LineSplit, LineSplitReader};
use super::parquet::ParquetSplitReader;

/// A bounded source reading one file. Built from a [`FileSourceConfig`].
#[derive(Debug, Clone)]
pub struct FileSource {
    config: FileSourceConfig,
    location: Location,
    format: FileFormat,
    schema: SchemaRef,
}

impl FileSource {
    pub(super) fn new(
        config: FileSourceConfig,
        location: Location,
        format: FileFormat,
        schema: SchemaRef,
    ) -> Self {
        FileSource {
            config,
            location,
            format,
            schema,
        }
    }
}

impl SourceFactory for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// A local file is read for `flumen validate`; an object store is not.
    fn samples_locally(&self) -> bool {
        url::Url::parse(&self.config.path).map_or(true, |url| {
            url.scheme() == "file" || url.scheme().len() == 1 // a Windows drive letter
        })
    }

    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(FileInstance {
            source: self.clone(),
            instance,
            reader: None,
            rows_read: 0,
            skip: 0,
            rejected_count: 0,
            rejected_skip: 0,
        }))
    }
}

enum Reader {
    Lines(Box<LineSplitReader>),
    Parquet(ParquetSplitReader),
    Empty,
}

struct FileInstance {
    source: FileSource,
    instance: InstanceInfo,
    reader: Option<Reader>,
    /// Rows of this instance's share emitted so far: its read position.
    rows_read: u64,
    /// Rows still to pass over after a restore.
    skip: u64,
    /// Lines rejected so far (part of the position), and how many of
    /// them are still to pass over after a restore.
    rejected_count: u64,
    rejected_skip: u64,
}

impl FileSource {
    /// Finds the file's size and the share of instance `instance`.
    async fn open(&self, instance: InstanceInfo) -> Result<Reader> {
        let FileSource {
            config,
            location,
            format,
            schema,
        } = self;
        let size = location
            .store
            .head(&location.path)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::connector(
                    "file",
                    false,
                    format!("`{}` does not exist", location.display),
                ),
                other => Error::connector("file", false, other),
            })?
            .size;
        if *format == FileFormat::Parquet {
            let reader = ParquetSplitReader::open(
                location,
                size,
                schema.clone(),
                config.batch_size,
                instance,
            )
            .await?;
            return Ok(reader.map_or(Reader::Empty, Reader::Parquet));
        }
        let (index, parallelism) = (instance.index as u64, instance.parallelism as u64);
        let start = size * index / parallelism;
        let end = size * (index + 1) / parallelism;
        if start == end {
            return Ok(Reader::Empty);
        }
        let split = LineSplit::new(location, start, end, size, CHUNK_BYTES);
        let spec = DecoderSpec {
            format: *format,
            schema: schema.clone(),
            batch_size: config.batch_size,
            csv: config.csv.clone(),
        };
        Ok(Reader::Lines(Box::new(LineSplitReader::new(
            split,
            spec,
            start == 0,
            location.display.clone(),
        )?)))
    }
}

#[async_trait]
impl Source for FileInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        if self.reader.is_none() {
            self.reader = Some(self.source.open(self.instance).await?);
        }
        loop {
            let batch = match self.reader.as_mut().expect("opened above") {
                Reader::Lines(reader) => reader.next_batch().await?,
                Reader::Parquet(reader) => reader.next_batch().await?,
                Reader::Empty => None,
            };
            let Some(mut batch) = batch else {
                return Ok(SourceStep::Finished);
            };
            if self.skip > 0 {
                // Resuming: pass over the rows an earlier run already read.
                let skipped = self.skip.min(batch.num_rows() as u64);
                self.skip -= skipped;
                batch = batch.slice(skipped as usize, batch.num_rows() - skipped as usize);
                if batch.num_rows() == 0 {
                    continue;
                }
            }
            self.rows_read += batch.num_rows() as u64;
            return Ok(SourceStep::Batch(batch));
        }
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        let rejected = match self.reader.as_mut() {
            Some(Reader::Lines(reader)) => reader.take_rejected(),
            _ => return Vec::new(),
        };
        // Lines rejected before the restored position were dealt with by
        // the run that read them.
        let already = (self.rejected_skip as usize).min(rejected.len());
        self.rejected_skip -= already as u64;
        self.rejected_count += (rejected.len() - already) as u64;
        rejected.into_iter().skip(already).collect()
    }

    fn position(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "rows": self.rows_read, "rejected": self.rejected_count }))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        // The file is re-read from the start of this instance's share and
        // the rows read before are skipped: the position stays valid
        // whatever the batch size.
        let rows = position
            .get("rows")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::internal(format!("not a file source position: {position}")))?;
        self.rows_read = rows;
        self.skip = rows;
        let rejected = position
            .get("rejected")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        self.rejected_count = rejected;
        self.rejected_skip = rejected;
        Ok(())
    }
}
