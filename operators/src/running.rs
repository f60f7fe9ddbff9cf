//! Running aggregates: aggregates per key over every row so far, with no
//! window, sent on as a changelog (see [`flumen_core::changelog`]): an
//! upsert with a key's current values whenever they change, a delete when
//! a key is dropped for being idle. A key-value sink downstream then holds
//! the view `SELECT keys, aggregates ... GROUP BY keys` over the input so
//! far.
//!
//! Each key has its own DataFusion accumulators (any aggregate DataFusion
//! has), whose values can be read at any time without disturbing them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array, new_null_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use flumen_core::changelog::{Op, op_column, op_field};
use flumen_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::aggregate::{Aggregates, Arguments};
use crate::join::keys::key_indices;
use crate::window::{state, wall_clock_millis};

/// Aggregates over every row so far, per key, with no window (a view that
/// stays current): `count(*)`, `sum(x)`, `min`/`max`, `avg`,
/// `last_value(x)`, any DataFusion aggregate. Its output is a changelog:
/// the key columns, one column per aggregate, and `_op` (`upsert` with a
/// key's current values, `delete` when a key is dropped).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The columns whose values make a key, e.g. `[tweet_id]`. None: one
    /// running aggregate over all rows.
    #[serde(default)]
    pub group_by: Vec<String>,

    /// SQL aggregate expressions, e.g. `count(*) AS views` or
    /// `max(viewed_at) AS last_view`.
    pub aggregates: Vec<String>,

    /// When a key's new values go out: `on_change` (after every input
    /// batch that changed them, default), `on_checkpoint` (once per
    /// checkpoint, each key at most once, and at the end) or
    /// `{ every: 5s }` (at most once per interval of processing time).
    #[serde(default)]
    pub emit: Emit,

    /// Drops a key not updated for this long (processing time), sending a
    /// delete for it; a later row of the key starts it afresh. Default:
    /// keys are kept for ever.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub idle_ttl: Option<Duration>,

    /// The most keys held at once. A row whose key would be one more goes
    /// to the dead letters, saying so, instead of growing the state.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    10_000_000
}

/// When a running aggregate sends its changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Emit {
    /// After every input batch that changed a key.
    #[default]
    OnChange,
    /// Once per checkpoint (and at the end of the input).
    OnCheckpoint,
    /// At most once per interval of processing time (and at the end).
    Every(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
}

impl TransformConfig for AggregateConfig {
    const TYPE: &str = "aggregate";
    const DESCRIPTION: &str =
        "Running aggregates per key over all rows so far, sent on as a changelog.";
    type Operator = RunningAggregate;

    fn build(&self) -> Result<RunningAggregate> {
        if self.aggregates.is_empty() {
            return Err(Error::config(
                "aggregates",
                "lists no aggregates; e.g. `count(*) AS views`",
            ));
        }
        if self.max_keys == 0 {
            return Err(Error::config("max_keys", "must be at least 1"));
        }
        if let Emit::Every(interval) = self.emit
            && interval.is_zero()
        {
            return Err(Error::config("emit.every", "must be more than 0"));
        }
        if self.idle_ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return Err(Error::config("idle_ttl", "must be at least 1ms"));
        }
        Ok(RunningAggregate {
            config: self.clone(),
        })
    }
}

/// The running aggregate. Built from an [`AggregateConfig`].
#[derive(Debug, Clone)]
pub struct RunningAggregate {
    config: AggregateConfig,
}

impl RunningAggregate {
    fn plan(&self, input: &SchemaRef) -> Result<(Vec<usize>, Aggregates)> {
        if input.index_of(flumen_core::changelog::OP).is_ok() {
            // Its deletes would have to be taken back out of the
            // aggregates, which this operator does not do.
            return Err(Error::config(
                "inputs",
                format!(
                    "the input is a changelog (it has `{}`); a running aggregate reads events",
                    flumen_core::changelog::OP
                ),
            ));
        }
        let keys = key_indices(input, &self.config.group_by, "group_by")?;
        let aggregates = Aggregates::plan(&self.config.aggregates, input, "aggregates")?;
        Ok((keys, aggregates))
    }
}

