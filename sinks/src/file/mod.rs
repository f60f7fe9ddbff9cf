//! Writes rows to local files as JSON lines or CSV, with two-phase commits:
//! rows go to a staging file, which becomes visible under its final name
//! only when committed.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::encoding::{Encoder, TextFormat};

/// Writes rows to local files.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Where to write. Without checkpoints: the file to write (replaced if
    /// it exists), or with parallelism above 1 a directory where instance
    /// *i* writes `part-<i>.<ext>`. With checkpoints: a directory where
    /// each checkpoint adds `part-<i>-<checkpoint>.<ext>` per instance.
    /// Files appear only once complete (committed); until then rows are
    /// staged in hidden files beside them.
    #[schemars(extend("format" = "path"))]
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
}

impl SinkConfig for FileSinkConfig {
    const TYPE: &str = "file";
    const DESCRIPTION: &str = "Writes rows to a local file as JSON lines or CSV.";
    type Sink = FileSink;

    /// Checks the settings and returns the sink.
    fn build(&self) -> Result<FileSink> {
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
    /// The file instance `instance` writes when the run takes no
    /// checkpoints.
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
            single: self.path_of(instance),
            directory: self.config.path.clone(),
            instance: instance.label(),
            extension: self.config.format.extension(),
            encoder: Encoder::new(self.config.format),
            staging: None,
            buffer: Vec::new(),
            checkpointing: false,
            rejected: Vec::new(),
        }))
    }

    fn exactly_once(&self) -> bool {
        true
    }
}

struct FileInstance {
    /// The output file of a run without checkpoints.
    single: PathBuf,
    /// The output directory of a run with checkpoints.
    directory: PathBuf,
    /// Names its files: [`InstanceInfo::label`].
    instance: String,
    extension: &'static str,
    encoder: Encoder,
    /// The file rows go to until the next pre-commit.
    staging: Option<Staging>,
    buffer: Vec<u8>,
    /// Whether the run takes checkpoints (known from `recover` on).
    checkpointing: bool,
    /// Rows of the last batch that could not be written.
    rejected: Vec<Rejected>,
}

struct Staging {
    path: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
}

fn io_error(path: &Path, error: std::io::Error) -> Error {
    Error::connector("file", false, format!("{}: {error}", path.display()))
}

impl FileInstance {
    /// The hidden staging file beside `target`.
    fn staging_of(target: &Path) -> PathBuf {
        let name = target
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        target.with_file_name(format!(".{name}.inprogress"))
    }

    /// The committed file of checkpoint `checkpoint` (runs with
    /// checkpoints).
    fn part(&self, checkpoint: u64) -> PathBuf {
        self.directory.join(format!(
            "part-{}-{checkpoint:010}.{}",
            self.instance, self.extension
        ))
    }

    /// Where this run's rows go: its final file, given the next commit.
    fn target(&self, checkpoint: u64, ctx: &Context) -> PathBuf {
        if ctx.checkpointing {
            self.part(checkpoint)
        } else {
            self.single.clone()
        }
    }

    async fn open_staging(&mut self) -> Result<&mut Staging> {
        if self.staging.is_none() {
            // Named when committed; staged under a name of its own.
            let path = if self.checkpointing {
                self.directory
                    .join(format!(".part-{}.inprogress", self.instance))
            } else {
                Self::staging_of(&self.single)
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| io_error(parent, e))?;
            }
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| io_error(&path, e))?;
            self.staging = Some(Staging {
                path,
                file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            });
        }
        Ok(self.staging.as_mut().expect("opened above"))
    }

    /// This instance's files in the output directory: committed parts with
    /// their checkpoint, and staging files.
    async fn own_files(&self) -> Result<(Vec<(u64, PathBuf)>, Vec<PathBuf>)> {
        let (mut parts, mut staged) = (Vec::new(), Vec::new());
        let mut entries = match tokio::fs::read_dir(&self.directory).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((parts, staged)),
            // A file where the directory would be: a run without checkpoints
            // wrote it; nothing of ours is inside.
            Err(_) => return Ok((parts, staged)),
        };
        let part_prefix = format!("part-{}-", self.instance);
        let staged_prefix = format!(".part-{}-", self.instance);
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error(&self.directory, e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&part_prefix)
                && let Some(checkpoint) = rest.split('.').next().and_then(|c| c.parse().ok())
            {
                parts.push((checkpoint, entry.path()));
            } else if name.starts_with(&staged_prefix)
                || name == format!(".part-{}.inprogress", self.instance)
            {
                staged.push(entry.path());
            }
        }
        Ok((parts, staged))
    }
}

