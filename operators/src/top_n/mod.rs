//! Top-N: the best `n` rows of each window (and key) by some order, such
//! as Nexmark's hottest auctions; or, with `key` and no window, the best
//! `n` rows so far, kept current as a changelog ([`running`]), such as a
//! "top 1000 most viewed" table.
//!
//! Only the current top rows of each open window are kept: each batch is
//! first cut down against the worst row still in the top (vectorized
//! comparisons), and only the survivors are sorted with the top so far.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::kernels::cmp;
use arrow::compute::{
    SortColumn, SortOptions, and, concat_batches, filter_record_batch, lexsort_to_indices, or,
    take_record_batch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::row::{RowConverter, SortField};
use flumen_core::event_time::{event_time_column, time_column, to_millis, with_event_time};
use flumen_core::prelude::*;
use flumen_core::schema::column_index;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::window::{WindowKind, state};

mod running;

/// Keeps the top `n` rows of each window (and key).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopNConfig {
    /// How many rows to keep per window (and key).
    pub n: usize,

    /// The order, best first: column names, each optionally followed by
    /// `ASC` or `DESC` (default `ASC`) and `NULLS FIRST` or `NULLS LAST`,
    /// e.g. `[bids DESC, auction]`.
    pub order_by: Vec<String>,

    /// Rank separately for each value of these columns. Default: one
    /// ranking per window.
    #[serde(default)]
    pub partition_by: Vec<String>,

    /// Windows to rank within: `{ tumble: 10s }` or `{ hop: { size: 10s,
    /// slide: 2s } }`, over `time_column`. Default: the windows the input
    /// already has (its `window_start` and `window_end` columns, as a
    /// `window` transform writes them).
    #[serde(default)]
    pub window: Option<WindowKind>,

    /// The event-time column, for `window`. Default: the input's event-time
    /// column.
    #[serde(default)]
    pub time_column: Option<String>,

    /// Keep rows tied with the n-th too (SQL's `RANK() <= n`). Without
    /// ties, exactly `n` rows are kept and which of the tied ones is not
    /// specified.
    #[serde(default = "yes")]
    pub with_ties: bool,

    /// The columns that identify a row, for a running top N over all rows
    /// so far (no `window`): a later row of a key replaces its earlier
    /// one, a changelog's delete removes it, and the output is a
    /// changelog of the top (an upsert for a row that enters it or
    /// changes in it, a delete for one that falls out). E.g. `[tweet_id]`
    /// over a running count of views per tweet.
    #[serde(default)]
    pub key: Vec<String>,

    /// How long after a window's end rows still count in it; later rows go
    /// to the `late` output.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub allowed_lateness: Duration,
}

fn yes() -> bool {
    true
}

impl TransformConfig for TopNConfig {
    const TYPE: &str = "top_n";
    const DESCRIPTION: &str =
        "Keeps the top n rows of each window (and key), or of all rows so far as a changelog.";
    type Operator = TopN;

    /// Checks the settings and returns the operator.
    fn build(&self) -> Result<TopN> {
        if self.n == 0 {
            return Err(Error::config("n", "must be at least 1"));
        }
        if self.order_by.is_empty() {
            return Err(Error::config(
                "order_by",
                "lists no columns; e.g. `[bids DESC]`",
            ));
        }
        if !self.key.is_empty() && self.window.is_some() {
            return Err(Error::config(
                "key",
                "ranks all rows so far, not windows: leave out `window` (or `key`)",
            ));
        }
        let windows = match &self.window {
            None => None,
            Some(WindowKind::Tumble(size)) => {
                let size = positive_millis(*size, "window.tumble")?;
                Some((size, size))
            }
            Some(WindowKind::Hop { size, slide }) => {
                let size = positive_millis(*size, "window.hop.size")?;
                let slide = positive_millis(*slide, "window.hop.slide")?;
                if size % slide != 0 {
                    return Err(Error::config(
                        "window.hop.slide",
                        "must divide the window size",
                    ));
                }
                Some((size, slide))
            }
            Some(WindowKind::Session { .. }) => {
                return Err(Error::config(
                    "window",
                    "session windows are not supported here; rank the output of a `window` transform instead",
                ));
            }
        };
        let lateness = i64::try_from(self.allowed_lateness.as_millis())
            .map_err(|_| Error::config("allowed_lateness", "is too long"))?;
        Ok(TopN {
            config: self.clone(),
            windows,
            lateness,
        })
    }
}

