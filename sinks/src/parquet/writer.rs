//! The Parquet sink and its instances.
//!
//! Each instance keeps one open file per partition directory, uploading it
//! as it goes under `_staging/`. A pre-commit closes every file and lists
//! where each must go; the commit copies each staged file to its final
//! name, `<partition>/part-<instance>-<checkpoint>-<n>.parquet`, and
//! deletes the staged one. Names are deterministic, so a commit repeated
//! after a crash finds its work done and changes nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::json;

use flumen_core::prelude::*;
use flumen_core::storage::Location;

use super::config::{ParquetCompression, ParquetSinkConfig};
use super::partition::Partitioner;

/// Writes Parquet files. Built from a [`ParquetSinkConfig`].
#[derive(Debug, Clone)]
pub struct ParquetSink {
    config: ParquetSinkConfig,
    location: Location,
}

impl ParquetSink {
    pub(super) fn new(config: ParquetSinkConfig, location: Location) -> Self {
        ParquetSink { config, location }
    }
}

impl SinkFactory for ParquetSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        Partitioner::new(&self.config, schema).map(|_| ())
    }

    fn create(&self, instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let partitioner = Partitioner::new(&self.config, &schema)?;
        let compression = match self.config.compression {
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.config.row_group_rows))
            .build();
        Ok(Box::new(ParquetInstance {
            files: Files {
                store: self.location.store.clone(),
                display: self.location.display.clone(),
            },
            root: self.location.path.clone(),
            instance: instance.label(),
            config: self.config.clone(),
            partitioner,
            properties,
            open: BTreeMap::new(),
            closed: Vec::new(),
            // Staged names only need to be unique to this run.
            run: flumen_core::runtime::wall_clock_millis(),
            sequence: 0,
        }))
    }

    fn exactly_once(&self) -> bool {
        true
    }
}

/// A file being written.
struct OpenFile {
    writer: AsyncArrowWriter<BufWriter>,
    staged: Path,
    rows: u64,
    opened: Instant,
}

/// The store, and how to name it in errors. Cloned into each call, so that
/// no future holds the instance (whose open uploads are not `Sync`).
#[derive(Clone)]
struct Files {
    store: Arc<dyn ObjectStore>,
    display: String,
}

impl Files {
    fn error(&self, error: impl std::fmt::Display) -> Error {
        // Object-store errors are mostly the network: worth a retry.
        Error::connector("parquet", true, format!("{}: {error}", self.display))
    }

