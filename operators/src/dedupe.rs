//! Dedupe: drops rows whose key was seen within a time horizon.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use flumen_core::event_time::{time_column, to_millis};
use flumen_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::join::keys_of;
use crate::window::{TimeDomain, state};

/// Keeps the first row of each key; drops rows with the same key that
/// come less than `within` (of event time) after it. A key is forgotten
/// once the watermark is `within` past its kept row, so state stays
/// bounded.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// The columns that identify a row (an order id, an idempotency key).
    pub keys: Vec<String>,

    /// How long after a kept row its key counts as a duplicate (e.g. `10m`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub within: Duration,

    /// `event`: by the rows' time column; `processing`: by arrival time.
    #[serde(default)]
    pub time: TimeDomain,

    /// The event-time column. Default: the input's event-time column.
    #[serde(default)]
    pub time_column: Option<String>,
}

impl TransformConfig for DedupeConfig {
    const TYPE: &str = "dedupe";
    const DESCRIPTION: &str = "Drops rows whose key was seen within a horizon.";
    type Operator = Dedupe;

    /// Checks the settings and returns the operator.
    fn build(&self) -> Result<Dedupe> {
        if self.keys.is_empty() {
            return Err(Error::config("keys", "lists no columns"));
        }
        let within = i64::try_from(self.within.as_millis())
            .ok()
            .filter(|w| *w > 0)
            .ok_or_else(|| Error::config("within", "must be at least 1ms"))?;
        Ok(Dedupe {
            config: self.clone(),
            within,
        })
    }
}

/// The dedupe operator. Built from a [`DedupeConfig`].
#[derive(Debug, Clone)]
pub struct Dedupe {
    config: DedupeConfig,
    within: i64,
}

impl Dedupe {
    fn time(&self, input: &SchemaRef) -> Result<Option<usize>> {
        if self.config.time == TimeDomain::Processing {
            return Ok(None);
        }
        let index = time_column(input, self.config.time_column.as_deref(), "time_column")?;
        Ok(Some(index))
    }
}

impl OperatorFactory for Dedupe {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        keys_of(&inputs[0], &self.config.keys, "keys")?;
        self.time(&inputs[0])?;
        Ok(inputs[0].clone())
    }

    fn input_partitioning(&self, _input: usize) -> Option<Vec<String>> {
        Some(self.config.keys.clone())
    }

    /// 2: keys are stored as their columns, so that they can be placed in
    /// key groups (1 stored them encoded).
    fn state_version(&self) -> u32 {
        2
    }

    fn state_rescale(&self) -> StateRescale {
        StateRescale::ByKeyGroup
    }

    fn state_description(&self, _inputs: &[SchemaRef]) -> Option<String> {
        Some(format!("the keys [{}] seen", self.config.keys.join(", ")))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(DedupeInstance {
            key_names: self.config.keys.clone(),
            keys: keys_of(&inputs[0], &self.config.keys, "keys")?,
            time: self.time(&inputs[0])?,
            within: self.within,
            seen: HashMap::new(),
            expiry: VecDeque::new(),
            clock: EventTime::MIN,
        }))
    }
}

struct DedupeInstance {
    key_names: Vec<String>,
    keys: crate::join::Keys,
    time: Option<usize>,
    within: i64,
    /// Key -> time of its kept row.
    seen: HashMap<Box<[u8]>, i64>,
    /// Keys in the order they were kept, with when they may be forgotten.
    expiry: VecDeque<(i64, Box<[u8]>)>,
    /// The watermark (or, in processing time, the wall clock).
    clock: EventTime,
}

impl DedupeInstance {
    fn forget_until(&mut self, clock: EventTime) {
        self.clock = self.clock.max(clock);
        while let Some((expires, _)) = self.expiry.front() {
            if *expires > self.clock {
                break;
            }
            let (expires, key) = self.expiry.pop_front().expect("checked");
            // The key may have been kept again since: forget only the row
            // this entry was for.
            if self
                .seen
                .get(&key)
                .is_some_and(|kept| kept + self.within <= expires)
            {
                self.seen.remove(&key);
            }
        }
    }
}

