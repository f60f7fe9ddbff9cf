//! Interval join: a right row meets a left row with an equal key when
//! `right.time` is within `[left.time + lower, left.time + upper]`.
//!
//! Each row is kept, indexed by key, for as long as a row of the other
//! side could still match it; every pair is emitted once, as soon as its
//! second row arrives. A left join emits a left row that never matched
//! when it can no longer match.

use std::collections::{HashMap, VecDeque};

use arrow::array::{Array, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, interleave_record_batch};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use flumen_core::event_time::to_millis;
use flumen_core::prelude::*;

use super::JoinPlan;
use super::keys::KeyEncoder;
use crate::window::state;

/// One side's kept rows, by arrival, with an index by key.
struct Side {
    encoder: KeyEncoder,
    /// Kept batches with their times and (left side) which rows matched.
    batches: VecDeque<Kept>,
    /// Id of `batches[0]`; ids grow by one per batch.
    first_id: u64,
    /// Key -> (batch id, row). Entries of dropped batches are skipped, and
    /// swept out when they outnumber the live ones.
    index: HashMap<Box<[u8]>, Vec<(u64, u32)>>,
    entries: usize,
    live_rows: usize,
}

struct Kept {
    rows: RecordBatch,
    times: Int64Array,
    matched: Vec<bool>,
    newest: i64,
    oldest: i64,
}

impl Side {
    fn new(encoder: KeyEncoder) -> Self {
        Side {
            encoder,
            batches: VecDeque::new(),
            first_id: 0,
            index: HashMap::new(),
            entries: 0,
            live_rows: 0,
        }
    }

    fn get(&self, id: u64) -> Option<&Kept> {
        id.checked_sub(self.first_id)
            .and_then(|i| self.batches.get(i as usize))
    }

    /// Keeps `rows`; `matched` says which of them already found a partner.
    fn add(&mut self, rows: RecordBatch, times: Int64Array, matched: Vec<bool>) -> Result<()> {
        let (keys, valid) = self.encoder.encode(&rows)?;
        let id = self.first_id + self.batches.len() as u64;
        for (row, valid) in valid.iter().enumerate() {
            if *valid {
                self.index
                    .entry(Box::from(keys.row(row).as_ref()))
                    .or_default()
                    .push((id, row as u32));
                self.entries += 1;
            }
        }
        let newest = arrow::compute::max(&times).unwrap_or(EventTime::MIN);
        let oldest = arrow::compute::min(&times).unwrap_or(EventTime::MIN);
        self.live_rows += rows.num_rows();
        self.batches.push_back(Kept {
            matched,
            rows,
            times,
            newest,
            oldest,
        });
        Ok(())
    }

    /// Drops batches whose newest row satisfies `expired`; returns them.
    fn expire(&mut self, expired: impl Fn(i64) -> bool) -> Vec<Kept> {
        let mut dropped = Vec::new();
        while self.batches.front().is_some_and(|b| expired(b.newest)) {
            let kept = self.batches.pop_front().expect("checked");
            self.live_rows -= kept.rows.num_rows();
            self.first_id += 1;
            dropped.push(kept);
        }
        if self.batches.is_empty() {
            // Nothing is kept: every index entry is stale. Dropping them
            // now lets the state size fall to zero once all rows are out.
            self.index.clear();
            self.entries = 0;
        } else if self.entries > 2 * self.live_rows + 1024 {
            let first = self.first_id;
            self.index.retain(|_, rows| {
                rows.retain(|(id, _)| *id >= first);
                !rows.is_empty()
            });
            self.entries = self.index.values().map(Vec::len).sum();
        }
        dropped
    }

    fn rows(&self) -> usize {
        self.live_rows
    }

    fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.rows.get_array_memory_size())
            .sum::<usize>()
            + self.entries * 16
    }
}

/// The sides' names in checkpoints, by input.
const SIDES: [&str; 2] = ["left", "right"];

pub(crate) struct IntervalJoin {
    plan: JoinPlan,
    lower: i64,
    upper: i64,
    sides: [Side; 2],
    watermark: EventTime,
}