impl OperatorFactory for RunningAggregate {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = &inputs[0];
        let (keys, aggregates) = self.plan(input)?;
        let mut fields: Vec<Field> = keys
            .iter()
            .map(|&k| input.field(k).as_ref().clone().with_nullable(true))
            .collect();
        for field in aggregates.fields() {
            if fields.iter().any(|f| f.name() == field.name()) {
                return Err(Error::config(
                    "aggregates",
                    format!("`{}` names two output columns", field.name()),
                ));
            }
            // A delete carries no values.
            fields.push(field.as_ref().clone().with_nullable(true));
        }
        if fields
            .iter()
            .any(|f| f.name() == flumen_core::changelog::OP)
        {
            return Err(Error::config(
                "aggregates",
                format!(
                    "`{}` is the changelog's own column",
                    flumen_core::changelog::OP
                ),
            ));
        }
        fields.push(op_field());
        Ok(Arc::new(Schema::new(fields)))
    }

    fn input_partitioning(&self, _input: usize) -> Option<Vec<String>> {
        (!self.config.group_by.is_empty()).then(|| self.config.group_by.clone())
    }

    fn max_parallelism(&self) -> Option<usize> {
        self.config.group_by.is_empty().then_some(1)
    }

    fn state_rescale(&self) -> StateRescale {
        StateRescale::ByKeyGroup
    }

    fn state_description(&self, _inputs: &[SchemaRef]) -> Option<String> {
        Some(format!(
            "running aggregates by [{}] of [{}]",
            self.config.group_by.join(", "),
            self.config.aggregates.join(", ")
        ))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        let input = &inputs[0];
        let (keys, aggregates) = self.plan(input)?;
        let converter = RowConverter::new(
            keys.iter()
                .map(|&k| SortField::new(input.field(k).data_type().clone()))
                .collect(),
        )?;
        let key_fields: Vec<Field> = keys
            .iter()
            .map(|&k| input.field(k).as_ref().clone().with_nullable(true))
            .collect();
        Ok(Box::new(RunningInstance {
            output: self.output_schema(inputs)?,
            key_schema: Arc::new(Schema::new(key_fields)),
            keys,
            converter,
            state_kept: aggregates.state_is_kept(),
            aggregates,
            emit: self.config.emit,
            idle_ttl: self.config.idle_ttl.map(|t| t.as_millis() as i64),
            max_keys: self.config.max_keys,
            state: HashMap::new(),
            dirty: HashSet::new(),
            next_emit: None,
            next_expiry: None,
        }))
    }
}

/// One key's running aggregates.
struct KeyState {
    accumulators: Vec<Box<dyn Accumulator>>,
    /// When a row of the key last came (processing time, ms).
    touched: i64,
}

struct RunningInstance {
    output: SchemaRef,
    /// The key columns as the output and the snapshots have them.
    key_schema: SchemaRef,
    /// The key columns' indices in the input.
    keys: Vec<usize>,
    converter: RowConverter,
    aggregates: Aggregates,
    /// Per aggregate: whether reading its state leaves it as it was.
    state_kept: Vec<bool>,
    emit: Emit,
    idle_ttl: Option<i64>,
    max_keys: usize,
    /// Per key (its key columns encoded as comparable bytes).
    state: HashMap<Box<[u8]>, KeyState>,
    /// Keys changed since their values last went out.
    dirty: HashSet<Box<[u8]>>,
    /// With `emit: every`: when the changes go out next.
    next_emit: Option<EventTime>,
    /// With `idle_ttl`: when idle keys are looked for next.
    next_expiry: Option<EventTime>,
}

impl RunningInstance {
    /// Adds the rows at `indices` to `key`'s aggregates, creating the key;
    /// false if it is new and there is no room for it.
    fn accumulate(
        &mut self,
        key: &[u8],
        indices: &[u32],
        arguments: &[Arguments],
        now: i64,
    ) -> Result<bool> {
        if !self.state.contains_key(key) {
            if self.state.len() >= self.max_keys {
                return Ok(false);
            }
            let accumulators = self.aggregates.row_accumulators()?;
            self.state.insert(
                Box::from(key),
                KeyState {
                    accumulators,
                    touched: now,
                },
            );
        }
        let entry = self.state.get_mut(key).expect("inserted above");
        let indices = UInt32Array::from(indices.to_vec());
        for (accumulator, arguments) in entry.accumulators.iter_mut().zip(arguments) {
            let values = arguments.rows(&indices)?;
            if values.first().is_none_or(|v| !v.is_empty()) {
                accumulator.update_batch(&values)?;
            }
        }
        entry.touched = now;
        if !self.dirty.contains(key) {
            self.dirty.insert(Box::from(key));
        }
        Ok(true)
    }

