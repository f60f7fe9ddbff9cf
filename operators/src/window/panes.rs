//! Tumbling and hopping windows, built from panes.
//!
//! Time is cut into panes of `gcd(size, slide)`. Each row updates exactly
//! one pane, so a row costs the same whatever the window's size and slide.
//! Tumbling windows are their panes. A hopping window is emitted by
//! merging the partial states of its panes; panes are frozen into partial
//! states once the first window covering them is emitted, with their keys
//! mapped to ids shared by all panes, so merging is indexing, not hashing.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::{concat, filter_record_batch, take};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use flumen_core::prelude::*;

use super::time::{RowTime, slot_start, timestamps};
use crate::aggregate::{Aggregates, GroupedAggregation, key_columns};

/// The settings shared by every instance.
#[derive(Debug, Clone)]
pub(crate) struct PaneSpec {
    pub(crate) size: i64,
    pub(crate) slide: i64,
    pub(crate) lateness: i64,
    pub(crate) time: RowTime,
    pub(crate) keys: Vec<usize>,
    pub(crate) key_schema: SchemaRef,
    pub(crate) aggregates: Arc<Aggregates>,
    pub(crate) schema: SchemaRef,
}

/// A pane whose rows are all in: its groups' partial states, by shared id.
struct FrozenPane {
    groups: Vec<usize>,
    states: Vec<Vec<ArrayRef>>,
}

/// Tumbling or hopping window state of one operator instance.
pub(crate) struct PaneWindows {
    spec: PaneSpec,
    pane: i64,
    /// Panes still taking rows, by start time.
    open: BTreeMap<i64, GroupedAggregation>,
    /// Hopping only: panes waiting to be merged into windows.
    frozen: BTreeMap<i64, FrozenPane>,
    shared: SharedKeys,
    /// Hopping only: the start of the next window to emit.
    next_window: Option<i64>,
    watermark: EventTime,
}

impl PaneWindows {
    pub(crate) fn new(spec: PaneSpec) -> Result<Self> {
        let pane = super::time::gcd(spec.size, spec.slide);
        let shared = SharedKeys::new(&spec.key_schema)?;
        Ok(PaneWindows {
            spec,
            pane,
            open: BTreeMap::new(),
            frozen: BTreeMap::new(),
            shared,
            next_window: None,
            watermark: EventTime::MIN,
        })
    }

    fn tumbling(&self) -> bool {
        self.spec.size == self.spec.slide
    }

    /// The start of the first window holding the pane that starts at
    /// `pane`.
    fn first_window(&self, pane: i64) -> i64 {
        slot_start(pane - self.spec.size, self.spec.slide) + self.spec.slide
    }