    /// Objects under `prefix`, listed whole.
    async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        self.store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.error(e))
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Moves staged files to their final names; done already for a file
    /// whose staged copy is gone and final one exists.
    async fn publish(&self, transaction: &serde_json::Value) -> Result<()> {
        let Some(files) = transaction.get("files").and_then(|f| f.as_array()) else {
            return Ok(());
        };
        for file in files {
            let (Some(staged), Some(target)) = (
                file.get("staged").and_then(|v| v.as_str()),
                file.get("file").and_then(|v| v.as_str()),
            ) else {
                return Err(Error::internal(format!(
                    "not a Parquet transaction: {file}"
                )));
            };
            let (staged, target) = (Path::from(staged), Path::from(target));
            match self.store.copy(&staged, &target).await {
                Ok(()) => self.delete(&staged).await?,
                Err(object_store::Error::NotFound { .. }) => {
                    if self.store.head(&target).await.is_err() {
                        return Err(Error::connector(
                            "parquet",
                            false,
                            format!(
                                "{}: neither the staged file `{staged}` nor its committed copy `{target}` exists: \
                                 files were removed behind the checkpoint's back; start with --fresh",
                                self.display
                            ),
                        ));
                    }
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }
}

struct ParquetInstance {
    files: Files,
    root: Path,
    /// Names its files: [`InstanceInfo::label`].
    instance: String,
    config: ParquetSinkConfig,
    partitioner: Partitioner,
    properties: WriterProperties,
    /// Open files by partition directory.
    open: BTreeMap<String, OpenFile>,
    /// Files closed since the last pre-commit: (partition, staged path).
    closed: Vec<(String, Path)>,
    run: i64,
    sequence: u64,
}

impl ParquetInstance {
    fn staging(&self) -> Path {
        self.root
            .clone()
            .join("_staging")
            .join(format!("instance-{}", self.instance))
    }

    fn final_path(&self, partition: &str, checkpoint: u64, n: usize) -> Path {
        let mut path = self.root.clone();
        for part in partition.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path.join(format!(
            "part-{}-{checkpoint:010}-{n:05}.parquet",
            self.instance
        ))
    }

    fn open_file(&mut self, partition: &str) -> Result<&mut OpenFile> {
        if !self.open.contains_key(partition) {
            self.sequence += 1;
            let staged = self
                .staging()
                .join(format!("{}-{:06}.parquet", self.run, self.sequence));
            // Uploaded in parts as it grows: memory stays bounded.
            let writer = AsyncArrowWriter::try_new(
                BufWriter::new(self.files.store.clone(), staged.clone()),
                self.partitioner.file_schema().clone(),
                Some(self.properties.clone()),
            )
            .map_err(|e| self.files.error(e))?;
            self.open.insert(
                partition.to_string(),
                OpenFile {
                    writer,
                    staged,
                    rows: 0,
                    opened: Instant::now(),
                },
            );
        }
        Ok(self.open.get_mut(partition).expect("opened above"))
    }

    /// Finishes the file of `partition` (it stays staged).
    async fn close(&mut self, partition: &str) -> Result<()> {
        if let Some(file) = self.open.remove(partition) {
            let staged = file.staged.clone();
            let files = self.files.clone();
            file.writer.close().await.map_err(|e| files.error(e))?;
            self.closed.push((partition.to_string(), staged));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ParquetInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        for (partition, rows) in self.partitioner.split(&batch)? {
            let (max_rows, max_bytes, max_age) = (
                self.config.max_rows,
                self.config.max_bytes,
                self.config.max_age,
            );
            let files = self.files.clone();
            let file = self.open_file(&partition)?;
            file.writer.write(&rows).await.map_err(|e| files.error(e))?;
            file.rows += rows.num_rows() as u64;
            let full = file.rows >= max_rows
                || (file.writer.bytes_written() + file.writer.in_progress_size()) as u64
                    >= max_bytes
                || file.opened.elapsed() >= max_age;
            if full {
                self.close(&partition).await?;
            }
        }
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        let partitions: Vec<String> = self.open.keys().cloned().collect();
        for partition in partitions {
            self.close(&partition).await?;
        }
        if self.closed.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        let closed = std::mem::take(&mut self.closed);
        let files: Vec<serde_json::Value> = closed
            .iter()
            .enumerate()
            .map(|(n, (partition, staged))| {
                json!({
                    "staged": staged.as_ref(),
                    "file": self.final_path(partition, checkpoint, n).as_ref(),
                })
            })
            .collect();
        Ok(json!({ "files": files }))
    }

    async fn commit(&mut self, transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        let files = self.files.clone();
        files.publish(&transaction).await
    }

    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        // Files not pre-committed belong to no checkpoint.
        let files = self.files.clone();
        let staged: Vec<Path> = std::mem::take(&mut self.open)
            .into_values()
            .map(|file| file.staged)
            .chain(
                std::mem::take(&mut self.closed)
                    .into_iter()
                    .map(|(_, staged)| staged),
            )
            .collect();
        for path in staged {
            files.delete(&path).await?;
        }
        Ok(())
    }

    async fn recover(
        &mut self,
        from: Option<(u64, serde_json::Value)>,
        _ctx: &mut Context,
    ) -> Result<()> {
        let files = self.files.clone();
        if let Some((_, transaction)) = &from {
            files.publish(transaction).await?;
        }
        // Whatever else is staged belongs to checkpoints that never
        // completed.
        for staged in files.list(&self.staging()).await? {
            files.delete(&staged).await?;
        }
        if self.config.is_local() {
            // A local upload cut short leaves part files that listings do
            // not show (`name#1`): remove the whole staging directory.
            let directory = std::path::Path::new("/").join(self.staging().as_ref());
            match tokio::fs::remove_dir_all(&directory).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(files.error(format!("{}: {e}", directory.display()))),
            }
        }
        // Files of later checkpoints (restoring an earlier one, or starting
        // fresh) are written again by this run.
        let restored = from.as_ref().map_or(0, |(id, _)| *id);
        let prefix = format!("part-{}-", self.instance);
        for path in files.list(&self.root).await? {
            if path.parts().any(|p| p.as_ref() == "_staging") {
                continue;
            }
            let Some(name) = path.filename() else {
                continue;
            };
            let checkpoint = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|c| c.parse::<u64>().ok());
            if checkpoint.is_some_and(|c| c > restored) {
                files.delete(&path).await?;
            }
        }
        Ok(())
    }
}