    /// The key columns of `keys`.
    fn key_columns(&self, keys: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        Ok(self
            .converter
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?)
    }

    /// Sends the current values of every changed key, in key order.
    fn emit_changes(&mut self, out: &mut Collector) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<Box<[u8]>> = self.dirty.drain().collect();
        keys.sort_unstable();
        let keys: Vec<&[u8]> = keys
            .iter()
            .map(|k| k.as_ref())
            .filter(|k| self.state.contains_key(*k))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut columns = self.key_columns(&keys)?;
        for aggregate in 0..self.aggregates.len() {
            let values = keys
                .iter()
                .map(|k| {
                    let state = self.state.get_mut(*k).expect("filtered above");
                    Ok(state.accumulators[aggregate].evaluate()?)
                })
                .collect::<Result<Vec<ScalarValue>>>()?;
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        columns.push(op_column(Op::Upsert, keys.len()));
        out.emit(self.batch(columns)?);
        Ok(())
    }

    /// Drops keys idle for `idle_ttl`, sending a delete for each.
    fn expire(&mut self, now: i64, out: &mut Collector) -> Result<()> {
        let Some(ttl) = self.idle_ttl else {
            return Ok(());
        };
        let mut idle: Vec<Box<[u8]>> = self
            .state
            .iter()
            .filter(|(_, state)| now - state.touched >= ttl)
            .map(|(key, _)| key.clone())
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        idle.sort_unstable();
        for key in &idle {
            self.state.remove(key);
            self.dirty.remove(key);
        }
        let keys: Vec<&[u8]> = idle.iter().map(|k| k.as_ref()).collect();
        let mut columns = self.key_columns(&keys)?;
        for field in self.aggregates.fields() {
            columns.push(new_null_array(field.data_type(), keys.len()));
        }
        columns.push(op_column(Op::Delete, keys.len()));
        out.emit(self.batch(columns)?);
        Ok(())
    }

