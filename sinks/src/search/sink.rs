//! The search-index sink and its instance: rows to documents, a
//! checkpoint's rows staged at the barrier and committed at the commit.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use flumen_core::prelude::*;
use flumen_core::writable::split_writable;

use super::config::SearchSinkConfig;
use super::index::{Layout, SearchIndex};

/// The search-index sink. Built from a [`SearchSinkConfig`].
#[derive(Debug, Clone)]
pub struct SearchSink {
    config: SearchSinkConfig,
}

impl SearchSink {
    pub(super) fn new(config: SearchSinkConfig) -> Self {
        SearchSink { config }
    }
}

impl SinkFactory for SearchSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        Layout::of(&self.config, schema).map(|_| ())
    }

    fn create(&self, _instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let layout = Layout::of(&self.config, &schema)?;
        let id_column = layout.id_column();
        Ok(Box::new(SearchInstance {
            index: Arc::new(SearchIndex::open(&self.config.path, layout)?),
            id_column,
            pending: Vec::new(),
            rejected: Vec::new(),
        }))
    }

    /// One writer per index.
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }

    fn exactly_once(&self) -> bool {
        true
    }
}

struct SearchInstance {
    index: Arc<SearchIndex>,
    id_column: Option<usize>,
    /// The rows of the checkpoint under way.
    pending: Vec<RecordBatch>,
    rejected: Vec<Rejected>,
}

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

    /// `batch` without its rows that have no id, which are rejected.
    fn with_ids(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(column) = self.id_column else {
            return Ok(batch);
        };
        let ids = batch.column(column);
        if ids.null_count() == 0 {
            return Ok(batch);
        }
        let missing = arrow::compute::is_null(ids)?;
        let present = arrow::compute::not(&missing)?;
        let without = arrow::compute::filter_record_batch(&batch, &missing)?;
        self.rejected
            .extend(Rejected::rows(&without, &"the id column is null")?);
        Ok(arrow::compute::filter_record_batch(&batch, &present)?)
    }
}

#[async_trait]
impl Sink for SearchInstance {
    async fn write(&mut self, batch: RecordBatch, ctx: &mut Context) -> Result<()> {
        let (batch, rejected) = split_writable(batch)?;
        self.rejected.extend(rejected);
        let batch = self.with_ids(batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if ctx.checkpointing {
            self.pending.push(batch);
            return Ok(());
        }
        self.on_index(move |index| index.write_now(&batch)).await
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
