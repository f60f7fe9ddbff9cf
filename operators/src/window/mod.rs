//! Windowed aggregation: tumbling, hopping and session windows over event
//! or processing time, grouped by key columns.
//!
//! Output: one row per window and key, with `window_start`, `window_end`,
//! the key columns and one column per aggregate. A window is emitted once,
//! when the watermark passes its end plus the allowed lateness; a row that
//! arrives after its window was emitted goes to the `late` output.

mod panes;
mod ranking;
mod session;
mod time;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use flumen_core::event_time::{time_column, with_event_time};
use flumen_core::prelude::*;
use flumen_core::schema::column_index;
use schemars::JsonSchema;
use serde::Deserialize;

use self::panes::{PaneSpec, PaneWindows};
use self::ranking::Ranking;
use self::session::{SessionSpec, SessionWindows};
pub use self::time::TimeDomain;
pub(crate) use self::time::wall_clock_millis;
use self::time::{RowTime, millis};
use crate::aggregate::{Aggregates, key_schema};

/// The shape of the windows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowKind {
    /// Fixed windows one after another: `tumble: 1m`.
    Tumble(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
    /// Overlapping windows of `size`, one starting every `slide`:
    /// `hop: { size: 10s, slide: 2s }`.
    Hop {
        /// How long each window is.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        size: Duration,
        /// How often a window starts.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        slide: Duration,
    },
    /// Per key, a window that lasts while events come at most `gap` apart:
    /// `session: { gap: 30s }`.
    Session {
        /// The silence that ends a session.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        gap: Duration,
    },
}

/// Aggregates rows per window and key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The windows: `{ tumble: 1m }`, `{ hop: { size: 10s, slide: 2s } }`
    /// or `{ session: { gap: 30s } }`.
    pub window: WindowKind,

    /// `event`: by the events' time, closed by the watermark (results do
    /// not depend on arrival order). `processing`: by arrival time, closed
    /// by the wall clock.
    #[serde(default)]
    pub time: TimeDomain,

    /// The column holding event time. Default: the input's event-time
    /// column (its source's `event_time`).
    #[serde(default)]
    pub time_column: Option<String>,

    /// Columns to group by: one output row per window and key.
    #[serde(default)]
    pub group_by: Vec<String>,

    /// Aggregates in SQL, each with an optional alias: `count(*) AS bids`,
    /// `avg(price) AS avg_price`, `count(DISTINCT bidder)`,
    /// `approx_distinct(bidder)`, `approx_percentile_cont(0.9) WITHIN GROUP
    /// (ORDER BY price)`. Any DataFusion aggregate works.
    pub aggregates: Vec<String>,

    /// How long after a window's end rows still count in it. The window is
    /// emitted once, when the watermark passes its end plus this; rows
    /// after that go to the `late` output (`<name>.late`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub allowed_lateness: Duration,

    /// Emit only each window's best keys by one aggregate: `{ n: 1,
    /// order_by: bids DESC }` (Nexmark q5's hot items). Unlike a `top_n`
    /// transform after the window, the other keys are never emitted, and a
    /// hopping window's cost does not grow with its size. The window then
    /// runs as one instance. Tumbling windows rank by any count or sum;
    /// hopping windows also need every aggregate to be a count or a sum of
    /// integers (kept as running sums as panes enter and leave).
    #[serde(default)]
    pub top: Option<WindowTop>,
}

/// A window's `top`: which keys of each window are emitted.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowTop {
    /// How many keys to keep per window.
    pub n: usize,

    /// The aggregate to rank by, with `ASC` or `DESC` (default `ASC`) and
    /// optionally `NULLS FIRST` or `NULLS LAST`: `bids DESC`.
    pub order_by: String,

    /// Keep keys tied with the n-th too (SQL's `RANK() <= n`).
    #[serde(default = "yes")]
    pub with_ties: bool,
}

fn yes() -> bool {
    true
}

impl TransformConfig for WindowConfig {
    const TYPE: &str = "window";
    const DESCRIPTION: &str = "Aggregates rows per tumbling, hopping or session window and key.";
    type Operator = WindowAggregate;