    /// Adds rows; returns the rows that came too late for their windows.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let times = self.spec.time.of(batch)?;
        let (size, lateness, watermark) = (self.spec.size, self.spec.lateness, self.watermark);
        let panes: Vec<i64> = times
            .values()
            .iter()
            .map(|t| slot_start(*t, self.pane))
            .collect();
        let late: BooleanArray = panes
            .iter()
            .enumerate()
            .map(|(row, pane)| {
                let closed = self
                    .first_window(*pane)
                    .saturating_add(size)
                    .saturating_add(lateness)
                    <= watermark;
                Some(times.is_null(row) || closed)
            })
            .collect();
        match late.true_count() {
            0 => {
                self.add_on_time(batch, &panes)?;
                Ok(None)
            }
            all if all == batch.num_rows() => Ok(Some(batch.clone())),
            _ => {
                let on_time = arrow::compute::not(&late)?;
                let on_time_panes: Vec<i64> = panes
                    .iter()
                    .zip(on_time.values().iter())
                    .filter_map(|(pane, keep)| keep.then_some(*pane))
                    .collect();
                self.add_on_time(&filter_record_batch(batch, &on_time)?, &on_time_panes)?;
                Ok(Some(filter_record_batch(batch, &late)?))
            }
        }
    }

    fn add_on_time(&mut self, batch: &RecordBatch, panes: &[i64]) -> Result<()> {
        let Some(&first) = panes.first() else {
            return Ok(());
        };
        if !self.tumbling() {
            let earliest = panes.iter().min().copied().unwrap_or(first);
            let window = self.first_window(earliest);
            self.next_window = Some(self.next_window.map_or(window, |next| next.min(window)));
        }
        let arguments = self.spec.aggregates.arguments(batch)?;
        if panes.iter().all(|p| *p == first) {
            let keys = key_columns(batch, &self.spec.keys);
            return self
                .pane(first)?
                .update(&keys, batch.num_rows(), &arguments);
        }
        // Rows of several panes: update each with its own rows.
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, pane) in panes.iter().enumerate() {
            by_pane.entry(*pane).or_default().push(row as u32);
        }
        for (pane, rows) in by_pane {
            let indices = UInt32Array::from(rows);
            let keys = self
                .spec
                .keys
                .iter()
                .map(|&k| Ok(take(batch.column(k), &indices, None)?))
                .collect::<Result<Vec<_>>>()?;
            let arguments = arguments
                .iter()
                .map(|a| a.take(&indices))
                .collect::<Result<Vec<_>>>()?;
            self.pane(pane)?.update(&keys, indices.len(), &arguments)?;
        }
        Ok(())
    }

    fn pane(&mut self, start: i64) -> Result<&mut GroupedAggregation> {
        if !self.open.contains_key(&start) {
            let state = GroupedAggregation::new(&self.spec.aggregates, &self.spec.key_schema)?;
            self.open.insert(start, state);
        }
        Ok(self.open.get_mut(&start).expect("inserted above"))
    }

    /// Notes the watermark and emits every window it closes, oldest first.
    pub(crate) fn advance(&mut self, watermark: EventTime, out: &mut Collector) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        if self.tumbling() {
            self.fire_tumbling(out)
        } else {
            self.fire_hopping(out)
        }
    }

    fn closed(&self, window_start: i64) -> bool {
        window_start
            .saturating_add(self.spec.size)
            .saturating_add(self.spec.lateness)
            <= self.watermark
    }

    fn fire_tumbling(&mut self, out: &mut Collector) -> Result<()> {
        while let Some((&start, _)) = self.open.first_key_value() {
            if !self.closed(start) {
                break;
            }
            let state = self.open.remove(&start).expect("first key exists");
            let (keys, values) = state.finish()?;
            out.emit(self.output(start, keys, values)?);
        }
        Ok(())
    }

    fn fire_hopping(&mut self, out: &mut Collector) -> Result<()> {
        while let Some(start) = self.next_window {
            if !self.closed(start) {
                break;
            }
            let earliest = match (self.open.first_key_value(), self.frozen.first_key_value()) {
                (Some((o, _)), Some((f, _))) => Some(*o.min(f)),
                (Some((o, _)), None) => Some(*o),
                (None, Some((f, _))) => Some(*f),
                (None, None) => None,
            };
            match earliest {
                None => {
                    self.next_window = None;
                    break;
                }
                // No pane in this window: skip to the first that has one.
                Some(pane) if pane >= start + self.spec.size => {
                    self.next_window = Some(self.first_window(pane));
                    continue;
                }
                Some(_) => {}
            }
            let end = start + self.spec.size;
            let to_freeze: Vec<i64> = self.open.range(..end).map(|(p, _)| *p).collect();
            for pane in to_freeze {
                self.freeze(pane)?;
            }
            if let Some(batch) = self.merge_window(start)? {
                out.emit(batch);
            }
            let next = start + self.spec.slide;
            self.next_window = Some(next);
            self.frozen = self.frozen.split_off(&next);
            self.shared.compact_if_sparse(&mut self.frozen)?;
        }
        Ok(())
    }

    fn freeze(&mut self, pane: i64) -> Result<()> {
        let state = self.open.remove(&pane).expect("an open pane");
        let (keys, states) = state.into_state()?;
        let rows = states
            .first()
            .and_then(|s| s.first())
            .map_or(0, |a| a.len());
        let groups = self.shared.intern(&keys, rows)?;
        self.frozen.insert(pane, FrozenPane { groups, states });
        Ok(())
    }

    fn merge_window(&mut self, start: i64) -> Result<Option<RecordBatch>> {
        let end = start + self.spec.size;
        let total = self.shared.len();
        let mut accumulators = self.spec.aggregates.accumulators()?;
        let mut present = vec![false; total];
        for pane in self.frozen.range(start..end).map(|(_, p)| p) {
            for (accumulator, state) in accumulators.iter_mut().zip(&pane.states) {
                accumulator.merge_batch(state, &pane.groups, total)?;
            }
            for group in &pane.groups {
                present[*group] = true;
            }
        }
        let groups: UInt32Array = present
            .iter()
            .enumerate()
            .filter_map(|(group, present)| present.then_some(group as u32))
            .collect();
        if groups.is_empty() {
            return Ok(None);
        }
        let values = accumulators
            .iter_mut()
            .map(|a| Ok(take(&a.evaluate(EmitTo::All)?, &groups, None)?))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.shared.keys(&groups)?;
        self.output(start, keys, values).map(Some)
    }

    fn output(
        &self,
        start: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let rows = values.first().map_or(0, |v| v.len());
        let mut columns = Vec::with_capacity(2 + keys.len() + values.len());
        columns.push(timestamps(vec![start; rows]));
        columns.push(timestamps(vec![start + self.spec.size; rows]));
        columns.extend(keys);
        columns.extend(values);
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &options,
        )?)
    }

    /// Emits every window, whatever the watermark (end of input).
    pub(crate) fn flush(&mut self, out: &mut Collector) -> Result<()> {
        self.advance(EventTime::MAX, out)
    }

    /// The earliest time a window could close: for processing-time timers.
    pub(crate) fn next_close(&self) -> Option<EventTime> {
        let start = if self.tumbling() {
            *self.open.first_key_value()?.0
        } else {
            self.next_window?
        };
        Some(start + self.spec.size + self.spec.lateness)
    }

    pub(crate) fn state_size(&self) -> StateSize {
        let open_rows: usize = self.open.values().map(GroupedAggregation::len).sum();
        let open_bytes: usize = self.open.values().map(GroupedAggregation::size).sum();
        let frozen_rows: usize = self.frozen.values().map(|p| p.groups.len()).sum();
        let frozen_bytes: usize = self
            .frozen
            .values()
            .map(|p| {
                p.groups.len() * std::mem::size_of::<usize>()
                    + p.states
                        .iter()
                        .flatten()
                        .map(|a| a.get_array_memory_size())
                        .sum::<usize>()
            })
            .sum();
        StateSize {
            rows: (open_rows + frozen_rows) as u64,
            bytes: (open_bytes + frozen_bytes + self.shared.size()) as u64,
        }
    }
}