fn positive_millis(duration: Duration, key: &str) -> Result<i64> {
    match i64::try_from(duration.as_millis()) {
        Ok(0) => Err(Error::config(key, "must be at least 1ms")),
        Ok(millis) => Ok(millis),
        Err(_) => Err(Error::config(key, "is too long")),
    }
}

/// The top-N operator. Built from a [`TopNConfig`].
#[derive(Debug, Clone)]
pub struct TopN {
    config: TopNConfig,
    /// Windows assigned here: (size, slide) in milliseconds.
    windows: Option<(i64, i64)>,
    lateness: i64,
}

/// Where rows' windows come from.
#[derive(Debug, Clone, Copy)]
enum WindowSource {
    /// Assigned here from a time column: (column, size, slide).
    Assigned { time: usize, size: i64, slide: i64 },
    /// The input's own `window_start` and `window_end` columns.
    Columns { start: usize, end: usize },
}

struct Plan {
    windows: WindowSource,
    order: Vec<(usize, SortOptions)>,
    partition: Vec<usize>,
    schema: SchemaRef,
}

impl TopN {
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        let column = |name: &str, key: String| column_index(input, &key, name);
        let order = self
            .config
            .order_by
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let (name, options) =
                    parse_order(item).map_err(|m| Error::config(format!("order_by[{i}]"), m))?;
                Ok((column(name, format!("order_by[{i}]"))?, options))
            })
            .collect::<Result<Vec<_>>>()?;
        let partition = self
            .config
            .partition_by
            .iter()
            .enumerate()
            .map(|(i, name)| column(name, format!("partition_by[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let (windows, schema) = match self.windows {
            Some((size, slide)) => {
                let time = time_column(input, self.config.time_column.as_deref(), "time_column")?;
                let field = |name: &str| {
                    Field::new(
                        name,
                        DataType::Timestamp(TimeUnit::Millisecond, None),
                        false,
                    )
                };
                let mut fields = vec![field("window_start"), field("window_end")];
                fields.extend(input.fields().iter().map(|f| f.as_ref().clone()));
                let schema = with_event_time(&Schema::new(fields), "window_end");
                (WindowSource::Assigned { time, size, slide }, schema)
            }
            None => {
                let (start, end) = match (
                    input.index_of("window_start"),
                    input.index_of("window_end"),
                ) {
                    (Ok(start), Ok(end)) => (start, end),
                    _ => {
                        return Err(Error::config(
                            "window",
                            "the input has no `window_start` and `window_end` columns; set `window` to rank within windows, or `key` to rank all rows so far",
                        ));
                    }
                };
                let schema = match event_time_column(input) {
                    Some(_) => input.clone(),
                    None => with_event_time(input, "window_end"),
                };
                (WindowSource::Columns { start, end }, schema)
            }
        };
        Ok(Plan {
            windows,
            order,
            partition,
            schema,
        })
    }
}

/// `price DESC NULLS LAST` -> (`price`, options).
pub(crate) fn parse_order(item: &str) -> std::result::Result<(&str, SortOptions), String> {
    let words: Vec<&str> = item.split_whitespace().collect();
    let Some((name, modifiers)) = words.split_first() else {
        return Err("is empty".into());
    };
    let upper: Vec<String> = modifiers.iter().map(|w| w.to_ascii_uppercase()).collect();
    let mut options = SortOptions {
        descending: false,
        nulls_first: false,
    };
    let mut rest = upper.as_slice();
    match rest.first().map(String::as_str) {
        Some("DESC") => {
            options.descending = true;
            rest = &rest[1..];
        }
        Some("ASC") => rest = &rest[1..],
        _ => {}
    }
    // SQL's default: nulls sort as the largest value.
    options.nulls_first = options.descending;
    match rest {
        [] => {}
        [nulls, first] if nulls == "NULLS" && first == "FIRST" => options.nulls_first = true,
        [nulls, last] if nulls == "NULLS" && last == "LAST" => options.nulls_first = false,
        _ => {
            return Err(format!(
                "`{item}`: expected `column [ASC|DESC] [NULLS FIRST|LAST]`"
            ));
        }
    }
    Ok((name, options))
}