    /// Checks the settings and returns the operator.
    fn build(&self) -> Result<WindowAggregate> {
        let lateness = i64::try_from(self.allowed_lateness.as_millis())
            .map_err(|_| Error::config("allowed_lateness", "is too long"))?;
        let shape = match &self.window {
            WindowKind::Tumble(size) => {
                let size = millis(*size, "window.tumble")?;
                Shape::Panes { size, slide: size }
            }
            WindowKind::Hop { size, slide } => {
                let size = millis(*size, "window.hop.size")?;
                let slide = millis(*slide, "window.hop.slide")?;
                if slide > size {
                    return Err(Error::config(
                        "window.hop.slide",
                        "is longer than the window size, so some rows would fall in no window",
                    ));
                }
                Shape::Panes { size, slide }
            }
            WindowKind::Session { gap } => {
                if self.top.is_some() {
                    return Err(Error::config(
                        "top",
                        "is not supported for session windows; rank them with a `top_n` transform",
                    ));
                }
                Shape::Session {
                    gap: millis(*gap, "window.session.gap")?,
                }
            }
        };
        if let Some(top) = &self.top
            && top.n == 0
        {
            return Err(Error::config("top.n", "must be at least 1"));
        }
        Ok(WindowAggregate {
            config: self.clone(),
            shape,
            lateness,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Panes { size: i64, slide: i64 },
    Session { gap: i64 },
}

/// The windowed aggregation operator. Built from a [`WindowConfig`].
#[derive(Debug, Clone)]
pub struct WindowAggregate {
    config: WindowConfig,
    shape: Shape,
    lateness: i64,
}

/// What a window operator needs from its input schema, resolved once.
struct Plan {
    time: RowTime,
    keys: Vec<usize>,
    key_schema: SchemaRef,
    aggregates: Arc<Aggregates>,
    schema: SchemaRef,
    top: Option<Ranking>,
}

impl WindowAggregate {
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        let time = match self.config.time {
            TimeDomain::Processing => RowTime::Arrival,
            TimeDomain::Event => RowTime::Column(time_column(
                input,
                self.config.time_column.as_deref(),
                "time_column",
            )?),
        };
        let keys = self
            .config
            .group_by
            .iter()
            .enumerate()
            .map(|(i, name)| column_index(input, &format!("group_by[{i}]"), name))
            .collect::<Result<Vec<_>>>()?;
        let key_schema = key_schema(input, &keys);
        let aggregates = Arc::new(Aggregates::plan(
            &self.config.aggregates,
            input,
            "aggregates",
        )?);

        let time_field = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            )
        };
        let mut fields = vec![time_field("window_start"), time_field("window_end")];
        fields.extend(key_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.extend(aggregates.fields().iter().map(|f| f.as_ref().clone()));
        let schema = Schema::new(fields);
        if let Some(duplicate) = duplicate_name(&schema) {
            return Err(Error::config(
                "aggregates",
                format!(
                    "column `{duplicate}` appears twice in the output; rename an aggregate with AS"
                ),
            ));
        }
        let top = self.ranking(&aggregates)?;
        Ok(Plan {
            time,
            keys,
            key_schema,
            aggregates,
            schema: with_event_time(&schema, "window_end"),
            top,
        })
    }

    /// Checks `top` against the aggregates.
    fn ranking(&self, aggregates: &Aggregates) -> Result<Option<Ranking>> {
        let Some(top) = &self.config.top else {
            return Ok(None);
        };
        let (name, order) = crate::top_n::parse_order(&top.order_by)
            .map_err(|message| Error::config("top.order_by", message))?;
        let fields = aggregates.fields();
        let column = fields
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
                Error::config(
                    "top.order_by",
                    format!(
                        "`{name}` is not an aggregate of this window; aggregates: {}",
                        names.join(", ")
                    ),
                )
            })?;
        if fields[column].data_type() != &DataType::Int64 {
            return Err(Error::config(
                "top.order_by",
                format!(
                    "`{name}` is {}; a window's top ranks by a count or an integer sum (rank other values with a `top_n` transform)",
                    fields[column].data_type()
                ),
            ));
        }
        if let Shape::Panes { size, slide } = self.shape
            && size != slide
            && let Some(other) = aggregates.not_running_sum()
        {
            return Err(Error::config(
                "top",
                format!(
                    "a hopping window's top needs every aggregate to be a count or a sum of integers; `{other}` is not (rank it with a `top_n` transform)"
                ),
            ));
        }
        Ok(Some(Ranking {
            n: top.n,
            column,
            order,
            with_ties: top.with_ties,
        }))
    }
}

