//! Lookup (enrichment) join: each row meets the rows of a table with equal
//! keys. The table is read from a file by the catalog's `file` source (any
//! format and store it reads), shared by every instance, and re-read on an
//! interval.

use std::sync::Arc;
use std::time::Duration;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use flumen_core::catalog::{BuildError, Section};
use flumen_core::graph::NodeKind;
use flumen_core::prelude::*;
use tokio::sync::{OnceCell, watch};

use super::keys::{KeyEncoder, KeyTable};
use super::{JoinPlan, LookupTableConfig, pair_up};

/// The table as last read, indexed by key.
struct Loaded {
    rows: RecordBatch,
    keys: KeyTable,
}

/// A table read from a file, kept fresh in the background once first used.
pub(crate) struct LookupTable {
    source: Arc<dyn SourceFactory>,
    refresh: Option<Duration>,
    current: OnceCell<watch::Receiver<Arc<Loaded>>>,
}

impl std::fmt::Debug for LookupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupTable")
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl LookupTable {
    pub(crate) fn new(config: &LookupTableConfig, catalog: &dyn Catalog) -> Result<Self> {
        if config.refresh_interval.is_some_and(|i| i.is_zero()) {
            return Err(Error::config(
                "table.refresh_interval",
                "must be more than 0s",
            ));
        }
        let file = catalog.component(Section::Sources, "file").ok_or_else(|| {
            Error::config(
                "table",
                "a lookup join reads its table with the `file` source: build the join with \
                 `build_in` and a catalog that has it (a pipeline file's registry does)",
            )
        })?;
        let source = match file.build(&config.file_settings()?, catalog) {
            Ok(NodeKind::Source(source)) => source,
            Ok(_) => return Err(Error::Internal("`file` is not a source".into())),
            Err(BuildError::Invalid { path, message }) => {
                return Err(Error::config(format!("table.{path}"), message));
            }
            Err(BuildError::Rejected(error)) => return Err(error.under("table")),
        };
        Ok(LookupTable {
            source,
            refresh: config.refresh_interval,
            current: OnceCell::new(),
        })
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    /// Reads the whole table and indexes it by `keys`.
    async fn read(source: &dyn SourceFactory, keys: &[usize]) -> Result<Loaded> {
        let mut reader = source.create(InstanceInfo::SINGLE)?;
        let mut batches = Vec::new();
        loop {
            match reader.next().await? {
                SourceStep::Batch(batch) => batches.push(batch),
                SourceStep::Idle => {}
                SourceStep::Finished => break,
            }
        }
        let rows = concat_batches(&source.schema(), &batches)?;
        let encoder = KeyEncoder::new(&source.schema(), keys.to_vec())?;
        let keys = KeyTable::build(&encoder, &rows)?;
        Ok(Loaded { rows, keys })
    }

    /// The table: read on first use (failing the join if it cannot be),
    /// then refreshed in the background.
    async fn get(&self, keys: &[usize]) -> Result<Arc<Loaded>> {
        let receiver = self
            .current
            .get_or_try_init(|| async {
                let loaded = Arc::new(Self::read(self.source.as_ref(), keys).await?);
                let (sender, receiver) = watch::channel(loaded);
                if let Some(interval) = self.refresh {
                    let (source, keys) = (self.source.clone(), keys.to_vec());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(interval).await;
                            match Self::read(source.as_ref(), &keys).await {
                                // Nobody reads the table any more: stop.
                                Ok(loaded) => {
                                    if sender.send(Arc::new(loaded)).is_err() {
                                        break;
                                    }
                                }
                                Err(error) => {
                                    if sender.is_closed() {
                                        break;
                                    }
                                    tracing::warn!(%error, "could not re-read the lookup table; keeping the previous one");
                                }
                            }
                        }
                    });
                }
                Ok::<_, Error>(receiver)
            })
            .await?;
        Ok(receiver.borrow().clone())
    }
}

pub(crate) struct LookupJoin {
    plan: JoinPlan,
    table: Arc<LookupTable>,
    keys: KeyEncoder,
    /// The size of the table as last used.
    state: StateSize,
}

impl LookupJoin {
    pub(crate) fn new(plan: JoinPlan, table: Arc<LookupTable>) -> Result<Self> {
        Ok(LookupJoin {
            keys: KeyEncoder::new(&plan.left, plan.left_keys.clone())?,
            plan,
            table,
            state: StateSize::default(),
        })
    }
}

#[async_trait]
impl Operator for LookupJoin {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let table = self.table.get(&self.plan.right_keys).await?;
        self.state = StateSize {
            rows: table.keys.len() as u64,
            bytes: (table.rows.get_array_memory_size() + table.keys.size()) as u64,
        };
        let (left_rows, right_rows) =
            table
                .keys
                .probe(&self.keys, &batch, self.plan.keep_unmatched)?;
        out.emit(pair_up(
            &self.plan.schema,
            Vec::new(),
            &batch,
            &left_rows,
            &table.rows,
            &right_rows,
        )?);
        Ok(())
    }

    async fn on_end(&mut self, _ctx: &mut Context, _out: &mut Collector) -> Result<()> {
        self.state = StateSize::default();
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        self.state
    }
}
