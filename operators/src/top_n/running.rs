//! Running top-N: the best `n` rows over all rows so far (per partition),
//! with no window, kept current as rows change and sent on as a changelog:
//! an upsert for a row that enters the top or changes in it, a delete for
//! one that falls out. The input is rows by `key`: a later row of a key
//! replaces its earlier one, and a changelog's delete removes it, so the
//! output of a running aggregate (views per tweet) ranks as it changes
//! (the 1000 most viewed tweets).
//!
//! Every current row is kept, not only the top ones: a row outside the
//! top can climb into it.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::ArrayRef;
use arrow::compute::SortOptions;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::row::{RowConverter, SortField};
use flumen_core::changelog::{self, Op, op_column, op_field};
use flumen_core::prelude::*;

use crate::window::state;

/// A row encoded as comparable bytes.
type Bytes = Box<[u8]>;

/// The output schema: the input's columns (but a changelog's own `_op`)
/// and `_op`.
pub(super) fn output_schema(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<_> = input
        .fields()
        .iter()
        .filter(|f| f.name() != changelog::OP)
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(op_field());
    Arc::new(Schema::new(fields))
}

/// What the running top-N needs to know of its input.
pub(super) struct Columns {
    pub(super) key: Vec<usize>,
    pub(super) order: Vec<(usize, SortOptions)>,
    pub(super) partition: Vec<usize>,
}

/// One partition's rows.
#[derive(Default)]
struct Partition {
    /// Every current row by (order, key): best first.
    ranked: BTreeSet<(Bytes, Bytes)>,
    /// Key → (order, the whole row).
    rows: HashMap<Bytes, (Bytes, Bytes)>,
    /// The top as last sent: key → the whole row.
    sent: HashMap<Bytes, Bytes>,
}

pub(super) struct RunningTopN {
    n: usize,
    with_ties: bool,
    output: SchemaRef,
    /// The input's columns but `_op`: what a stored row holds.
    values: Vec<usize>,
    columns: Columns,
    keys: RowConverter,
    order: RowConverter,
    partitions_by: RowConverter,
    rows: RowConverter,
    partitions: HashMap<Bytes, Partition>,
    /// Key → the partition its row is in (a new row of the key may move
    /// it to another).
    partition_of: HashMap<Bytes, Bytes>,
}

impl RunningTopN {
    pub(super) fn new(
        n: usize,
        with_ties: bool,
        input: &SchemaRef,
        columns: Columns,
    ) -> Result<Self> {
        let field = |c: usize| SortField::new(input.field(c).data_type().clone());
        let values: Vec<usize> = (0..input.fields().len())
            .filter(|&c| input.field(c).name() != changelog::OP)
            .collect();
        Ok(RunningTopN {
            n,
            with_ties,
            output: output_schema(input),
            keys: RowConverter::new(columns.key.iter().map(|&c| field(c)).collect())?,
            order: RowConverter::new(
                columns
                    .order
                    .iter()
                    .map(|&(c, options)| {
                        SortField::new_with_options(input.field(c).data_type().clone(), options)
                    })
                    .collect(),
            )?,
            partitions_by: RowConverter::new(
                columns.partition.iter().map(|&c| field(c)).collect(),
            )?,
            rows: RowConverter::new(values.iter().map(|&c| field(c)).collect())?,
            values,
            columns,
            partitions: HashMap::new(),
            partition_of: HashMap::new(),
        })
    }

    /// Adds, replaces or removes the rows of `batch` (whose columns are
    /// the input's), returning the partitions they touched.
    fn take_in(&mut self, batch: &RecordBatch, ops: Option<Vec<Op>>) -> Result<HashSet<Bytes>> {
        let project = |columns: &[usize]| -> Vec<ArrayRef> {
            columns.iter().map(|&c| batch.column(c).clone()).collect()
        };
        let keys = self.keys.convert_columns(&project(&self.columns.key))?;
        let orders: Vec<usize> = self.columns.order.iter().map(|(c, _)| *c).collect();
        let orders = self.order.convert_columns(&project(&orders))?;
        let rows = self.rows.convert_columns(&project(&self.values))?;
        let partitions = if self.columns.partition.is_empty() {
            None
        } else {
            Some(
                self.partitions_by
                    .convert_columns(&project(&self.columns.partition))?,
            )
        };
        let mut touched = HashSet::new();
        for row in 0..batch.num_rows() {
            let partition: Bytes = match &partitions {
                Some(p) => Box::from(p.row(row).data()),
                None => Box::default(),
            };
            let key: Bytes = Box::from(keys.row(row).data());
            if let Some(before) = self.partition_of.remove(&key) {
                let entry = self.partitions.get_mut(&before).expect("a key's partition");
                if let Some((order, _)) = entry.rows.remove(&key) {
                    entry.ranked.remove(&(order, key.clone()));
                }
                touched.insert(before);
            }
            if ops.as_ref().is_none_or(|ops| ops[row] == Op::Upsert) {
                let entry = self.partitions.entry(partition.clone()).or_default();
                let order: Bytes = Box::from(orders.row(row).data());
                entry.ranked.insert((order.clone(), key.clone()));
                entry
                    .rows
                    .insert(key.clone(), (order, Box::from(rows.row(row).data())));
                self.partition_of.insert(key, partition.clone());
                touched.insert(partition);
            }
        }
        Ok(touched)
    }