impl TopN {
    fn running(&self) -> bool {
        !self.config.key.is_empty()
    }

    /// The columns of a running top N.
    fn running_columns(&self, input: &SchemaRef) -> Result<running::Columns> {
        let column = |name: &str, key: String| column_index(input, &key, name);
        let named = |names: &[String], key: &str| {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| column(name, format!("{key}[{i}]")))
                .collect::<Result<Vec<_>>>()
        };
        let order = self
            .config
            .order_by
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let (name, options) =
                    parse_order(item).map_err(|m| Error::config(format!("order_by[{i}]"), m))?;
                Ok((column(name, format!("order_by[{i}]"))?, options))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(running::Columns {
            key: named(&self.config.key, "key")?,
            order,
            partition: named(&self.config.partition_by, "partition_by")?,
        })
    }
}

impl OperatorFactory for TopN {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        if self.running() {
            self.running_columns(&inputs[0])?;
            return Ok(running::output_schema(&inputs[0]));
        }
        Ok(self.plan(&inputs[0])?.schema)
    }

    fn named_outputs(&self, inputs: &[SchemaRef]) -> Result<Vec<(String, SchemaRef)>> {
        if self.running() {
            // Nothing is late for a ranking without windows.
            return Ok(Vec::new());
        }
        Ok(vec![("late".to_string(), inputs[0].clone())])
    }

    fn input_partitioning(&self, _input: usize) -> Option<Vec<String>> {
        // Each window's ranking needs all its rows in one instance.
        match self.config.partition_by.is_empty() {
            true => None,
            false => Some(self.config.partition_by.clone()),
        }
    }

    fn max_parallelism(&self) -> Option<usize> {
        // A ranking over whole windows needs all their rows in one instance.
        self.config.partition_by.is_empty().then_some(1)
    }

    fn state_rescale(&self) -> StateRescale {
        // Without `partition_by` a ranking runs as one instance, and its
        // state goes whole to the next one.
        match self.running() || !self.config.partition_by.is_empty() {
            true => StateRescale::ByKeyGroup,
            false => StateRescale::PerInstance,
        }
    }

    /// Rankings over windows are at 2: their rows carry their window, so
    /// that they split by key group.
    fn state_version(&self) -> u32 {
        match self.running() {
            true => 1,
            false => 2,
        }
    }

    fn state_description(&self, inputs: &[SchemaRef]) -> Option<String> {
        let config = &self.config;
        let windows = match self.windows {
            Some((size, slide)) => format!(" in windows of {size} ms every {slide} ms"),
            None => String::new(),
        };
        Some(format!(
            "the top {} by [{}] per [{}] of rows keyed by [{}]{windows}: ({})",
            config.n,
            config.order_by.join(", "),
            config.partition_by.join(", "),
            config.key.join(", "),
            flumen_core::graph::describe_schema(&inputs[0])
        ))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        if self.running() {
            let columns = self.running_columns(&inputs[0])?;
            return Ok(Box::new(running::RunningTopN::new(
                self.config.n,
                self.config.with_ties,
                &inputs[0],
                columns,
            )?));
        }
        let plan = self.plan(&inputs[0])?;
        let partition_fields = plan
            .partition
            .iter()
            .map(|&c| SortField::new(inputs[0].field(c).data_type().clone()))
            .collect();
        Ok(Box::new(TopNInstance {
            n: self.config.n,
            with_ties: self.config.with_ties,
            lateness: self.lateness,
            partitions: RowConverter::new(partition_fields)?,
            plan,
            input: inputs[0].clone(),
            windows: BTreeMap::new(),
            watermark: EventTime::MIN,
        }))
    }
}