impl IntervalJoin {
    pub(crate) fn new(plan: JoinPlan, lower: i64, upper: i64) -> Result<Self> {
        let left = Side::new(KeyEncoder::new(&plan.left, plan.left_keys.clone())?);
        let right = Side::new(KeyEncoder::new(&plan.right, plan.right_keys.clone())?);
        Ok(IntervalJoin {
            plan,
            lower,
            upper,
            sides: [left, right],
            watermark: EventTime::MIN,
        })
    }

    /// Rows older than this are late: the watermark minus the lateness.
    fn horizon(&self) -> i64 {
        self.watermark.saturating_sub(self.plan.lateness)
    }

    /// Whether a left row at `left` and a right row at `right` meet.
    fn meet(&self, left: i64, right: i64) -> bool {
        left.saturating_add(self.lower) <= right && right <= left.saturating_add(self.upper)
    }

    /// Emits the pairs `batch` (from `side`) makes with the other side's
    /// kept rows; returns which rows of `batch` found a partner.
    fn probe(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        times: &Int64Array,
        out: &mut Collector,
    ) -> Result<Vec<bool>> {
        let other = 1 - side;
        let (keys, valid) = self.sides[side].encoder.encode(batch)?;
        // Pairs as (row of `batch`, batch id of the other side, its row).
        let mut pairs: Vec<(u32, u64, u32)> = Vec::new();
        for (row, valid) in valid.iter().enumerate() {
            if !valid || times.is_null(row) {
                continue;
            }
            let time = times.value(row);
            let Some(candidates) = self.sides[other].index.get(keys.row(row).as_ref()) else {
                continue;
            };
            for (id, other_row) in candidates {
                let Some(kept) = self.sides[other].get(*id) else {
                    continue;
                };
                let other_time = kept.times.value(*other_row as usize);
                let (left_time, right_time) = if side == 0 {
                    (time, other_time)
                } else {
                    (other_time, time)
                };
                if self.meet(left_time, right_time) {
                    pairs.push((row as u32, *id, *other_row));
                }
            }
        }
        let mut matched = vec![false; batch.num_rows()];
        if pairs.is_empty() {
            return Ok(matched);
        }
        for (row, _, _) in &pairs {
            matched[*row as usize] = true;
        }
        if side == 1 {
            for (_, id, row) in &pairs {
                let index = (*id - self.sides[0].first_id) as usize;
                self.sides[0].batches[index].matched[*row as usize] = true;
            }
        }
        // Gather the other side's rows from wherever they are kept.
        let first = self.sides[other].first_id;
        let kept: Vec<&RecordBatch> = self.sides[other].batches.iter().map(|b| &b.rows).collect();
        let gathered: Vec<(usize, usize)> = pairs
            .iter()
            .map(|(_, id, row)| ((id - first) as usize, *row as usize))
            .collect();
        let other_rows = interleave_record_batch(&kept, &gathered)?;
        let these = UInt32Array::from(pairs.iter().map(|p| p.0).collect::<Vec<_>>());
        let positions = UInt32Array::from_iter_values(0..pairs.len() as u32);
        let (left, left_rows, right, right_rows) = if side == 0 {
            (batch, &these, &other_rows, &positions)
        } else {
            (&other_rows, &positions, batch, &these)
        };
        out.emit(super::pair_up(
            &self.plan.schema,
            Vec::new(),
            left,
            left_rows,
            right,
            right_rows,
        )?);
        Ok(matched)
    }

