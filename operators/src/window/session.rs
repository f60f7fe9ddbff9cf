//! Session windows: per key, a session lasts while events keep coming at most
//! `gap` apart.
//!
//! Sessions merge as events arrive, including a late event that bridges
//! two sessions of its key. The rows of open sessions are kept; when the
//! watermark passes a session's end plus the allowed lateness, its rows are
//! aggregated (with DataFusion's accumulators) and emitted.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::{concat_batches, filter, filter_record_batch, take, take_record_batch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::row::{RowConverter, Rows, SortField};
use flumen_core::prelude::*;

use super::state;
use super::time::{RowTime, timestamps};
use crate::aggregate::{Aggregates, GroupedAggregation};

/// The settings shared by every instance.
#[derive(Debug, Clone)]
pub(crate) struct SessionSpec {
    pub(crate) gap: i64,
    pub(crate) lateness: i64,
    pub(crate) input: SchemaRef,
    pub(crate) time: RowTime,
    pub(crate) keys: Vec<usize>,
    pub(crate) key_schema: SchemaRef,
    pub(crate) aggregates: Arc<Aggregates>,
    pub(crate) schema: SchemaRef,
}

/// A session: `[start, end)`, where `end` is the last event's time plus
/// the gap.
type Session = (i64, i64);

/// Session window state of one operator instance.
pub(crate) struct SessionWindows {
    spec: SessionSpec,
    converter: RowConverter,
    /// Open sessions per key, sorted and disjoint.
    sessions: HashMap<Box<[u8]>, Vec<Session>>,
    /// Rows of open sessions, with their times (kept, because arrival
    /// times cannot be read from the rows again).
    buffered: Vec<(RecordBatch, Int64Array)>,
    /// Per key, the end of its last emitted session: an event before it
    /// belongs to a session already out, so it is late.
    emitted_until: HashMap<Box<[u8]>, i64>,
    watermark: EventTime,
}

impl SessionWindows {
    pub(crate) fn new(spec: SessionSpec) -> Result<Self> {
        let mut fields: Vec<SortField> = spec
            .key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        if fields.is_empty() {
            // No keys: every row gets the same key, that of one null column.
            fields.push(SortField::new(DataType::Null));
        }
        Ok(SessionWindows {
            converter: RowConverter::new(fields)?,
            spec,
            sessions: HashMap::new(),
            buffered: Vec::new(),
            emitted_until: HashMap::new(),
            watermark: EventTime::MIN,
        })
    }

    fn key_rows(&self, batch: &RecordBatch) -> Result<Rows> {
        let mut keys: Vec<ArrayRef> = self
            .spec
            .keys
            .iter()
            .map(|&k| batch.column(k).clone())
            .collect();
        if keys.is_empty() {
            keys.push(arrow::array::new_null_array(
                &DataType::Null,
                batch.num_rows(),
            ));
        }
        Ok(self.converter.convert_columns(&keys)?)
    }

