//! Hive-style partitions: which directory each row goes to.

use std::collections::HashMap;

use arrow::array::{Array, StringArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::DataType;
use flumen_core::event_time::{event_time_column, to_millis};
use flumen_core::prelude::*;

use super::config::{ParquetSinkConfig, TimePartition};

/// What Hive writes for a null partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Splits batches by partition directory, dropping the partition columns
/// (the path holds them).
#[derive(Debug, Clone)]
pub(super) struct Partitioner {
    columns: Vec<(usize, String)>,
    time: Option<(usize, TimePartition)>,
    kept: Vec<usize>,
    file_schema: SchemaRef,
}

impl Partitioner {
    pub(super) fn new(config: &ParquetSinkConfig, input: &SchemaRef) -> Result<Self> {
        let mut columns = Vec::new();
        for (i, name) in config.partition_by.iter().enumerate() {
            let index = input.index_of(name).map_err(|_| {
                Error::config(
                    format!("partition_by[{i}]"),
                    format!("column `{name}` is not in the input"),
                )
            })?;
            columns.push((index, name.clone()));
        }
        let time = match config.time_partition {
            None => None,
            Some(granularity) => {
                let name = match &config.time_column {
                    Some(name) => name.clone(),
                    None => event_time_column(input).map(String::from).ok_or_else(|| {
                        Error::config(
                            "time_partition",
                            "the input has no event-time column; name one with `time_column`",
                        )
                    })?,
                };
                let index = input.index_of(&name).map_err(|_| {
                    Error::config(
                        "time_column",
                        format!("column `{name}` is not in the input"),
                    )
                })?;
                match input.field(index).data_type() {
                    DataType::Timestamp(_, _) | DataType::Int64 => {}
                    other => {
                        return Err(Error::config(
                            "time_column",
                            format!("column `{name}` is {other}, expected a timestamp"),
                        ));
                    }
                }
                Some((index, granularity))
            }
        };
        let kept: Vec<usize> = (0..input.fields().len())
            .filter(|i| !columns.iter().any(|(c, _)| c == i))
            .collect();
        let file_schema = Arc::new(input.project(&kept)?);
        Ok(Partitioner {
            columns,
            time,
            kept,
            file_schema,
        })
    }

    /// The schema of the files: the input without the partition columns.
    pub(super) fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// The rows of `batch` by partition directory (`""` when unpartitioned).
    pub(super) fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let rows = batch.project(&self.kept)?;
        if self.columns.is_empty() && self.time.is_none() {
            return Ok(vec![(String::new(), rows)]);
        }
        let values: Vec<StringArray> = self
            .columns
            .iter()
            .map(|(index, _)| {
                let strings = cast(batch.column(*index), &DataType::Utf8)?;
                Ok(strings
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
                    .clone())
            })
            .collect::<Result<_>>()?;
        let times = match self.time {
            Some((index, _)) => Some(to_millis(batch.column(index))?),
            None => None,
        };
        let bucket_of = |row: usize| -> Option<i64> {
            let (times, (_, granularity)) = (times.as_ref()?, self.time?);
            let width = match granularity {
                TimePartition::Day => DAY_MS,
                TimePartition::Hour => HOUR_MS,
            };
            times
                .is_valid(row)
                .then(|| times.value(row).div_euclid(width))
        };
        let same_as = |a: usize, b: usize| {
            values.iter().all(|v| {
                v.is_valid(a) == v.is_valid(b) && (v.is_null(a) || v.value(a) == v.value(b))
            }) && bucket_of(a) == bucket_of(b)
        };
        // Streams usually come in runs of one partition: a path is built
        // once per run, not once per row.
        let mut groups: HashMap<String, Vec<u32>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut run_start = 0;
        for row in 0..=batch.num_rows() {
            if row < batch.num_rows() && (row == run_start || same_as(run_start, row)) {
                continue;
            }
            if row > run_start {
                let path = self.path_of(
                    &values,
                    times.as_ref().map(|_| bucket_of(run_start)),
                    run_start,
                );
                let entry = groups.entry(path.clone()).or_insert_with(|| {
                    order.push(path);
                    Vec::new()
                });
                entry.extend(run_start as u32..row as u32);
            }
            run_start = row;
        }
        order
            .into_iter()
            .map(|path| {
                let indices = UInt32Array::from(groups.remove(&path).expect("listed"));
                Ok((path, take_record_batch(&rows, &indices)?))
            })
            .collect()
    }

    fn path_of(&self, values: &[StringArray], bucket: Option<Option<i64>>, row: usize) -> String {
        let mut parts = Vec::new();
        for ((_, name), column) in self.columns.iter().zip(values) {
            let value = if column.is_null(row) {
                NULL_PARTITION.to_string()
            } else {
                escape(column.value(row))
            };
            parts.push(format!("{name}={value}"));
        }
        if let (Some(bucket), Some((_, granularity))) = (bucket, self.time) {
            match bucket {
                None => parts.push(format!("dt={NULL_PARTITION}")),
                Some(bucket) => {
                    let width = match granularity {
                        TimePartition::Day => DAY_MS,
                        TimePartition::Hour => HOUR_MS,
                    };
                    let start =
                        chrono::DateTime::from_timestamp_millis(bucket * width).unwrap_or_default();
                    parts.push(format!("dt={}", start.format("%Y-%m-%d")));
                    if granularity == TimePartition::Hour {
                        parts.push(format!("hour={}", start.format("%H")));
                    }
                }
            }
        }
        parts.join("/")
    }
}

/// Percent-encodes what cannot stand in a path segment, as Hive does.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '/' | '=' | '%' | '\\' | '#' | '?' | ':' | '\'' | '"' | '*' | '[' | ']' | '^' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return NULL_PARTITION.to_string();
    }
    // Readers skip names starting with `.` or `_`: keep the value visible.
    if let Some(first @ ('.' | '_')) = out.chars().next() {
        out.replace_range(..1, &format!("%{:02X}", first as u32));
    }
    out
}