fn duplicate_name(schema: &Schema) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .find(|f| !seen.insert(f.name().clone()))
        .map(|f| f.name().clone())
}

impl OperatorFactory for WindowAggregate {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.plan(&inputs[0])?.schema)
    }

    fn named_outputs(&self, inputs: &[SchemaRef]) -> Result<Vec<(String, SchemaRef)>> {
        Ok(vec![("late".to_string(), inputs[0].clone())])
    }

    fn input_partitioning(&self, _input: usize) -> Option<Vec<String>> {
        (!self.config.group_by.is_empty()).then(|| self.config.group_by.clone())
    }

    fn max_parallelism(&self) -> Option<usize> {
        // Without keys, or to rank them, every row of a window must meet in
        // one instance.
        (self.config.group_by.is_empty() || self.config.top.is_some()).then_some(1)
    }

    fn state_rescale(&self) -> StateRescale {
        StateRescale::ByKeyGroup
    }

    /// Sessions are at 2: each row's time is a column of its row, and the
    /// emitted ends are keyed by the key columns, so that both split by
    /// key group.
    fn state_version(&self) -> u32 {
        match self.shape {
            Shape::Panes { .. } => 1,
            Shape::Session { .. } => 2,
        }
    }

    fn state_description(&self, inputs: &[SchemaRef]) -> Option<String> {
        let windows = match self.shape {
            Shape::Panes { size, slide } if size == slide => {
                format!("tumbling windows of {size} ms")
            }
            Shape::Panes { size, slide } => format!("windows of {size} ms every {slide} ms"),
            // Sessions keep their rows.
            Shape::Session { gap } => format!(
                "sessions of {gap} ms gaps over rows ({})",
                flumen_core::graph::describe_schema(&inputs[0])
            ),
        };
        let top = match &self.config.top {
            Some(top) => format!(", ranked {top:?}"),
            None => String::new(),
        };
        Some(format!(
            "{windows} by [{}] of [{}]{top}",
            self.config.group_by.join(", "),
            self.config.aggregates.join(", ")
        ))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        let plan = self.plan(&inputs[0])?;
        let windows = match self.shape {
            Shape::Panes { size, slide } => Windows::Panes(PaneWindows::new(PaneSpec {
                size,
                slide,
                lateness: self.lateness,
                time: plan.time,
                keys: plan.keys,
                key_schema: plan.key_schema,
                aggregates: plan.aggregates,
                schema: plan.schema,
                top: plan.top,
            })?),
            Shape::Session { gap } => Windows::Session(SessionWindows::new(SessionSpec {
                gap,
                input: inputs[0].clone(),
                lateness: self.lateness,
                time: plan.time,
                keys: plan.keys,
                key_schema: plan.key_schema,
                aggregates: plan.aggregates,
                schema: plan.schema,
            })?),
        };
        Ok(Box::new(WindowInstance {
            windows,
            processing_time: self.config.time == TimeDomain::Processing,
            lateness: self.lateness,
        }))
    }
}

enum Windows {
    Panes(PaneWindows),
    Session(SessionWindows),
}

impl Windows {
    fn add(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        match self {
            Windows::Panes(w) => w.add(batch),
            Windows::Session(w) => w.add(batch),
        }
    }

    fn advance(&mut self, time: EventTime, out: &mut Collector) -> Result<()> {
        match self {
            Windows::Panes(w) => w.advance(time, out),
            Windows::Session(w) => w.advance(time, out),
        }
    }

    fn flush(&mut self, out: &mut Collector) -> Result<()> {
        match self {
            Windows::Panes(w) => w.flush(out),
            Windows::Session(w) => w.flush(out),
        }
    }