/// The top rows of one window so far, and their window end.
struct Ranked {
    end: i64,
    rows: RecordBatch,
}

struct TopNInstance {
    n: usize,
    with_ties: bool,
    lateness: i64,
    plan: Plan,
    input: SchemaRef,
    partitions: RowConverter,
    /// Open windows by start.
    windows: BTreeMap<i64, Ranked>,
    watermark: EventTime,
}

const LATE: usize = 1;

impl TopNInstance {
    /// Each row's windows, as (row, window start, window end); rows with
    /// no time (or no window) go to `timeless`.
    fn windows_of(
        &self,
        batch: &RecordBatch,
        timeless: &mut Vec<u32>,
    ) -> Result<Vec<(u32, i64, i64)>> {
        let mut placed = Vec::with_capacity(batch.num_rows());
        match self.plan.windows {
            WindowSource::Assigned { time, size, slide } => {
                let times = to_millis(batch.column(time))?;
                for (row, time) in times.iter().enumerate() {
                    let Some(time) = time else {
                        timeless.push(row as u32);
                        continue;
                    };
                    let last = time.div_euclid(slide) * slide;
                    for k in (0..size / slide).rev() {
                        let start = last - k * slide;
                        placed.push((row as u32, start, start + size));
                    }
                }
            }
            WindowSource::Columns { start, end } => {
                let (starts, ends) = (
                    to_millis(batch.column(start))?,
                    to_millis(batch.column(end))?,
                );
                for row in 0..batch.num_rows() {
                    if starts.is_valid(row) && ends.is_valid(row) {
                        placed.push((row as u32, starts.value(row), ends.value(row)));
                    } else {
                        timeless.push(row as u32);
                    }
                }
            }
        }
        Ok(placed)
    }

    /// The window of every row, when the batch lies in exactly one.
    fn single_window(&self, batch: &RecordBatch) -> Result<Option<(i64, i64)>> {
        let window = match self.plan.windows {
            WindowSource::Assigned { time, size, slide } if size == slide => {
                let times = to_millis(batch.column(time))?;
                if times.null_count() > 0 || times.is_empty() {
                    return Ok(None);
                }
                let values = times.values();
                let start = values[0].div_euclid(size) * size;
                // One branch-free pass: every time within [start, start + size).
                let inside = values.iter().fold(true, |inside, &time| {
                    inside & ((time.wrapping_sub(start) as u64) < size as u64)
                });
                inside.then_some((start, start + size))
            }
            WindowSource::Columns { start, end } => {
                let (starts, ends) = (
                    to_millis(batch.column(start))?,
                    to_millis(batch.column(end))?,
                );
                if starts.null_count() > 0 || ends.null_count() > 0 {
                    return Ok(None);
                }
                let bounds =
                    |a: &arrow::array::Int64Array| (arrow::compute::min(a), arrow::compute::max(a));
                match (bounds(&starts), bounds(&ends)) {
                    ((Some(s0), Some(s1)), (Some(e0), Some(e1))) if s0 == s1 && e0 == e1 => {
                        Some((s0, e0))
                    }
                    _ => None,
                }
            }
            WindowSource::Assigned { .. } => None,
        };
        Ok(window)
    }

    fn closed(&self, end: i64) -> bool {
        end.saturating_add(self.lateness) <= self.watermark
    }

    /// Merges `rows` into the top of window `start`.
    fn rank_into(&mut self, start: i64, end: i64, rows: RecordBatch) -> Result<()> {
        let rows = match self.windows.get(&start) {
            Some(ranked) if self.plan.partition.is_empty() => {
                // Whatever is worse than the worst of a full top cannot get in.
                let survivors = self.cut(&ranked.rows, &rows)?;
                if survivors.num_rows() == 0 {
                    return Ok(());
                }
                concat_batches(&self.input, [&ranked.rows, &survivors])?
            }
            Some(ranked) => concat_batches(&self.input, [&ranked.rows, &rows])?,
            None if self.plan.partition.is_empty() && rows.num_rows() > self.n => {
                // A first batch: find its best `n` with a partial sort, then
                // keep those and whatever ties with them, before sorting.
                let best = take_record_batch(
                    &rows,
                    &lexsort_to_indices(&self.order_columns(&rows), Some(self.n))?,
                )?;
                self.cut(&best, &rows)?
            }
            None => rows,
        };
        let top = self.top(&rows)?;
        self.windows.insert(start, Ranked { end, rows: top });
        Ok(())
    }