async fn remove(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Publishes a staged file: renames it to its final name. Done already if
/// the staged file is gone and the final one exists.
async fn publish(transaction: &serde_json::Value) -> Result<()> {
    let (Some(staged), Some(target)) = (
        transaction.get("staged").and_then(|v| v.as_str()),
        transaction.get("file").and_then(|v| v.as_str()),
    ) else {
        return Ok(());
    };
    let (staged, target) = (Path::new(staged), Path::new(target));
    match tokio::fs::rename(staged, target).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.exists() => Ok(()),
        Err(e) => Err(io_error(staged, e)),
    }
}

#[async_trait]
impl Sink for FileInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        self.rejected = self.encoder.encode(batch, &mut buffer)?;
        let staging = self.open_staging().await?;
        let written = staging.file.write_all(&buffer).await;
        let path = staging.path.clone();
        self.buffer = buffer;
        written.map_err(|e| io_error(&path, e))
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn finish(&mut self, ctx: &mut Context) -> Result<()> {
        if !ctx.checkpointing {
            // An empty input still leaves an (empty) file behind.
            self.open_staging().await?;
        }
        Ok(())
    }

    async fn pre_commit(
        &mut self,
        checkpoint: u64,
        ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        let Some(mut staging) = self.staging.take() else {
            // Nothing written since the last checkpoint: nothing to commit.
            return Ok(serde_json::Value::Null);
        };
        let flushed = staging.file.flush().await;
        flushed.map_err(|e| io_error(&staging.path, e))?;
        let synced = staging.file.get_ref().sync_all().await;
        synced.map_err(|e| io_error(&staging.path, e))?;
        let target = self.target(checkpoint, ctx);
        // Staged under a name tied to its checkpoint, so that recovery can
        // tell it from the files of other checkpoints.
        let staged = Self::staging_of(&target);
        tokio::fs::rename(&staging.path, &staged)
            .await
            .map_err(|e| io_error(&staging.path, e))?;
        // Absolute, for a run that restores the checkpoint from another
        // working directory.
        let absolute = |path: &Path| std::path::absolute(path).map_err(|e| io_error(path, e));
        Ok(json!({
            "staged": absolute(&staged)?.to_string_lossy(),
            "file": absolute(&target)?.to_string_lossy(),
        }))
    }

    async fn commit(&mut self, transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        publish(&transaction).await
    }

    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        // Rows written since the last pre-commit belong to no checkpoint.
        match self.staging.take() {
            Some(staging) => remove(&staging.path).await,
            None => Ok(()),
        }
    }

    async fn recover(
        &mut self,
        from: Option<(u64, serde_json::Value)>,
        ctx: &mut Context,
    ) -> Result<()> {
        self.checkpointing = ctx.checkpointing;
        if !ctx.checkpointing {
            // Rows staged by a run that never finished are not output.
            return remove(&Self::staging_of(&self.single)).await;
        }
        if let Some((_, transaction)) = &from {
            publish(transaction).await?;
        }
        // Staged files of checkpoints that never completed, and (on a fresh
        // start, or restoring an earlier checkpoint) parts this run writes
        // again.
        let restored = from.as_ref().map_or(0, |(id, _)| *id);
        let (parts, staged) = self.own_files().await?;
        for path in staged {
            remove(&path).await?;
        }
        for (checkpoint, path) in parts {
            if checkpoint > restored {
                remove(&path).await?;
            }
        }
        Ok(())
    }
}