    fn next_close(&self) -> Option<EventTime> {
        match self {
            Windows::Panes(w) => w.next_close(),
            Windows::Session(w) => w.next_close(),
        }
    }

    fn state_size(&self) -> StateSize {
        match self {
            Windows::Panes(w) => w.state_size(),
            Windows::Session(w) => w.state_size(),
        }
    }
}

/// The `late` output's port.
const LATE: usize = 1;

struct WindowInstance {
    windows: Windows,
    processing_time: bool,
    lateness: i64,
}

#[async_trait]
impl Operator for WindowInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if let Some(late) = self.windows.add(&batch)? {
            out.emit_to(LATE, late);
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if !self.processing_time {
            self.windows.advance(watermark, out)?;
        }
        Ok(())
    }

    fn output_watermark(&self, input: EventTime) -> EventTime {
        // Windows come out `lateness` after the watermark passed their end:
        // hold the watermark back as much, so they are on time downstream.
        if self.processing_time {
            input
        } else {
            input.saturating_sub(self.lateness)
        }
    }

    fn next_timer(&self) -> Option<EventTime> {
        if self.processing_time {
            self.windows.next_close()
        } else {
            None
        }
    }

    async fn on_timer(
        &mut self,
        now: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.windows.advance(now, out)
    }

    async fn on_end(&mut self, _ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.windows.flush(out)
    }

    fn state_size(&self) -> StateSize {
        self.windows.state_size()
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        match &mut self.windows {
            Windows::Panes(w) => w.snapshot(),
            Windows::Session(w) => w.snapshot(),
        }
    }

    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        match &mut self.windows {
            Windows::Panes(w) => w.restore(snapshot),
            Windows::Session(w) => w.restore(snapshot),
        }
    }
}

/// Reading operator state back from a checkpoint. A missing table or a
/// column of the wrong type is an error, not a panic: the files may have
/// been written by another version, or damaged.
pub(crate) mod state {
    use arrow::array::{AsArray, BooleanArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use flumen_core::prelude::*;

    /// The watermark a snapshot recorded in its values.
    pub(crate) fn watermark(snapshot: &Snapshot) -> Result<EventTime> {
        snapshot
            .values
            .get("watermark")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| corrupt("watermark"))
    }

    /// The snapshot's table `name`.
    pub(crate) fn table<'a>(snapshot: &'a Snapshot, name: &str) -> Result<&'a RecordBatch> {
        snapshot.table(name).ok_or_else(|| corrupt(name))
    }

    /// Column `name` of `table`, as int64.
    pub(crate) fn int64s<'a>(table: &'a RecordBatch, name: &str) -> Result<&'a Int64Array> {
        table
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| corrupt(name))
    }

    /// A run of rows with one value: `(value, first row, rows)`.
    pub(crate) type Run = (i64, usize, usize);

    /// `table`'s rows ordered by its int64 column `name` (rows of a state
    /// table stored by key group, put back together by window or batch),
    /// with each run of one value: `(value, first row, rows)`. The sort is
    /// stable: rows with one value keep their order.
    pub(crate) fn runs_by(table: &RecordBatch, name: &str) -> Result<(RecordBatch, Vec<Run>)> {
        let values = int64s(table, name)?.values();
        let mut order: Vec<u32> = (0..table.num_rows() as u32).collect();
        order.sort_by_key(|&row| values[row as usize]);
        let table =
            arrow::compute::take_record_batch(table, &arrow::array::UInt32Array::from(order))?;
        let values = int64s(&table, name)?.values();
        let mut runs: Vec<Run> = Vec::new();
        for (row, value) in values.iter().enumerate() {
            match runs.last_mut() {
                Some((last, _, rows)) if last == value => *rows += 1,
                _ => runs.push((*value, row, 1)),
            }
        }
        Ok((table, runs))
    }

    /// Column `name` of `table`, as booleans.
    pub(crate) fn booleans<'a>(table: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray> {
        table
            .column_by_name(name)
            .and_then(|c| c.as_boolean_opt())
            .ok_or_else(|| corrupt(name))
    }

    fn corrupt(what: &str) -> Error {
        Error::internal(format!(
            "the checkpointed operator state has no valid `{what}`"
        ))
    }
}
