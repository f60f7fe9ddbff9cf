//! The key-value sink and its instance: rows to writes, writes to the
//! store at each checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use flumen_core::changelog::{self, Op};
use flumen_core::event_time::{event_time_column, to_millis};
use flumen_core::prelude::*;
use flumen_core::schema::column_index;
use flumen_core::sql::{conditions, evaluate_condition};
use flumen_core::writable::split_writable;

use super::config::{Backend, KvSinkConfig, Ttl};
use super::embedded::{Embedded, EmbeddedStore};
use super::store::Store;
use super::template::KeyTemplate;
use super::{KvWrite, wall_clock_millis};

/// The key-value sink. Built from a [`KvSinkConfig`].
#[derive(Debug, Clone)]
pub struct KvSink {
    config: KvSinkConfig,
    template: KeyTemplate,
    backend: Backend,
}

/// Where in the input each part of a write comes from.
#[derive(Debug, Clone)]
struct Columns {
    key: Vec<usize>,
    value: Vec<usize>,
    version: Option<usize>,
    expires: Option<usize>,
    /// `delete_when`, planned.
    delete_when: Option<Arc<dyn PhysicalExpr>>,
}

impl KvSink {
    pub(super) fn new(config: KvSinkConfig, template: KeyTemplate, backend: Backend) -> Self {
        KvSink {
            config,
            template,
            backend,
        }
    }

    fn store(&self) -> Result<Arc<dyn Store>> {
        Ok(match &self.backend {
            Backend::Embedded(path) => Arc::new(Embedded(Arc::new(EmbeddedStore::open(path)?))),
            #[cfg(feature = "redis")]
            Backend::Redis(settings) => Arc::new(super::redis::RedisStore::new(settings.clone())),
            #[cfg(feature = "dynamodb")]
            Backend::DynamoDb(config) => {
                Arc::new(super::dynamodb::DynamoDbStore::new(config.clone()))
            }
        })
    }

    fn columns(&self, schema: &SchemaRef) -> Result<Columns> {
        let key = self
            .template
            .columns()
            .into_iter()
            .map(|name| column_index(schema, "key", name))
            .collect::<Result<Vec<_>>>()?;
        let value = match &self.config.value {
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| column_index(schema, &format!("value[{i}]"), name))
                .collect::<Result<Vec<_>>>()?,
            None => (0..schema.fields().len())
                .filter(|&i| schema.field(i).name() != changelog::OP)
                .collect(),
        };
        let time_column = |key: &str, index: usize| -> Result<usize> {
            match schema.field(index).data_type() {
                DataType::Int64 | DataType::Timestamp(..) => Ok(index),
                other => Err(Error::config(
                    key,
                    format!(
                        "`{}` is {other}; expected an integer or a timestamp",
                        schema.field(index).name()
                    ),
                )),
            }
        };
        let version = match &self.config.version {
            Some(name) => Some(time_column(
                "version",
                column_index(schema, "version", name)?,
            )?),
            None => match event_time_column(schema) {
                Some(name) => Some(time_column(
                    "version",
                    column_index(schema, "version", name)?,
                )?),
                None => None,
            },
        };
        let expires = match &self.config.ttl {
            Some(Ttl::Until { column }) => Some(time_column(
                "ttl.column",
                column_index(schema, "ttl.column", column)?,
            )?),
            _ => None,
        };
        let delete_when = match &self.config.delete_when {
            Some(sql) => conditions([("delete_when".to_string(), sql.as_str())], schema)?.pop(),
            None => None,
        };
        Ok(Columns {
            key,
            value,
            version,
            expires,
            delete_when,
        })
    }
}

impl SinkFactory for KvSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        self.columns(schema).map(|_| ())
    }

    fn create(&self, _instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KvInstance {
            columns: self.columns(&schema)?,
            template: self.template.clone(),
            ttl: match &self.config.ttl {
                Some(Ttl::For(ttl)) => Some(ttl.as_millis() as i64),
                _ => None,
            },
            store: self.store()?,
            pending: HashMap::new(),
            writing: None,
            rejected: Vec::new(),
        }))
    }

    /// One writer per store: a checkpoint's writes are applied as one.
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }

    fn exactly_once(&self) -> bool {
        match self.backend {
            Backend::Embedded(_) => true,
            #[cfg(feature = "redis")]
            Backend::Redis(_) => true,
            // Delivery is at least once; conditional writes on the version
            // make the effect exactly once where there is one.
            #[cfg(feature = "dynamodb")]
            Backend::DynamoDb(_) => false,
        }
    }
}

struct KvInstance {
    columns: Columns,
    template: KeyTemplate,
    /// A fixed time to live, in ms.
    ttl: Option<i64>,
    store: Arc<dyn Store>,
    /// The writes of the checkpoint under way, the last per key.
    pending: HashMap<String, KvWrite>,
    /// Without checkpoints: the batch the store is writing.
    writing: Option<tokio::task::JoinHandle<Result<()>>>,
    rejected: Vec<Rejected>,
}

