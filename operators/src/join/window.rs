//! Windowed join: rows of both inputs meet when they fall in the same
//! window and their keys are equal. Each window's rows are kept until the
//! watermark passes its end (plus the allowed lateness), then joined with a
//! hash table and dropped.

use std::collections::BTreeMap;

use arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;

use super::keys::{KeyEncoder, KeyTable};
use super::{JoinPlan, pair_up};
use crate::window::state;

/// Both inputs' rows of one window.
#[derive(Default)]
struct Sides {
    left: Vec<RecordBatch>,
    right: Vec<RecordBatch>,
}

pub(crate) struct WindowJoin {
    plan: JoinPlan,
    size: i64,
    slide: i64,
    left_keys: KeyEncoder,
    right_keys: KeyEncoder,
    windows: BTreeMap<i64, Sides>,
    watermark: EventTime,
}

impl WindowJoin {
    pub(crate) fn new(plan: JoinPlan, size: i64, slide: i64) -> Result<Self> {
        Ok(WindowJoin {
            left_keys: KeyEncoder::new(&plan.left, plan.left_keys.clone())?,
            right_keys: KeyEncoder::new(&plan.right, plan.right_keys.clone())?,
            plan,
            size,
            slide,
            windows: BTreeMap::new(),
            watermark: EventTime::MIN,
        })
    }

    fn closed(&self, start: i64) -> bool {
        start
            .saturating_add(self.size)
            .saturating_add(self.plan.lateness)
            <= self.watermark
    }

    fn join(&self, start: i64, sides: Sides) -> Result<Option<RecordBatch>> {
        if sides.left.is_empty() || (sides.right.is_empty() && !self.plan.keep_unmatched) {
            return Ok(None);
        }
        let left = concat_batches(&self.plan.left, &sides.left)?;
        let right = concat_batches(&self.plan.right, &sides.right)?;
        let table = KeyTable::build(&self.right_keys, &right)?;
        let (left_rows, right_rows) =
            table.probe(&self.left_keys, &left, self.plan.keep_unmatched)?;
        if left_rows.is_empty() {
            return Ok(None);
        }
        let rows = left_rows.len();
        let bounds: Vec<ArrayRef> = vec![
            std::sync::Arc::new(TimestampMillisecondArray::from(vec![start; rows])),
            std::sync::Arc::new(TimestampMillisecondArray::from(vec![
                start + self.size;
                rows
            ])),
        ];
        pair_up(
            &self.plan.schema,
            bounds,
            &left,
            &left_rows,
            &right,
            &right_rows,
        )
        .map(Some)
    }
}

#[async_trait]
impl Operator for WindowJoin {
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        // A row is late when its last window is closed: earlier ones
        // close first.
        let last_window = |time: i64| time.div_euclid(self.slide) * self.slide;
        let on_time = self
            .plan
            .on_time_rows(input, batch, out, |time| !self.closed(last_window(time)))?;
        let Some((batch, times)) = on_time else {
            return Ok(());
        };
        let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, &time) in times.values().iter().enumerate() {
            let last = last_window(time);
            for k in 0..self.size / self.slide {
                let start = last - k * self.slide;
                if !self.closed(start) {
                    by_window.entry(start).or_default().push(row as u32);
                }
            }
        }
        for (start, rows) in by_window {
            let rows = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))?
            };
            let sides = self.windows.entry(start).or_default();
            if input == 0 {
                sides.left.push(rows);
            } else {
                sides.right.push(rows);
            }
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
        while let Some((&start, _)) = self.windows.first_key_value() {
            if !self.closed(start) {
                break;
            }
            let sides = self.windows.remove(&start).expect("first key exists");
            if let Some(joined) = self.join(start, sides)? {
                out.emit(joined);
            }
        }
        Ok(())
    }

    fn output_watermark(&self, input: EventTime) -> EventTime {
        input.saturating_sub(self.plan.lateness)
    }

    async fn on_end(&mut self, ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.on_watermark(EventTime::MAX, ctx, out).await
    }

    /// Each side's rows of the open windows (`left`, `right`: the input's
    /// columns and `_window`, the window's start, in arrival order within
    /// a window). Both split by key group. A hopping window's row is
    /// stored once per window it is in, as it is kept.
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::new(serde_json::json!({ "watermark": self.watermark }));
        let schemas = [&self.plan.left, &self.plan.right];
        for (input, (name, schema)) in ["left", "right"].into_iter().zip(schemas).enumerate() {
            let side = |sides: &Sides| match input {
                0 => sides.left.clone(),
                _ => sides.right.clone(),
            };
            let mut starts: Vec<i64> = Vec::new();
            let mut batches: Vec<RecordBatch> = Vec::new();
            for (start, sides) in &self.windows {
                for batch in side(sides) {
                    starts.extend(std::iter::repeat_n(*start, batch.num_rows()));
                    batches.push(batch);
                }
            }
            let rows = concat_batches(schema, &batches)?;
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(Int64Array::from(starts)));
            let mut fields = schema.fields().to_vec();
            fields.push(Arc::new(arrow::datatypes::Field::new(
                "_window",
                arrow::datatypes::DataType::Int64,
                false,
            )));
            let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            snapshot = snapshot.with_keyed_table(name, table, input);
        }
        Ok(snapshot)
    }

    /// Takes back a snapshot; several (the key groups of several earlier
    /// instances) add up.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        self.watermark = self.watermark.max(state::watermark(&snapshot)?);
        let schemas = [&self.plan.left, &self.plan.right];
        for (input, (name, schema)) in ["left", "right"].into_iter().zip(schemas).enumerate() {
            // Stored by key group: put each window's rows together again.
            let (table, runs) = state::runs_by(state::table(&snapshot, name)?, "_window")?;
            let rows = table.project(&(0..schema.fields().len()).collect::<Vec<_>>())?;
            for (start, first, count) in runs {
                let batch = rows.slice(first, count);
                let sides = self.windows.entry(start).or_default();
                match input {
                    0 => sides.left.push(batch),
                    _ => sides.right.push(batch),
                }
            }
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let batches = self
            .windows
            .values()
            .flat_map(|s| s.left.iter().chain(&s.right));
        let (rows, bytes) = batches.fold((0, 0), |(r, b), batch| {
            (r + batch.num_rows(), b + batch.get_array_memory_size())
        });
        StateSize {
            rows: rows as u64,
            bytes: bytes as u64,
        }
    }
}