    fn batch(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
        let rows = columns.last().map_or(0, |c| c.len());
        Ok(RecordBatch::try_new_with_options(
            self.output.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Schedules the next interval emit and idle check from `now`.
    fn schedule(&mut self, now: i64) {
        if let Emit::Every(interval) = self.emit
            && self.next_emit.is_none()
        {
            self.next_emit = Some(now + interval.as_millis() as i64);
        }
        if let Some(ttl) = self.idle_ttl
            && self.next_expiry.is_none()
            && !self.state.is_empty()
        {
            // Keys go at most a tenth of the TTL late.
            self.next_expiry = Some(now + (ttl / 10).max(1));
        }
    }
}

#[async_trait]
impl Operator for RunningInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let now = wall_clock_millis();
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|&k| batch.column(k).clone()).collect();
        let rows = if self.keys.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_columns)?)
        };
        // Rows by key, in order of first appearance.
        let mut order: Vec<&[u8]> = Vec::new();
        let mut by_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for row in 0..batch.num_rows() {
            let key: &[u8] = match &rows {
                Some(rows) => rows.row(row).data(),
                None => &[],
            };
            by_key
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(row as u32);
        }
        let arguments = self.aggregates.arguments(&batch)?;
        let mut refused = Vec::new();
        for key in order {
            let indices = &by_key[key];
            if !self.accumulate(key, indices, &arguments, now)? {
                refused.extend_from_slice(indices);
            }
        }
        if !refused.is_empty() {
            let rows = arrow::compute::take_record_batch(&batch, &UInt32Array::from(refused))?;
            out.reject(
                &rows,
                &format!(
                    "the aggregate holds `max_keys` = {} keys, and this row's key would be one more",
                    self.max_keys
                ),
            )?;
        }
        if self.emit == Emit::OnChange {
            self.emit_changes(out)?;
        }
        self.schedule(now);
        Ok(())
    }

    async fn on_barrier(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if self.emit == Emit::OnCheckpoint {
            self.emit_changes(out)?;
        }
        Ok(())
    }

    async fn on_end(&mut self, _ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.emit_changes(out)
    }

    fn next_timer(&self) -> Option<EventTime> {
        match (self.next_emit, self.next_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_timer(
        &mut self,
        now: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if self.next_emit.is_some_and(|at| at <= now) {
            self.next_emit = None;
            self.emit_changes(out)?;
        }
        if self.next_expiry.is_some_and(|at| at <= now) {
            self.next_expiry = None;
            self.expire(now, out)?;
        }
        self.schedule(now);
        Ok(())
    }

    /// One table, `keys`: per key its key columns, when it was last
    /// updated, whether its values are still to go out, and its
    /// aggregates' states (`state_<aggregate>_<part>`).
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut keys: Vec<&Box<[u8]>> = self.state.keys().collect();
        keys.sort_unstable();
        let keys: Vec<Box<[u8]>> = keys.into_iter().cloned().collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let mut columns: Vec<(String, ArrayRef)> = self
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(self.key_columns(&key_refs)?)
            .collect();
        columns.push((
            "touched".into(),
            Arc::new(Int64Array::from_iter_values(
                keys.iter().map(|k| self.state[k].touched),
            )),
        ));
        columns.push((
            "dirty".into(),
            Arc::new(BooleanArray::from_iter(
                keys.iter().map(|k| Some(self.dirty.contains(k))),
            )),
        ));
        for aggregate in 0..self.aggregates.len() {
            let mut parts: Vec<Vec<ScalarValue>> = Vec::new();
            for key in &keys {
                let state = self.state.get_mut(key).expect("a key of the state");
                let values = state.accumulators[aggregate].state()?;
                if !self.state_kept[aggregate] {
                    // Reading the state may have used it up: start again
                    // from what it was.
                    let mut fresh = self.aggregates.row_accumulator(aggregate)?;
                    let arrays = values
                        .iter()
                        .map(|v| v.to_array())
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    fresh.merge_batch(&arrays)?;
                    state.accumulators[aggregate] = fresh;
                }
                parts.resize_with(values.len(), Vec::new);
                for (part, value) in values.into_iter().enumerate() {
                    parts[part].push(value);
                }
            }
            for (part, values) in parts.into_iter().enumerate() {
                columns.push((
                    format!("state_{aggregate}_{part}"),
                    ScalarValue::iter_to_array(values)?,
                ));
            }
        }
        let table = if keys.is_empty() {
            // No key, no state columns to build: an empty table says so.
            RecordBatch::try_from_iter([(
                "touched",
                Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef,
            )])?
        } else {
            RecordBatch::try_from_iter(columns)?
        };
        let snapshot = Snapshot::new(serde_json::json!({ "keys": keys.len() }));
        Ok(match keys.is_empty() {
            true => snapshot.with_table("keys", table),
            false => snapshot.with_keyed_table("keys", table, 0),
        })
    }

    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        if snapshot.is_empty() {
            return Ok(());
        }
        let table = state::table(&snapshot, "keys")?;
        if table.num_rows() == 0 {
            return Ok(());
        }
        let key_columns = self
            .key_schema
            .fields()
            .iter()
            .map(|f| {
                table.column_by_name(f.name()).cloned().ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "the running aggregate's snapshot has no key `{}`",
                        f.name()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = if self.keys.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_columns)?)
        };
        let touched = state::int64s(table, "touched")?;
        let dirty = state::booleans(table, "dirty")?;
        for row in 0..table.num_rows() {
            let key: Box<[u8]> = match &rows {
                Some(rows) => Box::from(rows.row(row).data()),
                None => Box::from(&[][..]),
            };
            let mut accumulators = self.aggregates.row_accumulators()?;
            for (aggregate, accumulator) in accumulators.iter_mut().enumerate() {
                let parts = (0..)
                    .map_while(|part| table.column_by_name(&format!("state_{aggregate}_{part}")))
                    .map(|column| column.slice(row, 1))
                    .collect::<Vec<_>>();
                accumulator.merge_batch(&parts)?;
            }
            if dirty.value(row) {
                self.dirty.insert(key.clone());
            }
            self.state.insert(
                key,
                KeyState {
                    accumulators,
                    touched: touched.value(row),
                },
            );
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let bytes: usize = self
            .state
            .iter()
            .map(|(key, state)| {
                key.len() + 48 + state.accumulators.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum();
        StateSize {
            rows: self.state.len() as u64,
            bytes: bytes as u64,
        }
    }
}