    /// The top of a partition now: key → row.
    fn top(&self, partition: &Partition) -> HashMap<Bytes, Bytes> {
        let mut top = HashMap::new();
        let mut last: Option<&Bytes> = None;
        for (order, key) in &partition.ranked {
            if top.len() >= self.n && !(self.with_ties && last == Some(order)) {
                break;
            }
            top.insert(key.clone(), partition.rows[key].1.clone());
            last = Some(order);
        }
        top
    }

    /// Sends what changed in the tops of `touched`: deletes for rows that
    /// fell out, upserts for rows that came in or changed.
    fn send_changes(&mut self, touched: HashSet<Bytes>, out: &mut Collector) -> Result<()> {
        let mut deleted: Vec<Bytes> = Vec::new();
        let mut upserted: Vec<Bytes> = Vec::new();
        let mut touched: Vec<Bytes> = touched.into_iter().collect();
        touched.sort_unstable();
        for partition in touched {
            let Some(entry) = self.partitions.get(&partition) else {
                continue;
            };
            let top = self.top(entry);
            let entry = self.partitions.get_mut(&partition).expect("checked above");
            let mut gone: Vec<(&Bytes, &Bytes)> = entry
                .sent
                .iter()
                .filter(|(key, _)| !top.contains_key(*key))
                .collect();
            gone.sort_unstable();
            deleted.extend(gone.into_iter().map(|(_, row)| row.clone()));
            let mut new: Vec<(&Bytes, &Bytes)> = top
                .iter()
                .filter(|(key, row)| entry.sent.get(*key) != Some(*row))
                .collect();
            new.sort_unstable();
            upserted.extend(new.into_iter().map(|(_, row)| row.clone()));
            entry.sent = top;
            if entry.rows.is_empty() {
                self.partitions.remove(&partition);
            }
        }
        for (op, rows) in [(Op::Delete, deleted), (Op::Upsert, upserted)] {
            if rows.is_empty() {
                continue;
            }
            let parser = self.rows.parser();
            let mut columns = self
                .rows
                .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
            columns.push(op_column(op, rows.len()));
            out.emit(RecordBatch::try_new_with_options(
                self.output.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(rows.len())),
            )?);
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for RunningTopN {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let ops = changelog::ops(&batch)?;
        let touched = self.take_in(&batch, ops)?;
        self.send_changes(touched, out)
    }

    /// One table, `rows`: every current row (its columns but `_op`). The
    /// top sent so far is the top of these rows, so it is not kept apart.
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut rows: Vec<&Bytes> = self
            .partitions
            .values()
            .flat_map(|p| p.rows.values().map(|(_, row)| row))
            .collect();
        rows.sort_unstable();
        let parser = self.rows.parser();
        let columns = self
            .rows
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        // The output's columns but `_op`, which come first.
        let schema = Arc::new(Schema::new(
            self.output.fields()[..self.values.len()].to_vec(),
        ));
        let table = RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        Ok(Snapshot::new(serde_json::json!({ "rows": rows.len() }))
            .with_keyed_table("rows", table, 0))
    }

    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        if snapshot.is_empty() {
            return Ok(());
        }
        let table = state::table(&snapshot, "rows")?;
        // The stored rows have the input's columns but `_op`: map the
        // input's column indices onto them.
        let position = |c: usize| {
            self.values
                .iter()
                .position(|v| *v == c)
                .expect("a value column")
        };
        let columns = Columns {
            key: self.columns.key.iter().map(|&c| position(c)).collect(),
            order: self
                .columns
                .order
                .iter()
                .map(|&(c, o)| (position(c), o))
                .collect(),
            partition: self
                .columns
                .partition
                .iter()
                .map(|&c| position(c))
                .collect(),
        };
        let saved = std::mem::replace(&mut self.columns, columns);
        let values = std::mem::replace(&mut self.values, (0..table.num_columns()).collect());
        let touched = self.take_in(table, None);
        self.columns = saved;
        self.values = values;
        for partition in touched? {
            let top = self.top(&self.partitions[&partition]);
            self.partitions.get_mut(&partition).expect("touched").sent = top;
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let (rows, bytes) = self.partitions.values().fold((0, 0), |(rows, bytes), p| {
            let size: usize = p
                .rows
                .iter()
                .map(|(k, (o, r))| 2 * k.len() + 2 * o.len() + r.len() + 96)
                .sum();
            (rows + p.rows.len(), bytes + size)
        });
        StateSize {
            rows: rows as u64,
            bytes: bytes as u64,
        }
    }
}