impl KvInstance {
    /// The writes `batch` makes, and its rows that make none.
    fn writes(&self, batch: RecordBatch) -> Result<(Vec<KvWrite>, Vec<Rejected>)> {
        let (batch, mut rejected) = split_writable(batch)?;
        let rows = batch.num_rows();
        let ops = changelog::ops(&batch)?;
        let deleting = self
            .columns
            .delete_when
            .as_ref()
            .map(|condition| evaluate_condition(condition, &batch))
            .transpose()?;
        let keys = self
            .columns
            .key
            .iter()
            .map(|&c| Ok(arrow::compute::cast(batch.column(c), &DataType::Utf8)?))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<&StringArray> = keys.iter().map(|k| k.as_string::<i32>()).collect();
        let mut json = Vec::new();
        {
            let values = batch.project(&self.columns.value)?;
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
            writer.write(&values)?;
            writer.finish()?;
        }
        let values: Vec<&[u8]> = json.split(|b| *b == b'\n').take(rows).collect();
        let millis = |column: Option<usize>| -> Result<Option<Int64Array>> {
            column.map(|c| to_millis(batch.column(c))).transpose()
        };
        let versions = millis(self.columns.version)?;
        let expiries = millis(self.columns.expires)?;
        let now = wall_clock_millis();
        let mut writes = Vec::with_capacity(rows);
        let mut texts: Vec<Option<&str>> = vec![None; keys.len()];
        for row in 0..rows {
            for (text, column) in texts.iter_mut().zip(&keys) {
                *text = column.is_valid(row).then(|| column.value(row));
            }
            let Some(key) = self.template.render(&texts) else {
                rejected.extend(Rejected::rows(
                    &batch.slice(row, 1),
                    &"a column of the key is null",
                )?);
                continue;
            };
            let op = match &deleting {
                Some(deleting) if deleting.value(row) => Op::Delete,
                _ => ops.as_ref().map_or(Op::Upsert, |ops| ops[row]),
            };
            let at = |column: &Option<Int64Array>| {
                column
                    .as_ref()
                    .and_then(|c| c.is_valid(row).then(|| c.value(row)))
            };
            let write = KvWrite {
                key,
                value: (op == Op::Upsert).then(|| values[row].to_vec()),
                version: at(&versions),
                expires_at: at(&expiries).or(self.ttl.map(|ttl| now + ttl)),
            };
            if let Some(reason) = self.store.refusal(&write) {
                rejected.extend(Rejected::rows(&batch.slice(row, 1), &reason)?);
                continue;
            }
            writes.push(write);
        }
        Ok((writes, rejected))
    }

    /// Waits for the batch the store is writing, if any.
    async fn written(&mut self) -> Result<()> {
        match self.writing.take() {
            Some(writing) => writing.await.map_err(|e| {
                Error::internal(format!("the key-value store's writer failed: {e}"))
            })?,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Sink for KvInstance {
    async fn write(&mut self, batch: RecordBatch, ctx: &mut Context) -> Result<()> {
        let (writes, rejected) = self.writes(batch)?;
        self.rejected.extend(rejected);
        if !ctx.checkpointing {
            // The store writes this batch while the next one is encoded.
            self.written().await?;
            let store = self.store.clone();
            self.writing = Some(tokio::spawn(async move { store.write_now(writes).await }));
            return Ok(());
        }
        for write in writes {
            // Within a checkpoint only the last write of a key counts:
            // the newest by version, or the last to arrive where a row
            // has none.
            let newer = match (&write.version, self.pending.get(&write.key)) {
                (
                    Some(version),
                    Some(KvWrite {
                        version: Some(pending),
                        ..
                    }),
                ) => version >= pending,
                _ => true,
            };
            if newer {
                self.pending.insert(write.key.clone(), write);
            }
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn pre_commit(
        &mut self,
        checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        self.written().await?;
        let mut writes: Vec<KvWrite> = self.pending.drain().map(|(_, w)| w).collect();
        writes.sort_by(|a, b| a.key.cmp(&b.key));
        let staged = self.store.stage(checkpoint, writes).await?;
        Ok(serde_json::json!({ "checkpoint": checkpoint, "staged": staged }))
    }

    async fn commit(&mut self, transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        let checkpoint = staged_checkpoint(&transaction)?;
        self.store.apply(checkpoint, &transaction["staged"]).await
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        self.written().await
    }

    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        self.pending.clear();
        // Whatever it was writing lands or not; either is at least once.
        let _ = self.written().await;
        Ok(())
    }

    async fn recover(
        &mut self,
        from: Option<(u64, serde_json::Value)>,
        _ctx: &mut Context,
    ) -> Result<()> {
        let from = match from {
            Some((_, mut transaction)) => Some((
                staged_checkpoint(&transaction)?,
                transaction["staged"].take(),
            )),
            None => None,
        };
        self.store.recover(from).await
    }
}

/// The checkpoint a transaction of [`Sink::pre_commit`] staged.
fn staged_checkpoint(transaction: &serde_json::Value) -> Result<u64> {
    transaction["checkpoint"].as_u64().ok_or_else(|| {
        Error::Checkpoint(format!("not a key-value sink's transaction: {transaction}"))
    })
}