    /// Drops rows that can no longer match; emits unmatched left rows of a
    /// left join.
    fn expire(&mut self, out: &mut Collector) -> Result<()> {
        let horizon = self.horizon();
        let (lower, upper) = (self.lower, self.upper);
        // A left row can meet right rows up to `upper` after it; a right row
        // left rows up to `-lower` after it.
        let left_gone = self.sides[0].expire(|newest| newest.saturating_add(upper) < horizon);
        self.sides[1].expire(|newest| newest.saturating_sub(lower) < horizon);
        if self.plan.keep_unmatched {
            for kept in left_gone {
                let unmatched =
                    BooleanArray::from(kept.matched.iter().map(|m| !m).collect::<Vec<_>>());
                let rows = filter_record_batch(&kept.rows, &unmatched)?;
                if rows.num_rows() > 0 {
                    let left_rows = UInt32Array::from_iter_values(0..rows.num_rows() as u32);
                    let nulls = UInt32Array::from(vec![None; rows.num_rows()]);
                    let right = RecordBatch::new_empty(self.plan.right.clone());
                    out.emit(super::pair_up(
                        &self.plan.schema,
                        Vec::new(),
                        &rows,
                        &left_rows,
                        &right,
                        &nulls,
                    )?);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for IntervalJoin {
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let horizon = self.horizon();
        let on_time = self
            .plan
            .on_time_rows(input, batch, out, |time| time >= horizon)?;
        let Some((batch, times)) = on_time else {
            return Ok(());
        };
        let matched = self.probe(input, &batch, &times, out)?;
        self.sides[input].add(batch, times, matched)
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        self.expire(out)
    }

    fn output_watermark(&self, input: EventTime) -> EventTime {
        // Output rows carry the left row's time. A pair can be completed by
        // a right row up to `upper` after its left row, and an unmatched
        // left row leaves once nothing can match it: hold back so that
        // both are on time downstream.
        let held = input
            .saturating_sub(self.plan.lateness)
            .saturating_sub(self.upper.max(0));
        match self.sides[0].batches.front() {
            Some(oldest) if self.plan.keep_unmatched => held.min(oldest.oldest),
            _ => held,
        }
    }

    async fn on_end(&mut self, ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.on_watermark(EventTime::MAX, ctx, out).await
    }

    /// Per side (`left`, `right`): the kept rows, each with the kept
    /// batch it is in (`_batch`, numbered in arrival order: rows expire a
    /// batch at a time, so the batches are kept as they were) and whether
    /// it has matched (`_matched`: a left join emits the others when they
    /// expire). Both tables split by key group; the key index is rebuilt
    /// from the rows.
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::new(serde_json::json!({ "watermark": self.watermark }));
        let schemas = [&self.plan.left, &self.plan.right];
        for (input, ((name, side), schema)) in
            SIDES.iter().zip(&self.sides).zip(schemas).enumerate()
        {
            let kept = &side.batches;
            let rows = concat_batches(schema, kept.iter().map(|k| &k.rows))?;
            let batch = kept
                .iter()
                .enumerate()
                .flat_map(|(b, k)| std::iter::repeat_n(b as i64, k.rows.num_rows()));
            let matched: BooleanArray = kept
                .iter()
                .flat_map(|k| &k.matched)
                .map(|m| Some(*m))
                .collect();
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(Int64Array::from_iter_values(batch)));
            columns.push(Arc::new(matched));
            let mut fields = schema.fields().to_vec();
            fields.push(Arc::new(Field::new("_batch", DataType::Int64, false)));
            fields.push(Arc::new(Field::new("_matched", DataType::Boolean, false)));
            let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            snapshot = snapshot.with_keyed_table(*name, table, input);
        }
        Ok(snapshot)
    }

    /// Takes back a snapshot; several (the key groups of several earlier
    /// instances) add up.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        self.watermark = self.watermark.max(state::watermark(&snapshot)?);
        for (input, name) in SIDES.iter().enumerate() {
            let time = [self.plan.left_time, self.plan.right_time][input].expect("timed join");
            let (table, runs) = state::runs_by(state::table(&snapshot, name)?, "_batch")?;
            let matched = state::booleans(&table, "_matched")?.clone();
            let width = [&self.plan.left, &self.plan.right][input].fields().len();
            let rows = table.project(&(0..width).collect::<Vec<_>>())?;
            for (_, first, count) in runs {
                let batch = rows.slice(first, count);
                let times = to_millis(batch.column(time))?;
                let flags = matched.slice(first, count).values().iter().collect();
                self.sides[input].add(batch, times, flags)?;
            }
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: (self.sides[0].rows() + self.sides[1].rows()) as u64,
            bytes: (self.sides[0].bytes() + self.sides[1].bytes()) as u64,
        }
    }
}
