//! Tumbling and hopping windows, built from panes.
//!
//! Time is cut into panes of `gcd(size, slide)`. Each row updates exactly
//! one pane, so a row costs the same whatever the window's size and slide.
//! Tumbling windows are their panes. A hopping window is emitted by
//! merging the partial states of its panes; panes are frozen into partial
//! states once the first window covering them is emitted, with their keys
//! mapped to ids shared by all panes, so merging is indexing, not hashing.
//!
//! With a `top`, a hopping window is not merged from its panes: running
//! sums over the next window to emit are kept instead (see
//! [`super::ranking`]).

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

use super::ranking::{Ranking, Running};
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
    /// Emit only each window's best keys.
    pub(crate) top: Option<Ranking>,
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
    /// Hopping only: panes waiting to be merged into windows, by start and
    /// then part (rows that arrive for a frozen pane add a part).
    frozen: BTreeMap<(i64, u32), FrozenPane>,
    shared: SharedKeys,
    /// Hopping only: the start of the next window to emit.
    next_window: Option<i64>,
    watermark: EventTime,
    /// Scratch for [`PaneWindows::merge_window`]: the window-local number
    /// of each shared key id, [`UNSEEN`] between merges.
    local: Vec<u32>,
    /// Hopping with a `top` only: the frozen parts of panes before
    /// `running_until`, summed per key id.
    running: Option<Box<Running>>,
    running_until: i64,
}

const UNSEEN: u32 = u32::MAX;

/// Where an arriving row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    OpenPane,
    FrozenPane,
    Late,
}