    /// Adds rows; returns those too late for their session.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let times = self.spec.time.of(batch)?;
        let keys = self.key_rows(batch)?;
        let (gap, lateness, watermark) = (self.spec.gap, self.spec.lateness, self.watermark);
        let mut on_time = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let time = times.value(row);
            let key = keys.row(row);
            let late = times.is_null(row)
                || time.saturating_add(gap).saturating_add(lateness) < watermark
                || self
                    .emitted_until
                    .get(key.as_ref())
                    .is_some_and(|until| time <= *until);
            on_time.push(!late);
            if !late {
                let sessions = self.sessions.entry(Box::from(key.as_ref())).or_default();
                insert_session(sessions, (time, time + gap));
            }
        }
        let on_time = BooleanArray::from(on_time);
        let late = arrow::compute::not(&on_time)?;
        let kept = filter_record_batch(batch, &on_time)?;
        if kept.num_rows() > 0 {
            let times = filter(&times, &on_time)?
                .as_primitive::<Int64Type>()
                .clone();
            self.buffered.push((kept, times));
        }
        Ok((late.true_count() > 0)
            .then(|| filter_record_batch(batch, &late))
            .transpose()?)
    }

    /// A session is closed once the watermark has passed its end: an event
    /// at exactly its end (the watermark's own time may still come) would
    /// join it.
    fn closed(&self, session: &Session) -> bool {
        session.1.saturating_add(self.spec.lateness) < self.watermark
    }

    /// Notes the watermark and emits the sessions it closes.
    pub(crate) fn advance(&mut self, watermark: EventTime, out: &mut Collector) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        let any_closed = self.sessions.values().flatten().any(|s| self.closed(s));
        if !any_closed {
            return Ok(());
        }
        let mut closed: HashMap<Box<[u8]>, Vec<Session>> = HashMap::new();
        for (key, sessions) in self.sessions.iter_mut() {
            let (done, open): (Vec<Session>, Vec<Session>) = sessions
                .iter()
                .partition(|s| s.1.saturating_add(self.spec.lateness) < self.watermark);
            if !done.is_empty() {
                let until = done.iter().map(|s| s.1).max().expect("non-empty");
                let entry = self.emitted_until.entry(key.clone()).or_insert(until);
                *entry = (*entry).max(until);
                closed.insert(key.clone(), done);
                *sessions = open;
            }
        }
        self.sessions.retain(|_, sessions| !sessions.is_empty());
        self.emit(&closed, out)?;
        // A key's emitted end matters only while an event before it could
        // still be on time.
        let (gap, lateness, watermark) = (self.spec.gap, self.spec.lateness, self.watermark);
        self.emitted_until
            .retain(|_, until| until.saturating_add(gap).saturating_add(lateness) > watermark);
        Ok(())
    }

    /// Aggregates the buffered rows of `closed` sessions and keeps the rest.
    fn emit(
        &mut self,
        closed: &HashMap<Box<[u8]>, Vec<Session>>,
        out: &mut Collector,
    ) -> Result<()> {
        let mut remaining = Vec::new();
        let mut parts = Vec::new();
        let mut bounds: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
        for (batch, times) in std::mem::take(&mut self.buffered) {
            let keys = self.key_rows(&batch)?;
            let mut taken = Vec::new();
            let mut kept = Vec::new();
            for row in 0..batch.num_rows() {
                let key = keys.row(row);
                let time = times.value(row);
                let session = closed.get(key.as_ref()).and_then(|sessions| {
                    sessions
                        .iter()
                        .find(|(start, end)| *start <= time && time < *end)
                });
                match session {
                    Some((start, end)) => {
                        taken.push(row as u32);
                        bounds.0.push(*start);
                        bounds.1.push(*end);
                    }
                    None => kept.push(row as u32),
                }
            }
            if !taken.is_empty() {
                parts.push(take_record_batch(&batch, &UInt32Array::from(taken))?);
            }
            if !kept.is_empty() {
                let kept = UInt32Array::from(kept);
                let times = take(&times, &kept, None)?
                    .as_primitive::<Int64Type>()
                    .clone();
                remaining.push((take_record_batch(&batch, &kept)?, times));
            }
        }
        self.buffered = remaining;
        let Some(first) = parts.first() else {
            return Ok(());
        };
        let rows = concat_batches(&first.schema(), &parts)?;
        let (starts, ends) = (timestamps(bounds.0), timestamps(bounds.1));
        let mut group_keys = vec![starts, ends];
        group_keys.extend(self.spec.keys.iter().map(|&k| rows.column(k).clone()));
        let group_schema = {
            let mut fields = vec![
                self.spec.schema.field(0).clone(),
                self.spec.schema.field(1).clone(),
            ];
            fields.extend(
                self.spec
                    .key_schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone()),
            );
            Arc::new(Schema::new(fields))
        };
        let mut aggregation = GroupedAggregation::new(&self.spec.aggregates, &group_schema)?;
        let arguments = self.spec.aggregates.arguments(&rows)?;
        aggregation.update(&group_keys, rows.num_rows(), &arguments)?;
        let (keys, values) = aggregation.finish()?;
        let mut columns = keys;
        columns.extend(values);
        let options = RecordBatchOptions::new().with_row_count(Some(columns[0].len()));
        let output =
            RecordBatch::try_new_with_options(self.spec.schema.clone(), columns, &options)?;
        // Emit sessions in time order.
        let order = arrow::compute::sort_to_indices(output.column(0), None, None)?;
        out.emit(take_record_batch(&output, &order)?);
        Ok(())
    }

    /// Emits every session (end of input).
    pub(crate) fn flush(&mut self, out: &mut Collector) -> Result<()> {
        self.advance(EventTime::MAX, out)
    }

    /// The earliest time a session could close: for processing-time timers.
    pub(crate) fn next_close(&self) -> Option<EventTime> {
        self.sessions
            .values()
            .flatten()
            .map(|s| s.1.saturating_add(self.spec.lateness))
            .min()
    }

    /// The buffered rows with their times (`rows`: the input's columns
    /// and `_time`), and each key's end of its last emitted session
    /// (`emitted`: the key columns and `until`). Both split by key group.
    /// Open sessions are not stored: each is exactly the merge of its
    /// rows' `[time, time + gap]`, in whatever order, so restore rebuilds
    /// them from the rows.
    pub(crate) fn snapshot(&mut self) -> Result<Snapshot> {
        let rows = concat_batches(&self.spec.input, self.buffered.iter().map(|(b, _)| b))?;
        let times = self.buffered.iter().flat_map(|(_, t)| t.values().iter());
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(Int64Array::from_iter_values(times.copied())));
        let mut fields = self.spec.input.fields().to_vec();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "_time",
            DataType::Int64,
            false,
        )));
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;

        let (keys, until): (Vec<&[u8]>, Vec<i64>) = self
            .emitted_until
            .iter()
            .map(|(key, until)| (key.as_ref(), *until))
            .unzip();
        let mut emitted: Vec<(String, ArrayRef)> = Vec::new();
        if !self.spec.keys.is_empty() {
            let parser = self.converter.parser();
            let decoded = self
                .converter
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            let names = self
                .spec
                .key_schema
                .fields()
                .iter()
                .map(|f| f.name().clone());
            emitted.extend(names.zip(decoded));
        }
        emitted.push(("until".into(), Arc::new(Int64Array::from(until))));
        let emitted = RecordBatch::try_from_iter_with_nullable(
            emitted
                .into_iter()
                .map(|(name, column)| (name, column, true)),
        )?;
        Ok(
            Snapshot::new(serde_json::json!({ "watermark": self.watermark }))
                .with_keyed_table("rows", rows, 0)
                .with_keyed_table("emitted", emitted, 0),
        )
    }

    /// Takes back what [`SessionWindows::snapshot`] gave; several (the
    /// key groups of several earlier instances) add up.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        self.watermark = self.watermark.max(state::watermark(&snapshot)?);
        let table = state::table(&snapshot, "rows")?;
        let times = state::int64s(table, "_time")?.clone();
        let rows = table.project(&(0..self.spec.input.fields().len()).collect::<Vec<_>>())?;
        // Inserted directly: these rows were on time when they arrived,
        // whatever the watermark says of them now.
        let keys = self.key_rows(&rows)?;
        for row in 0..rows.num_rows() {
            let time = times.value(row);
            let sessions = self
                .sessions
                .entry(Box::from(keys.row(row).as_ref()))
                .or_default();
            insert_session(sessions, (time, time + self.spec.gap));
        }
        if rows.num_rows() > 0 {
            self.buffered.push((rows, times));
        }
        let emitted = state::table(&snapshot, "emitted")?;
        let until = state::int64s(emitted, "until")?;
        let mut keys: Vec<ArrayRef> = self
            .spec
            .key_schema
            .fields()
            .iter()
            .map(|f| {
                emitted.column_by_name(f.name()).cloned().ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "the session snapshot has no key column `{}`",
                        f.name()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        if keys.is_empty() {
            keys.push(arrow::array::new_null_array(
                &DataType::Null,
                emitted.num_rows(),
            ));
        }
        let keys = self.converter.convert_columns(&keys)?;
        for (row, until) in until.values().iter().enumerate() {
            self.emitted_until
                .insert(Box::from(keys.row(row).as_ref()), *until);
        }
        Ok(())
    }

    pub(crate) fn state_size(&self) -> StateSize {
        let rows: usize = self.buffered.iter().map(|(b, _)| b.num_rows()).sum();
        let bytes: usize = self
            .buffered
            .iter()
            .map(|(b, t)| b.get_array_memory_size() + t.get_array_memory_size())
            .sum();
        StateSize {
            rows: rows as u64,
            bytes: (bytes + self.sessions.len() * 64 + self.emitted_until.len() * 32) as u64,
        }
    }
}

/// Adds `new` to sorted, disjoint `sessions`, merging every session it
/// touches (so one event can bridge two sessions).
fn insert_session(sessions: &mut Vec<Session>, new: Session) {
    let (mut start, mut end) = new;
    sessions.retain(|&(s, e)| {
        let touches = s <= end && start <= e;
        if touches {
            start = start.min(s);
            end = end.max(e);
        }
        !touches
    });
    let at = sessions.partition_point(|(s, _)| *s < start);
    sessions.insert(at, (start, end));
}

#[cfg(test)]
mod tests {
    use super::insert_session;

    #[test]
    fn an_event_between_two_sessions_merges_them() {
        let mut sessions = vec![(0, 10), (20, 30)];
        insert_session(&mut sessions, (40, 50));
        assert_eq!(sessions, vec![(0, 10), (20, 30), (40, 50)]);
        insert_session(&mut sessions, (9, 19));
        assert_eq!(sessions, vec![(0, 19), (20, 30), (40, 50)]);
        // Touching ends join: an event exactly `gap` after the last one.
        insert_session(&mut sessions, (19, 29));
        assert_eq!(sessions, vec![(0, 30), (40, 50)]);
    }
}