    fn order_columns(&self, rows: &RecordBatch) -> Vec<SortColumn> {
        self.plan
            .order
            .iter()
            .map(|&(c, options)| SortColumn {
                values: rows.column(c).clone(),
                options: Some(options),
            })
            .collect()
    }

    /// The rows of `candidates` that are at least as good as the worst row
    /// of `top`, when `top` is full.
    fn cut(&self, top: &RecordBatch, candidates: &RecordBatch) -> Result<RecordBatch> {
        if top.num_rows() < self.n {
            return Ok(candidates.clone());
        }
        let worst = top.num_rows() - 1;
        if self.none_can_enter(top.slice(worst, 1), candidates) {
            return Ok(candidates.slice(0, 0));
        }
        let (mut better, mut tied): (Option<BooleanArray>, Option<BooleanArray>) = (None, None);
        // Lexicographic "better than or tied with the worst": a column
        // decides when all the ones before it tie.
        for &(column, options) in &self.plan.order {
            let values = candidates.column(column);
            let threshold = arrow::array::Scalar::new(top.column(column).slice(worst, 1));
            let (beats, equals) = compare_to(values, &threshold, options)?;
            better = Some(match (better, &tied) {
                (None, _) => beats,
                (Some(better), Some(tied)) => or(&better, &and(tied, &beats)?)?,
                (Some(better), None) => better,
            });
            tied = Some(match tied {
                None => equals,
                Some(tied) => and(&tied, &equals)?,
            });
        }
        let keep = or(
            &better.expect("order_by is not empty"),
            &tied.expect("order_by is not empty"),
        )?;
        Ok(filter_record_batch(candidates, &keep)?)
    }

    /// Whether the best of `candidates` is plainly worse than `worst`, by a
    /// single pass over the first order column: the usual case once a
    /// window's top is full, decided without building any mask.
    fn none_can_enter(&self, worst: RecordBatch, candidates: &RecordBatch) -> bool {
        let (column, options) = self.plan.order[0];
        let (values, threshold) = (candidates.column(column), worst.column(column));
        if values.null_count() > 0 || threshold.null_count() > 0 {
            return false;
        }
        macro_rules! decide {
            ($type:ty) => {{
                let (values, threshold) = (
                    values.as_primitive::<$type>(),
                    threshold.as_primitive::<$type>().value(0),
                );
                if options.descending {
                    arrow::compute::max(values).is_some_and(|best| best < threshold)
                } else {
                    arrow::compute::min(values).is_some_and(|best| best > threshold)
                }
            }};
        }
        use arrow::datatypes::*;
        match values.data_type() {
            DataType::Int64 => decide!(Int64Type),
            DataType::Int32 => decide!(Int32Type),
            DataType::UInt64 => decide!(UInt64Type),
            DataType::Float64 => decide!(Float64Type),
            DataType::Timestamp(TimeUnit::Millisecond, _) => decide!(TimestampMillisecondType),
            _ => false,
        }
    }