/// Keys shared by the frozen panes of hopping windows: one id per key, and
/// the key values by id.
struct SharedKeys {
    schema: SchemaRef,
    ids: Option<Box<dyn GroupValues>>,
    /// Key columns of ids `0..`, in appended chunks.
    chunks: Vec<Vec<ArrayRef>>,
    len: usize,
    scratch: Vec<usize>,
}

impl SharedKeys {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(SharedKeys {
            schema: schema.clone(),
            ids: Self::table(schema)?,
            chunks: Vec::new(),
            len: 0,
            scratch: Vec::new(),
        })
    }

    fn table(schema: &SchemaRef) -> Result<Option<Box<dyn GroupValues>>> {
        if schema.fields().is_empty() {
            return Ok(None);
        }
        Ok(Some(new_group_values(
            schema.clone(),
            &GroupOrdering::None,
        )?))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn size(&self) -> usize {
        self.ids.as_ref().map_or(0, |ids| ids.size())
            + self
                .chunks
                .iter()
                .flatten()
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
    }

    /// The id of each key row, adding ids for new keys.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<usize>> {
        let Some(ids) = &mut self.ids else {
            // No key columns: one group.
            self.len = self.len.max(usize::from(rows > 0));
            return Ok(vec![0; rows]);
        };
        let before = self.len;
        ids.intern(keys, &mut self.scratch)?;
        self.len = ids.len();
        if self.len > before {
            // New ids are handed out in order of first appearance.
            let mut first_rows = vec![0u32; self.len - before];
            let mut seen = vec![false; self.len - before];
            for (row, id) in self.scratch.iter().enumerate() {
                if *id >= before && !seen[id - before] {
                    seen[id - before] = true;
                    first_rows[id - before] = row as u32;
                }
            }
            let rows = UInt32Array::from(first_rows);
            let chunk = keys
                .iter()
                .map(|k| Ok(take(k, &rows, None)?))
                .collect::<Result<Vec<_>>>()?;
            self.chunks.push(chunk);
        }
        Ok(self.scratch.clone())
    }

    /// The key columns of these ids.
    fn keys(&mut self, ids: &UInt32Array) -> Result<Vec<ArrayRef>> {
        if self.ids.is_none() {
            return Ok(Vec::new());
        }
        if self.chunks.len() > 1 {
            // Merge the chunks once; later lookups reuse the result.
            let merged = (0..self.schema.fields().len())
                .map(|c| {
                    let parts: Vec<&dyn Array> =
                        self.chunks.iter().map(|chunk| chunk[c].as_ref()).collect();
                    Ok(concat(&parts)?)
                })
                .collect::<Result<Vec<_>>>()?;
            self.chunks = vec![merged];
        }
        self.chunks[0]
            .iter()
            .map(|k| Ok(take(k, ids, None)?))
            .collect()
    }

    /// Renumbers the keys still used by frozen panes once most ids belong
    /// to keys no pane holds any more, so the table does not grow forever.
    fn compact_if_sparse(&mut self, frozen: &mut BTreeMap<i64, FrozenPane>) -> Result<()> {
        let used: usize = frozen.values().map(|p| p.groups.len()).sum();
        if self.ids.is_none() || self.len < 4096 || self.len < 4 * used {
            return Ok(());
        }
        let mut live = vec![false; self.len];
        for pane in frozen.values() {
            for group in &pane.groups {
                live[*group] = true;
            }
        }
        let old_ids: UInt32Array = live
            .iter()
            .enumerate()
            .filter_map(|(id, live)| live.then_some(id as u32))
            .collect();
        let mut renumber = vec![0usize; self.len];
        for (new, old) in old_ids.values().iter().enumerate() {
            renumber[*old as usize] = new;
        }
        let keys = self.keys(&old_ids)?;
        let mut table = Self::table(&self.schema)?.expect("keyed");
        let mut ids = Vec::new();
        table.intern(&keys, &mut ids)?;
        self.ids = Some(table);
        self.len = old_ids.len();
        self.chunks = vec![keys];
        for pane in frozen.values_mut() {
            for group in &mut pane.groups {
                *group = renumber[*group];
            }
        }
        Ok(())
    }
}
