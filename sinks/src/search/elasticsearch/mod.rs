//! The Elasticsearch/OpenSearch backend of the search sink: rows become
//! `index` and `delete` actions of the `_bulk` API, with `_id` from the
//! sink's `id` column.
//!
//! Actions wait in a map by id until the next checkpoint barrier (or
//! until they fill a request), so that a document written twice in a
//! checkpoint is sent once, as its last row. The requests of one flush
//! therefore hold distinct ids, and can be in flight together without
//! reordering a document's writes: an item sent again can never
//! overwrite a newer write of its id. Delivery is at least once (a
//! restart sends the writes since the last checkpoint again); since the
//! ids are the rows' own, a repeated write replaces the same document,
//! and the effect is exactly once.

mod client;
mod config;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;

use flumen_core::changelog::{self, Op};
use flumen_core::prelude::*;
use flumen_core::writable::split_writable;

use self::client::Action;
pub(crate) use self::client::BulkClient;
pub use self::config::ElasticsearchConfig;
use super::sink::without_null_ids;

/// A sink instance that indexes into a cluster.
pub(crate) struct BulkInstance {
    client: BulkClient,
    id_column: usize,
    /// The columns a document holds.
    columns: Vec<usize>,
    /// The actions not sent yet, by id: a document's last write only.
    pending: IndexMap<String, Action>,
    pending_bytes: usize,
    /// The rows of the pending actions (`Action::row` indexes it), kept
    /// for the dead letters.
    rows: Vec<RecordBatch>,
    row_count: usize,
    rejected: Vec<Rejected>,
}

impl BulkInstance {
    pub(crate) fn new(client: BulkClient, id_column: usize, columns: Vec<usize>) -> Self {
        BulkInstance {
            client,
            id_column,
            columns,
            pending: IndexMap::new(),
            pending_bytes: 0,
            rows: Vec::new(),
            row_count: 0,
            rejected: Vec::new(),
        }
    }

    /// Turns `batch`'s rows into pending actions.
    fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let ops = changelog::ops(&batch)?;
        let ids = arrow::compute::cast(batch.column(self.id_column), &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let documents = documents(&batch.project(&self.columns)?)?;
        let first_row = self.row_count;
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            let action = if ops.as_ref().is_some_and(|ops| ops[row] == Op::Delete) {
                self.client.delete(id, first_row + row)
            } else {
                self.client.index(id, documents.line(row), first_row + row)
            };
            self.pending_bytes += action.lines.len();
            if let Some(replaced) = self.pending.insert(id.to_string(), action) {
                self.pending_bytes -= replaced.lines.len();
            }
        }
        self.row_count += batch.num_rows();
        self.rows.push(batch);
        Ok(())
    }

    /// Whether the pending actions fill a request. Rows count, not
    /// documents, so that the rows kept for the dead letters stay bounded
    /// when the same ids come again and again.
    fn full(&self) -> bool {
        let settings = self.client.settings();
        self.row_count >= settings.max_documents || self.pending_bytes >= settings.max_bytes
    }

    /// Sends every pending action; the refused ones' rows go to the dead
    /// letters.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let actions: Vec<Action> = self.pending.values().cloned().collect();
        // On an error the actions stay pending, to be sent again.
        let refused = self.client.send(actions).await?;
        if !refused.is_empty() {
            let rows = arrow::compute::concat_batches(&self.rows[0].schema(), &self.rows)?;
            for (row, reason) in refused {
                self.rejected
                    .extend(Rejected::rows(&rows.slice(row, 1), &reason)?);
            }
        }
        self.pending.clear();
        self.pending_bytes = 0;
        self.rows.clear();
        self.row_count = 0;
        Ok(())
    }
}

/// A batch as JSON documents, one a line.
struct Documents {
    text: Vec<u8>,
    /// Where each line starts (and, last, where the text ends).
    starts: Vec<usize>,
}

impl Documents {
    fn line(&self, row: usize) -> &[u8] {
        &self.text[self.starts[row]..self.starts[row + 1] - 1]
    }
}

fn documents(batch: &RecordBatch) -> Result<Documents> {
    let mut text = Vec::with_capacity(batch.num_rows() * 64);
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut text);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    let mut starts = Vec::with_capacity(batch.num_rows() + 1);
    starts.push(0);
    starts.extend(
        text.iter()
            .enumerate()
            .filter(|(_, byte)| **byte == b'\n')
            .map(|(i, _)| i + 1),
    );
    if starts.len() != batch.num_rows() + 1 {
        return Err(Error::internal(format!(
            "{} JSON lines for {} rows",
            starts.len() - 1,
            batch.num_rows()
        )));
    }
    Ok(Documents { text, starts })
}

#[async_trait]
impl Sink for BulkInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let (batch, unwritable) = split_writable(batch)?;
        self.rejected.extend(unwritable);
        let batch = without_null_ids(batch, Some(self.id_column), &mut self.rejected)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.add(batch)?;
        if self.full() {
            self.flush().await?;
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// At a barrier, everything written before it is sent: the checkpoint
    /// completes only once the cluster holds it.
    async fn pre_commit(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        self.flush().await?;
        Ok(serde_json::Value::Null)
    }
}