    /// The best rows of `rows`: per partition, those ranked `n` or better.
    fn top(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        let mut columns: Vec<SortColumn> = self
            .plan
            .partition
            .iter()
            .map(|&c| SortColumn {
                values: rows.column(c).clone(),
                options: None,
            })
            .collect();
        columns.extend(self.order_columns(rows));
        let sorted = lexsort_to_indices(&columns, None)?;
        let sorted = take_record_batch(rows, &sorted)?;
        let partitions = self.partition_rows(&sorted)?;
        let order_fields = self
            .plan
            .order
            .iter()
            .map(|&(c, options)| {
                SortField::new_with_options(self.input.field(c).data_type().clone(), options)
            })
            .collect();
        let order_columns: Vec<ArrayRef> = self
            .plan
            .order
            .iter()
            .map(|&(c, _)| sorted.column(c).clone())
            .collect();
        let order = RowConverter::new(order_fields)?.convert_columns(&order_columns)?;

        let mut keep = Vec::new();
        let (mut position, mut rank) = (0usize, 0usize);
        for row in 0..sorted.num_rows() {
            let new_partition = row == 0
                || partitions
                    .as_ref()
                    .is_some_and(|p| p.row(row) != p.row(row - 1));
            if new_partition {
                position = 0;
                rank = 1;
            } else {
                position += 1;
                if order.row(row) != order.row(row - 1) {
                    rank = position + 1;
                }
            }
            let kept = if self.with_ties {
                rank <= self.n
            } else {
                position < self.n
            };
            if kept {
                keep.push(row as u32);
            }
        }
        Ok(take_record_batch(&sorted, &UInt32Array::from(keep))?)
    }

    fn partition_rows(&self, batch: &RecordBatch) -> Result<Option<arrow::row::Rows>> {
        if self.plan.partition.is_empty() {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = self
            .plan
            .partition
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        Ok(Some(self.partitions.convert_columns(&columns)?))
    }

    fn emit(&mut self, out: &mut Collector, all: bool) -> Result<()> {
        let closed: Vec<i64> = self
            .windows
            .iter()
            .filter(|(_, ranked)| all || self.closed(ranked.end))
            .map(|(start, _)| *start)
            .collect();
        for start in closed {
            let ranked = self.windows.remove(&start).expect("listed above");
            out.emit(self.output(start, ranked)?);
        }
        Ok(())
    }

    fn output(&self, start: i64, ranked: Ranked) -> Result<RecordBatch> {
        let rows = ranked.rows;
        let columns = match self.plan.windows {
            WindowSource::Assigned { .. } => {
                let count = rows.num_rows();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                        start;
                        count
                    ])),
                    Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                        ranked
                            .end;
                        count
                    ])),
                ];
                columns.extend(rows.columns().iter().cloned());
                columns
            }
            WindowSource::Columns { .. } => rows.columns().to_vec(),
        };
        let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &options,
        )?)
    }
}

/// Per row: strictly better than the threshold in this order, and equal to
/// it (nulls equal nulls).
fn compare_to(
    values: &ArrayRef,
    threshold: &arrow::array::Scalar<ArrayRef>,
    options: SortOptions,
) -> Result<(BooleanArray, BooleanArray)> {
    let threshold_null = threshold.clone().into_inner().is_null(0);
    let rows = values.len();
    let nulls_beat = options.nulls_first;
    if threshold_null {
        // Only nulls tie with null; non-nulls beat it when nulls sort last.
        let is_null = arrow::compute::is_null(values)?;
        let beats = if nulls_beat {
            BooleanArray::from(vec![false; rows])
        } else {
            arrow::compute::not(&is_null)?
        };
        return Ok((beats, is_null));
    }
    let beats = if options.descending {
        cmp::gt(values, threshold)?
    } else {
        cmp::lt(values, threshold)?
    };
    let equals = cmp::eq(values, threshold)?;
    if values.null_count() == 0 {
        return Ok((beats, equals));
    }
    // Comparisons with null give null: decide them by where nulls sort.
    let nulls = arrow::compute::is_null(values)?;
    let decided = |by_nulls: bool, compared: &BooleanArray| -> Result<BooleanArray> {
        let zipped = arrow::compute::kernels::zip::zip(
            &nulls,
            &BooleanArray::new_scalar(by_nulls),
            compared,
        )?;
        Ok(zipped.as_boolean().clone())
    };
    Ok((decided(nulls_beat, &beats)?, decided(false, &equals)?))
}