#[async_trait]
impl Operator for DedupeInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let now = crate::window::wall_clock_millis();
        let times = match self.time {
            Some(column) => Some(to_millis(batch.column(column))?),
            None => None,
        };
        let (keys, valid) = self.keys.encode(&batch)?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for (row, &key_valid) in valid.iter().enumerate() {
            let time = match &times {
                Some(times) if times.is_valid(row) => times.value(row),
                Some(_) => {
                    // No time: nothing to compare with; keep the row.
                    keep.push(true);
                    continue;
                }
                None => now,
            };
            if !key_valid {
                keep.push(true);
                continue;
            }
            let key = keys.row(row);
            let duplicate = self
                .seen
                .get(key.as_ref())
                .is_some_and(|kept| (time - kept).abs() < self.within);
            if !duplicate {
                let key: Box<[u8]> = Box::from(key.as_ref());
                self.seen.insert(key.clone(), time);
                self.expiry.push_back((time + self.within, key));
            }
            keep.push(!duplicate);
        }
        if self.time.is_none() {
            self.forget_until(now);
        }
        let keep = BooleanArray::from(keep);
        out.emit(match keep.true_count() == batch.num_rows() {
            true => batch,
            false => filter_record_batch(&batch, &keep)?,
        });
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut Context,
        _out: &mut Collector,
    ) -> Result<()> {
        // The end of the input is not the passing of time: the keys stay
        // in the final checkpoint, so that a later run carrying on from it
        // (a Kafka or Kinesis source read up to `stop_at` again) still
        // drops the repeats of rows this run kept.
        if self.time.is_some() && watermark != EventTime::MAX {
            self.forget_until(watermark);
        }
        Ok(())
    }

    /// The kept keys with their rows' times (`seen`), and the expiry queue
    /// as it is (`expiry`): it is not in time order, and may name a key
    /// that was kept again since, or already forgotten, so it cannot be
    /// rebuilt from `seen` without changing when keys are forgotten. Keys
    /// are stored as their columns, so both tables split by key group.
    fn snapshot(&mut self) -> Result<Snapshot> {
        // The expiry queue's order is kept in `_position`: the table is
        // stored by key group.
        let table = |keys: Vec<&[u8]>, name: &str, times: Vec<i64>| -> Result<RecordBatch> {
            let mut columns: Vec<(String, ArrayRef)> = self
                .key_names
                .iter()
                .cloned()
                .zip(self.keys.decode(keys)?)
                .collect();
            let positions = Int64Array::from_iter_values(0..times.len() as i64);
            columns.push((name.to_string(), Arc::new(Int64Array::from(times))));
            columns.push(("_position".to_string(), Arc::new(positions)));
            Ok(RecordBatch::try_from_iter(columns)?)
        };
        let (seen_keys, kept): (Vec<&[u8]>, Vec<i64>) =
            self.seen.iter().map(|(k, t)| (k.as_ref(), *t)).unzip();
        let (expiry_keys, expires): (Vec<&[u8]>, Vec<i64>) =
            self.expiry.iter().map(|(t, k)| (k.as_ref(), *t)).unzip();
        // The watermark, or in processing time the wall clock.
        Ok(
            Snapshot::new(serde_json::json!({ "watermark": self.clock }))
                .with_keyed_table("seen", table(seen_keys, "_kept", kept)?, 0)
                .with_keyed_table("expiry", table(expiry_keys, "_expires", expires)?, 0),
        )
    }

    /// Takes back a snapshot; several (the key groups of several earlier
    /// instances) add up.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        self.clock = self.clock.max(state::watermark(&snapshot)?);
        let keys = |table: &RecordBatch| -> Result<arrow::row::Rows> {
            let columns = self
                .key_names
                .iter()
                .map(|name| {
                    table.column_by_name(name).cloned().ok_or_else(|| {
                        Error::Checkpoint(format!("the dedupe snapshot has no key column `{name}`"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            self.keys.encode_columns(&columns)
        };
        let seen = state::table(&snapshot, "seen")?;
        let (seen_keys, kept) = (keys(seen)?, state::int64s(seen, "_kept")?);
        for (row, kept) in kept.values().iter().enumerate() {
            self.seen
                .insert(Box::from(seen_keys.row(row).as_ref()), *kept);
        }
        let expiry = state::table(&snapshot, "expiry")?;
        let order =
            arrow::compute::sort_to_indices(state::int64s(expiry, "_position")?, None, None)?;
        let expiry = arrow::compute::take_record_batch(expiry, &order)?;
        let (expiry_keys, expires) = (keys(&expiry)?, state::int64s(&expiry, "_expires")?);
        for (row, expires) in expires.values().iter().enumerate() {
            self.expiry
                .push_back((*expires, Box::from(expiry_keys.row(row).as_ref())));
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let bytes: usize = self.seen.keys().map(|k| k.len() + 24).sum();
        StateSize {
            rows: self.seen.len() as u64,
            bytes: bytes as u64,
        }
    }
}