impl PaneWindows {
    pub(crate) fn new(spec: PaneSpec) -> Result<Self> {
        let pane = super::time::gcd(spec.size, spec.slide);
        let shared = SharedKeys::new(&spec.key_schema)?;
        let running = (spec.top.is_some() && spec.size != spec.slide).then(Box::<Running>::default);
        Ok(PaneWindows {
            running,
            running_until: i64::MIN,
            spec,
            pane,
            open: BTreeMap::new(),
            frozen: BTreeMap::new(),
            shared,
            next_window: None,
            watermark: EventTime::MIN,
            local: Vec::new(),
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
        let closed =
            |window: i64| window.saturating_add(size).saturating_add(lateness) <= watermark;
        // A row is late once the last window holding it has closed. Until
        // then it counts in the windows still open, even if earlier ones
        // holding it have been emitted (its pane is then frozen).
        let mut fate = Vec::with_capacity(panes.len());
        for (row, pane) in panes.iter().enumerate() {
            fate.push(
                if times.is_null(row) || closed(slot_start(*pane, self.spec.slide)) {
                    Fate::Late
                } else if !self.tumbling() && closed(self.first_window(*pane)) {
                    Fate::FrozenPane
                } else {
                    Fate::OpenPane
                },
            );
        }
        if fate.iter().all(|f| *f == Fate::OpenPane) {
            self.add_on_time(batch, &panes)?;
            return Ok(None);
        }
        let rows_of = |wanted: Fate| -> (BooleanArray, Vec<i64>) {
            let mask: BooleanArray = fate.iter().map(|f| Some(*f == wanted)).collect();
            let panes = panes
                .iter()
                .zip(&fate)
                .filter_map(|(pane, f)| (*f == wanted).then_some(*pane))
                .collect();
            (mask, panes)
        };
        let (open, open_panes) = rows_of(Fate::OpenPane);
        if !open_panes.is_empty() {
            self.add_on_time(&filter_record_batch(batch, &open)?, &open_panes)?;
        }
        let (frozen, frozen_panes) = rows_of(Fate::FrozenPane);
        if !frozen_panes.is_empty() {
            self.add_to_frozen(&filter_record_batch(batch, &frozen)?, &frozen_panes)?;
        }
        let (late, late_panes) = rows_of(Fate::Late);
        Ok((!late_panes.is_empty())
            .then(|| filter_record_batch(batch, &late))
            .transpose()?)
    }

    /// Adds rows whose panes are already frozen, each pane's rows as one
    /// more part of it.
    fn add_to_frozen(&mut self, batch: &RecordBatch, panes: &[i64]) -> Result<()> {
        for (pane, keys, rows, arguments) in self.split_by_pane(batch, panes)? {
            let mut part = GroupedAggregation::new(&self.spec.aggregates, &self.spec.key_schema)?;
            part.update(&keys, rows, &arguments)?;
            let frozen = self.frozen_part(part)?;
            self.insert_frozen(pane, frozen)?;
        }
        Ok(())
    }

    /// Per pane: its rows' key columns, row count and aggregate arguments.
    #[allow(clippy::type_complexity)]
    fn split_by_pane(
        &self,
        batch: &RecordBatch,
        panes: &[i64],
    ) -> Result<Vec<(i64, Vec<ArrayRef>, usize, Vec<crate::aggregate::Arguments>)>> {
        let arguments = self.spec.aggregates.arguments(batch)?;
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, pane) in panes.iter().enumerate() {
            by_pane.entry(*pane).or_default().push(row as u32);
        }
        by_pane
            .into_iter()
            .map(|(pane, rows)| {
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
                Ok((pane, keys, indices.len(), arguments))
            })
            .collect()
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
        if panes.is_sorted() {
            // Rows in time order (the common case): each pane's rows are
            // one run, updated from a slice of the batch without copying.
            let mut start = 0;
            while start < panes.len() {
                let pane = panes[start];
                let end = start + panes[start..].partition_point(|p| *p == pane);
                let rows = batch.slice(start, end - start);
                let arguments = self.spec.aggregates.arguments(&rows)?;
                let keys = key_columns(&rows, &self.spec.keys);
                self.pane(pane)?
                    .update(&keys, rows.num_rows(), &arguments)?;
                start = end;
            }
            return Ok(());
        }
        // Rows of several panes, out of order: update each with its own
        // rows.
        for (pane, keys, rows, arguments) in self.split_by_pane(batch, panes)? {
            self.pane(pane)?.update(&keys, rows, &arguments)?;
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
            let (mut keys, mut values) = state.finish()?;
            if let Some(top) = &self.spec.top {
                let rows = UInt32Array::from(top.best_rows(&values)?);
                keys = keys
                    .iter()
                    .map(|k| Ok(take(k, &rows, None)?))
                    .collect::<Result<_>>()?;
                values = values
                    .iter()
                    .map(|v| Ok(take(v, &rows, None)?))
                    .collect::<Result<_>>()?;
            }
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
                (Some((o, _)), Some(((f, _), _))) => Some(*o.min(f)),
                (Some((o, _)), None) => Some(*o),
                (None, Some(((f, _), _))) => Some(*f),
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
            let window = match self.running.is_some() {
                true => self.ranked_window(start)?,
                false => self.merge_window(start)?,
            };
            if let Some(batch) = window {
                out.emit(batch);
            }
            let next = start + self.spec.slide;
            self.next_window = Some(next);
            self.drop_frozen_before(next)?;
            if self.frozen.is_empty() && self.open.is_empty() {
                // Nothing refers to any key id: forget them all.
                self.shared.clear()?;
                if let Some(running) = &mut self.running {
                    running.clear();
                }
            }
            if self.shared.compact_if_sparse(&mut self.frozen)? {
                self.recount_running()?;
            }
        }
        Ok(())
    }

    /// Forgets the frozen panes before `start`: no window left to emit
    /// holds them.
    fn drop_frozen_before(&mut self, start: i64) -> Result<()> {
        let kept = self.frozen.split_off(&(start, 0));
        let dropped = std::mem::replace(&mut self.frozen, kept);
        if let Some(running) = &mut self.running {
            for ((pane, _), part) in &dropped {
                if *pane < self.running_until {
                    running.apply(&part.groups, &part.states, -1)?;
                }
            }
        }
        Ok(())
    }

    /// Sums every frozen part before `running_until` again (after the key
    /// ids were renumbered).
    fn recount_running(&mut self) -> Result<()> {
        let Some(running) = &mut self.running else {
            return Ok(());
        };
        running.clear();
        for frozen in self.frozen.range(..(self.running_until, 0)).map(|(_, f)| f) {
            running.apply(&frozen.groups, &frozen.states, 1)?;
        }
        Ok(())
    }

    /// The best keys of the window starting at `start`, from the running
    /// sums: the panes before it are subtracted, those up to its end
    /// added.
    fn ranked_window(&mut self, start: i64) -> Result<Option<RecordBatch>> {
        let end = start + self.spec.size;
        self.drop_frozen_before(start)?;
        let (running, top) = match (&mut self.running, &self.spec.top) {
            (Some(running), Some(top)) => (running, top),
            _ => return Err(Error::internal("a ranked window without a ranking")),
        };
        if self.running_until < end {
            for (_, part) in self.frozen.range((self.running_until, 0)..(end, 0)) {
                running.apply(&part.groups, &part.states, 1)?;
            }
            self.running_until = end;
        }
        let ids = running.best(top);
        if ids.is_empty() {
            return Ok(None);
        }
        let values = running.values(&ids);
        let keys = self.shared.keys(&UInt32Array::from(ids))?;
        self.output(start, keys, values).map(Some)
    }

    fn freeze(&mut self, pane: i64) -> Result<()> {
        let state = self.open.remove(&pane).expect("an open pane");
        let frozen = self.frozen_part(state)?;
        self.insert_frozen(pane, frozen)
    }

    /// Adds a part to frozen pane `pane`.
    fn insert_frozen(&mut self, pane: i64, frozen: FrozenPane) -> Result<()> {
        if let Some(running) = &mut self.running
            && pane < self.running_until
        {
            running.apply(&frozen.groups, &frozen.states, 1)?;
        }
        let next_part = self
            .frozen
            .range((pane, 0)..=(pane, u32::MAX))
            .next_back()
            .map_or(0, |((_, part), _)| part + 1);
        self.frozen.insert((pane, next_part), frozen);
        Ok(())
    }

    /// A pane's partial states, with its keys as shared ids.
    fn frozen_part(&mut self, state: GroupedAggregation) -> Result<FrozenPane> {
        let (keys, states) = state.into_state()?;
        let rows = states
            .first()
            .and_then(|s| s.first())
            .map_or(0, |a| a.len());
        let groups = self.shared.intern(&keys, rows)?;
        Ok(FrozenPane { groups, states })
    }

    fn merge_window(&mut self, start: i64) -> Result<Option<RecordBatch>> {
        let end = start + self.spec.size;
        // Number the window's keys densely from 0, so that the accumulators
        // are as large as the window, not as every key still remembered.
        let local = &mut self.local;
        local.resize(self.shared.len(), UNSEEN);
        let mut window_keys: Vec<u32> = Vec::new();
        let mut accumulators = self.spec.aggregates.accumulators()?;
        let mut pane_groups = Vec::new();
        for pane in self.frozen.range((start, 0)..(end, 0)).map(|(_, p)| p) {
            pane_groups.clear();
            pane_groups.extend(pane.groups.iter().map(|&shared| {
                if local[shared] == UNSEEN {
                    local[shared] = window_keys.len() as u32;
                    window_keys.push(shared as u32);
                }
                local[shared] as usize
            }));
            for (accumulator, state) in accumulators.iter_mut().zip(&pane.states) {
                accumulator.merge_batch(state, &pane_groups, window_keys.len())?;
            }
        }
        for &shared in &window_keys {
            local[shared as usize] = UNSEEN;
        }
        if window_keys.is_empty() {
            return Ok(None);
        }
        let values = accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let keys = self.shared.keys(&UInt32Array::from(window_keys))?;
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

    /// Every pane's partial states as one table: the pane's start, the key
    /// columns, then each aggregate's state columns.
    pub(crate) fn snapshot(&mut self) -> Result<Snapshot> {
        let mut parts: Vec<(i64, Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> = Vec::new();
        for pane in self.open.keys().copied().collect::<Vec<_>>() {
            // Taking the state empties the accumulators: merge it back.
            let state = self.open.remove(&pane).expect("listed above");
            let (keys, states) = state.into_state()?;
            let rows = crate::aggregate::state_rows(&states);
            let mut again = GroupedAggregation::new(&self.spec.aggregates, &self.spec.key_schema)?;
            again.merge(&keys, rows, &states)?;
            self.open.insert(pane, again);
            parts.push((pane, keys, states));
        }
        for ((pane, _), frozen) in &self.frozen {
            let ids = UInt32Array::from_iter_values(frozen.groups.iter().map(|g| *g as u32));
            let keys = self.shared.keys(&ids)?;
            parts.push((*pane, keys, frozen.states.clone()));
        }
        // Panes without groups have nothing to keep (and some accumulators
        // report no state columns at all until they have a group).
        parts.retain(|(_, _, states)| crate::aggregate::state_rows(states) > 0);
        let widths: Vec<usize> = parts
            .first()
            .map(|(_, _, states)| states.iter().map(Vec::len).collect())
            .unwrap_or_default();
        let values = serde_json::json!({
            "watermark": self.watermark,
            "next_window": self.next_window,
        });
        if parts.is_empty() {
            return Ok(Snapshot::new(values));
        }
        let mut batches = Vec::new();
        for (pane, keys, states) in parts {
            let rows = crate::aggregate::state_rows(&states);
            let mut columns: Vec<ArrayRef> =
                vec![Arc::new(arrow::array::Int64Array::from(vec![pane; rows]))];
            columns.extend(keys);
            columns.extend(states.into_iter().flatten());
            batches.push(columns);
        }
        let mut fields = vec![arrow::datatypes::Field::new(
            "pane",
            arrow::datatypes::DataType::Int64,
            false,
        )];
        fields.extend(
            self.spec
                .key_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let first = &batches[0];
        let mut state_column = 0;
        for (aggregate, width) in widths.iter().enumerate() {
            for i in 0..*width {
                let array = &first[1 + self.spec.key_schema.fields().len() + state_column];
                fields.push(arrow::datatypes::Field::new(
                    format!("state_{aggregate}_{i}"),
                    array.data_type().clone(),
                    true,
                ));
                state_column += 1;
            }
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let batches = batches
            .into_iter()
            .map(|columns| RecordBatch::try_new(schema.clone(), columns))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let table = arrow::compute::concat_batches(&schema, &batches)?;
        let values = serde_json::json!({
            "watermark": self.watermark,
            "next_window": self.next_window,
            "state_widths": widths,
        });
        Ok(Snapshot::new(values).with_keyed_table("panes", table, 0))
    }

    /// Takes back what [`PaneWindows::snapshot`] gave: every pane open.
    /// Restoring several snapshots (the key groups of several earlier
    /// instances) merges them.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        let number = |key: &str| snapshot.values.get(key).and_then(serde_json::Value::as_i64);
        self.watermark = self
            .watermark
            .max(number("watermark").unwrap_or(EventTime::MIN));
        // The earliest window any of them still had to fire.
        self.next_window = match (self.next_window, number("next_window")) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(table) = snapshot.table("panes") else {
            return Ok(());
        };
        let widths: Vec<usize> = snapshot.values["state_widths"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default();
        let key_count = self.spec.key_schema.fields().len();
        let panes = table
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| Error::internal("window checkpoint: `pane` is not int64"))?;
        let mut starts: Vec<i64> = panes.values().to_vec();
        starts.sort_unstable();
        starts.dedup();
        for pane in starts {
            let rows = arrow::compute::kernels::cmp::eq(
                panes,
                &arrow::array::Int64Array::new_scalar(pane),
            )?;
            let part = filter_record_batch(table, &rows)?;
            let keys: Vec<ArrayRef> = part.columns()[1..1 + key_count].to_vec();
            let mut states = Vec::new();
            let mut column = 1 + key_count;
            for width in &widths {
                states.push(part.columns()[column..column + width].to_vec());
                column += width;
            }
            let state = self.pane(pane)?;
            state.merge(&keys, part.num_rows(), &states)?;
        }
        Ok(())
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
        let running_bytes = self.running.as_ref().map_or(0, |r| r.size());
        StateSize {
            rows: (open_rows + frozen_rows) as u64,
            bytes: (open_bytes + frozen_bytes + self.shared.size() + running_bytes) as u64,
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

    /// Forgets every key.
    fn clear(&mut self) -> Result<()> {
        *self = SharedKeys::new(&self.schema)?;
        Ok(())
    }

    fn size(&self) -> usize {
        if self.len == 0 {
            // An empty table's preallocated room is not state.
            return 0;
        }
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
    /// Returns whether it did.
    fn compact_if_sparse(&mut self, frozen: &mut BTreeMap<(i64, u32), FrozenPane>) -> Result<bool> {
        let used: usize = frozen.values().map(|p| p.groups.len()).sum();
        if self.ids.is_none() || self.len < 4096 || self.len < 4 * used {
            return Ok(false);
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
        Ok(true)
    }
}