#[async_trait]
impl Operator for TopNInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if let Some((start, end)) = self.single_window(&batch)? {
            // The common case: the whole batch is in one window.
            if self.closed(end) {
                out.emit_to(LATE, batch);
            } else {
                self.rank_into(start, end, batch)?;
            }
            return Ok(());
        }
        // A row that belongs to no window cannot be ranked: it leaves by
        // the late output, like a row whose windows have all closed.
        let mut late = Vec::new();
        let placed = self.windows_of(&batch, &mut late)?;
        // A row is late once every window holding it has closed; until
        // then it is ranked in those still open.
        let mut by_window: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
        let mut ranked = vec![false; batch.num_rows()];
        let mut closed_rows = Vec::new();
        for (row, start, end) in placed {
            if self.closed(end) {
                closed_rows.push(row);
            } else {
                ranked[row as usize] = true;
                by_window.entry((start, end)).or_default().push(row);
            }
        }
        late.extend(closed_rows.into_iter().filter(|row| !ranked[*row as usize]));
        if !late.is_empty() {
            late.sort_unstable();
            late.dedup();
            out.emit_to(LATE, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        for ((start, end), rows) in by_window {
            let (first, last) = (rows[0] as usize, rows[rows.len() - 1] as usize);
            let rows = if last - first + 1 == rows.len() {
                // Rows in time order fill each window with a run of rows:
                // a zero-copy slice.
                batch.slice(first, rows.len())
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))?
            };
            self.rank_into(start, end, rows)?;
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        self.emit(out, false)
    }

    fn output_watermark(&self, input: EventTime) -> EventTime {
        input.saturating_sub(self.lateness)
    }

    async fn on_end(&mut self, _ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.emit(out, true)
    }

    /// One table, `rows`: the top rows so far of every open window, each
    /// with its window's `_start` and `_end`. With `partition_by` it is
    /// keyed by those columns, so that a restore at another parallelism
    /// hands each instance the rankings of its own partitions.
    fn snapshot(&mut self) -> Result<Snapshot> {
        let ranked = self.windows.iter();
        let bounds = |bound: fn(i64, &Ranked) -> i64| {
            let values = ranked
                .clone()
                .flat_map(|(start, r)| std::iter::repeat_n(bound(*start, r), r.rows.num_rows()));
            Arc::new(Int64Array::from_iter_values(values)) as ArrayRef
        };
        let (starts, ends) = (bounds(|start, _| start), bounds(|_, r| r.end));
        let rows = concat_batches(&self.input, ranked.clone().map(|(_, r)| &r.rows))?;
        let mut fields = self.input.fields().to_vec();
        fields.push(Arc::new(Field::new("_start", DataType::Int64, false)));
        fields.push(Arc::new(Field::new("_end", DataType::Int64, false)));
        let mut columns = rows.columns().to_vec();
        columns.extend([starts, ends]);
        let table = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        )?;
        let snapshot = Snapshot::new(serde_json::json!({ "watermark": self.watermark }));
        Ok(match self.plan.partition.is_empty() {
            true => snapshot.with_table("rows", table),
            false => snapshot.with_keyed_table("rows", table, 0),
        })
    }

    /// Takes back what [`snapshot`](Self::snapshot) gave. Several
    /// snapshots (the key groups of several earlier instances) merge: a
    /// window's rankings from each are ranked together again.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        self.watermark = self.watermark.max(state::watermark(&snapshot)?);
        let (rows, runs) = state::runs_by(state::table(&snapshot, "rows")?, "_start")?;
        let ends = state::int64s(&rows, "_end")?.clone();
        let columns = self.input.fields().len();
        let rows = rows.project(&(0..columns).collect::<Vec<_>>())?;
        for (start, first, count) in runs {
            self.rank_into(start, ends.value(first), rows.slice(first, count))?;
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let rows: usize = self.windows.values().map(|r| r.rows.num_rows()).sum();
        let bytes: usize = self
            .windows
            .values()
            .map(|r| r.rows.get_array_memory_size())
            .sum();
        StateSize {
            rows: rows as u64,
            bytes: bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_order;

    #[test]
    fn order_items_parse_like_sql() {
        let (name, options) = parse_order("bids DESC").unwrap();
        assert_eq!(name, "bids");
        assert!(options.descending && options.nulls_first);
        let (_, options) = parse_order("price asc nulls first").unwrap();
        assert!(!options.descending && options.nulls_first);
        assert!(parse_order("price sideways").is_err());
    }
}
