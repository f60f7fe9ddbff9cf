//! The search-index sink and its Tantivy instance: rows to documents,
//! a checkpoint's rows staged at the barrier and committed at the commit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use flumen_core::prelude::*;
use flumen_core::writable::split_writable;

use super::config::SearchSinkConfig;
use super::elasticsearch::{BulkClient, BulkInstance};
use super::index::{Layout, SearchIndex};

/// The search-index sink. Built from a [`SearchSinkConfig`].
#[derive(Debug, Clone)]
pub struct SearchSink {
    config: SearchSinkConfig,
    backend: Backend,
}

/// The index a sink writes, as its settings say.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// An embedded Tantivy index in this directory.
    Tantivy(PathBuf),
    /// An Elasticsearch or OpenSearch index.
    Elasticsearch(Box<BulkClient>),
}

impl SearchSink {
    pub(super) fn new(config: SearchSinkConfig, backend: Backend) -> Self {
        SearchSink { config, backend }
    }
}

impl SinkFactory for SearchSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        Layout::of(&self.config, schema).map(|_| ())
    }

    fn create(&self, _instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let layout = Layout::of(&self.config, &schema)?;
        let id_column = layout.id_column();
        Ok(match &self.backend {
            Backend::Tantivy(path) => Box::new(SearchInstance {
                index: Arc::new(SearchIndex::open(path, layout)?),
                id_column,
                pending: Vec::new(),
                rejected: Vec::new(),
                last_commit: Instant::now(),
            }),
            Backend::Elasticsearch(client) => Box::new(BulkInstance::new(
                (**client).clone(),
                id_column.ok_or_else(|| Error::config("id", "is needed with `elasticsearch`"))?,
                layout.columns(),
            )),
        })
    }

    /// One writer per index (a cluster's takes `concurrency` requests in
    /// flight instead).
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }

    fn exactly_once(&self) -> bool {
        matches!(self.backend, Backend::Tantivy(_))
    }
}

/// `batch` without its rows that have no id, which are rejected.
pub(super) fn without_null_ids(
    batch: RecordBatch,
    id_column: Option<usize>,
    rejected: &mut Vec<Rejected>,
) -> Result<RecordBatch> {
    let Some(column) = id_column else {
        return Ok(batch);
    };
    let ids = batch.column(column);
    if ids.null_count() == 0 {
        return Ok(batch);
    }
    let missing = arrow::compute::is_null(ids)?;
    let present = arrow::compute::not(&missing)?;
    let without = arrow::compute::filter_record_batch(&batch, &missing)?;
    rejected.extend(Rejected::rows(&without, &"the id column is null")?);
    Ok(arrow::compute::filter_record_batch(&batch, &present)?)
}

struct SearchInstance {
    index: Arc<SearchIndex>,
    id_column: Option<usize>,
    /// The rows of the checkpoint under way.
    pending: Vec<RecordBatch>,
    rejected: Vec<Rejected>,
    /// When rows written without checkpoints were last committed.
    last_commit: Instant,
}

/// How often rows written without checkpoints are committed (the end of
/// the input commits the rest).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

impl SearchInstance {
    async fn on_index<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SearchIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || work(&index))
            .await
            .map_err(|e| Error::internal(format!("the search index's writer failed: {e}")))?
    }
}

#[async_trait]
impl Sink for SearchInstance {
    async fn write(&mut self, batch: RecordBatch, ctx: &mut Context) -> Result<()> {
        let (batch, rejected) = split_writable(batch)?;
        self.rejected.extend(rejected);
        let batch = without_null_ids(batch, self.id_column, &mut self.rejected)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if ctx.checkpointing {
            self.pending.push(batch);
            return Ok(());
        }
        // Without checkpoints, writes become visible at most a second
        // late: a Tantivy commit per batch would make a segment per batch.
        let commit = self.last_commit.elapsed() >= COMMIT_EVERY;
        if commit {
            self.last_commit = Instant::now();
        }
        self.on_index(move |index| index.write_now(&batch, commit))
            .await
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn pre_commit(
        &mut self,
        checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        let batches = std::mem::take(&mut self.pending);
        self.on_index(move |index| index.stage(checkpoint, &batches))
            .await?;
        Ok(serde_json::json!({ "checkpoint": checkpoint }))
    }

    async fn commit(&mut self, transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        let checkpoint = staged_checkpoint(&transaction)?;
        self.on_index(move |index| index.apply(checkpoint)).await
    }

    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        self.pending.clear();
        Ok(())
    }

    async fn recover(
        &mut self,
        from: Option<(u64, serde_json::Value)>,
        _ctx: &mut Context,
    ) -> Result<()> {
        let from = match from {
            Some((_, transaction)) => Some(staged_checkpoint(&transaction)?),
            None => None,
        };
        self.on_index(move |index| index.recover(from)).await
    }
}

/// The checkpoint a transaction of [`Sink::pre_commit`] staged.
fn staged_checkpoint(transaction: &serde_json::Value) -> Result<u64> {
    transaction["checkpoint"]
        .as_u64()
        .ok_or_else(|| Error::Checkpoint(format!("not a search sink's transaction: {transaction}")))
}
