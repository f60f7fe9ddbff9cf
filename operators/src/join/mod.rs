//! Joins: two streams within the same window, two streams within a time
//! interval of each other, or a stream against a table read from a file.
//!
//! Output rows are the left (first input) columns then the right (second
//! input, or table) columns, each side optionally prefixed; a windowed join
//! puts `window_start` and `window_end` first. A left join keeps left rows
//! without a match, with nulls on the right.

mod interval;
pub(crate) mod keys;
mod lookup;
mod window;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen_core::event_time::{event_time_column, time_column, with_event_time};
use flumen_core::file_format::{CsvOptions, FileFormat};
use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;
use flumen_core::storage::StorageOptions;
use schemars::JsonSchema;
use serde::Deserialize;

use self::interval::IntervalJoin;
use self::keys::{check_key_types, key_indices};
use self::lookup::{LookupJoin, LookupTable};
use self::window::WindowJoin;
use crate::window::WindowKind;

/// Which rows a join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinType {
    /// Only matched pairs.
    #[default]
    Inner,
    /// Every left row: matched pairs, and unmatched left rows with nulls on
    /// the right.
    Left,
}

/// `right.time BETWEEN left.time + lower AND left.time + upper`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntervalBounds {
    /// How long after the left row a right row may start to match; negative
    /// for before (`-5s`).
    #[serde(with = "signed_duration")]
    #[schemars(with = "String")]
    pub lower: i64,
    /// How long after the left row a right row may still match.
    #[serde(with = "signed_duration")]
    #[schemars(with = "String")]
    pub upper: i64,
}

/// The table of a lookup join: a file, re-read on an interval.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupTableConfig {
    /// The file holding the table: a local path, or a `file://` or
    /// `s3://bucket/key` URL.
    #[schemars(extend("format" = "path"))]
    pub path: String,

    /// `json` (one object per line), `csv` or `parquet`. Default: from the
    /// file's extension.
    #[serde(default)]
    pub format: Option<FileFormat>,

    /// Columns and types, e.g. `{ id: int64, category: string }`. Default:
    /// inferred from a local file.
    #[serde(default)]
    pub schema: Option<SchemaSpec>,

    /// CSV options (header, delimiter).
    #[serde(default)]
    pub csv: CsvOptions,

    /// How to reach an object store, for `s3://` paths.
    #[serde(default)]
    pub storage: StorageOptions,

    /// Re-read the table this often (e.g. `5m`); rows arriving meanwhile
    /// are joined with the table as last read. Unset: read once.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub refresh_interval: Option<Duration>,
}

impl LookupTableConfig {
    /// The settings of the `file` source that reads the table.
    pub(crate) fn file_settings(&self) -> Result<serde_json::Value> {
        /// The file source's keys the table has.
        #[derive(serde::Serialize)]
        struct FileSettings<'a> {
            path: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            format: Option<FileFormat>,
            #[serde(skip_serializing_if = "Option::is_none")]
            schema: &'a Option<SchemaSpec>,
            batch_size: usize,
            csv: &'a CsvOptions,
            storage: &'a StorageOptions,
        }
        serde_json::to_value(FileSettings {
            path: &self.path,
            format: self.format,
            schema: &self.schema,
            batch_size: 8192,
            csv: &self.csv,
            storage: &self.storage,
        })
        .map_err(|e| Error::Internal(format!("a lookup table's settings: {e}")))
    }
}

/// Joins rows by equal keys: within a window, within a time interval, or
/// against a table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// `inner` (matched pairs) or `left` (also left rows without a match).
    #[serde(default)]
    pub join_type: JoinType,

    /// Key columns of the left (first) input.
    pub left_keys: Vec<String>,

    /// Key columns of the right (second) input or the table, matched in
    /// order with `left_keys`.
    pub right_keys: Vec<String>,

    /// Windowed join: rows meet when they fall in the same window,
    /// `{ tumble: 10s }` or `{ hop: { size: 10s, slide: 5s } }`.
    #[serde(default)]
    pub window: Option<WindowKind>,

    /// Interval join: a right row meets a left row when its time is within
    /// `[left time + lower, left time + upper]`.
    #[serde(default)]
    pub interval: Option<IntervalBounds>,

    /// Lookup join: the right side is a table read from a file (one input).
    #[serde(default)]
    pub table: Option<LookupTableConfig>,

    /// Event-time column of the left input. Default: its event-time column.
    #[serde(default)]
    pub left_time_column: Option<String>,

    /// Event-time column of the right input. Default: its event-time column.
    #[serde(default)]
    pub right_time_column: Option<String>,

    /// How long after the watermark rows still count; later rows go to the
    /// `left_late` or `right_late` output.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub allowed_lateness: Duration,

    /// Prefix for the left columns in the output (e.g. `person_`).
    #[serde(default)]
    pub left_prefix: String,

    /// Prefix for the right columns in the output (e.g. `auction_`).
    #[serde(default)]
    pub right_prefix: String,
}

/// Durations that may be negative: `-5s`.
mod signed_duration {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (sign, magnitude) = match text.trim().strip_prefix('-') {
            Some(rest) => (-1, rest.trim()),
            None => (1, text.trim()),
        };
        let duration = humantime::parse_duration(magnitude).map_err(serde::de::Error::custom)?;
        let millis = i64::try_from(duration.as_millis()).map_err(serde::de::Error::custom)?;
        Ok(sign * millis)
    }
}

/// What kind of join, with its resolved settings.
#[derive(Debug, Clone)]
enum Mode {
    Window { size: i64, slide: i64 },
    Interval { lower: i64, upper: i64 },
    Lookup(Arc<LookupTable>),
}

/// The join operator. Built from a [`JoinConfig`].
#[derive(Debug, Clone)]
pub struct Join {
    config: JoinConfig,
    mode: Mode,
    lateness: i64,
}

impl TransformConfig for JoinConfig {
    const TYPE: &str = "join";
    const DESCRIPTION: &str =
        "Joins two streams within a window or a time interval, or a stream with a table.";
    type Operator = Join;

    /// Checks the settings and returns the operator. A lookup join's
    /// table is read by the `file` source, which only
    /// [`build_in`](TransformConfig::build_in) has.
    fn build(&self) -> Result<Join> {
        const NONE: &[ComponentType] = &[];
        self.build_in(&NONE)
    }

    /// Checks the settings and returns the operator; a lookup join's table
    /// is read by the catalog's `file` source.
    fn build_in(&self, catalog: &dyn Catalog) -> Result<Join> {
        let modes = [
            self.window.is_some(),
            self.interval.is_some(),
            self.table.is_some(),
        ];
        let mode = match modes {
            [true, false, false] => match self.window.as_ref().expect("checked") {
                WindowKind::Tumble(size) => {
                    let size = positive(*size, "window.tumble")?;
                    Mode::Window { size, slide: size }
                }
                WindowKind::Hop { size, slide } => {
                    let (size, slide) = (
                        positive(*size, "window.hop.size")?,
                        positive(*slide, "window.hop.slide")?,
                    );
                    if size % slide != 0 {
                        return Err(Error::config(
                            "window.hop.slide",
                            "must divide the window size",
                        ));
                    }
                    Mode::Window { size, slide }
                }
                WindowKind::Session { .. } => {
                    return Err(Error::config(
                        "window",
                        "joins take tumbling or hopping windows",
                    ));
                }
            },
            [false, true, false] => {
                let bounds = self.interval.as_ref().expect("checked");
                if bounds.lower > bounds.upper {
                    return Err(Error::config("interval.lower", "is after `upper`"));
                }
                Mode::Interval {
                    lower: bounds.lower,
                    upper: bounds.upper,
                }
            }
            [false, false, true] => {
                let table = self.table.as_ref().expect("checked");
                Mode::Lookup(Arc::new(LookupTable::new(table, catalog)?))
            }
            _ => {
                return Err(Error::config(
                    "window",
                    "set exactly one of `window` (windowed join), `interval` (interval join) or `table` (lookup join)",
                ));
            }
        };
        if self.left_keys.is_empty() {
            return Err(Error::config("left_keys", "lists no columns"));
        }
        let lateness = i64::try_from(self.allowed_lateness.as_millis())
            .map_err(|_| Error::config("allowed_lateness", "is too long"))?;
        Ok(Join {
            config: self.clone(),
            mode,
            lateness,
        })
    }
}

fn positive(duration: Duration, key: &str) -> Result<i64> {
    match i64::try_from(duration.as_millis()) {
        Ok(0) => Err(Error::config(key, "must be at least 1ms")),
        Ok(millis) => Ok(millis),
        Err(_) => Err(Error::config(key, "is too long")),
    }
}

/// Everything a join instance needs from its input schemas.
#[derive(Debug, Clone)]
pub(crate) struct JoinPlan {
    pub(crate) left: SchemaRef,
    pub(crate) right: SchemaRef,
    pub(crate) left_keys: Vec<usize>,
    pub(crate) right_keys: Vec<usize>,
    pub(crate) left_time: Option<usize>,
    pub(crate) right_time: Option<usize>,
    pub(crate) keep_unmatched: bool,
    pub(crate) lateness: i64,
    pub(crate) schema: SchemaRef,
}

impl JoinPlan {
    /// The time column of input `input` (0 left, 1 right) of a timed
    /// join, and its times in `batch` as milliseconds.
    pub(crate) fn times(
        &self,
        input: usize,
        batch: &RecordBatch,
    ) -> Result<(usize, arrow::array::Int64Array)> {
        let column = match input {
            0 => self.left_time,
            _ => self.right_time,
        }
        .ok_or_else(|| Error::Internal("a timed join without a time column".into()))?;
        Ok((
            column,
            flumen_core::event_time::to_millis(batch.column(column))?,
        ))
    }

    /// The rows of `batch` (from input `input`) whose time is `on_time`,
    /// with their times; the others, late or without a time, go to output
    /// `1 + input`. `None` when no row is on time.
    pub(crate) fn on_time_rows(
        &self,
        input: usize,
        batch: RecordBatch,
        out: &mut Collector,
        on_time: impl Fn(i64) -> bool,
    ) -> Result<Option<(RecordBatch, arrow::array::Int64Array)>> {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let (column, times) = self.times(input, &batch)?;
        let keep = arrow::array::BooleanArray::from(
            times
                .iter()
                .map(|t| Some(t.is_some_and(&on_time)))
                .collect::<Vec<_>>(),
        );
        if keep.true_count() == batch.num_rows() {
            return Ok(Some((batch, times)));
        }
        // Outputs 1 and 2: the left's and the right's late rows.
        let late = arrow::compute::not(&keep)?;
        out.emit_to(
            1 + input,
            arrow::compute::filter_record_batch(&batch, &late)?,
        );
        let kept = arrow::compute::filter_record_batch(&batch, &keep)?;
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        let times = flumen_core::event_time::to_millis(kept.column(column))?;
        Ok(Some((kept, times)))
    }
}

impl Join {
    fn plan(&self, inputs: &[SchemaRef]) -> Result<JoinPlan> {
        let left = inputs[0].clone();
        let right = match &self.mode {
            Mode::Lookup(table) => table.schema(),
            _ => inputs[1].clone(),
        };
        let left_keys = key_indices(&left, &self.config.left_keys, "left_keys")?;
        let right_keys = key_indices(&right, &self.config.right_keys, "right_keys")?;
        check_key_types(&left, &left_keys, &right, &right_keys)?;
        let timed = !matches!(self.mode, Mode::Lookup(_));
        let (left_time, right_time) = match timed {
            true => (
                Some(time_column(
                    &left,
                    self.config.left_time_column.as_deref(),
                    "left_time_column",
                )?),
                Some(time_column(
                    &right,
                    self.config.right_time_column.as_deref(),
                    "right_time_column",
                )?),
            ),
            false => (None, None),
        };

        let mut fields = Vec::new();
        if matches!(self.mode, Mode::Window { .. }) {
            let time = |name: &str| {
                Field::new(
                    name,
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    false,
                )
            };
            fields.push(time("window_start"));
            fields.push(time("window_end"));
        }
        let keep_unmatched = self.config.join_type == JoinType::Left;
        let prefixed = |field: &Field, prefix: &str, nullable: bool| {
            Field::new(
                format!("{prefix}{}", field.name()),
                field.data_type().clone(),
                field.is_nullable() || nullable,
            )
        };
        fields.extend(
            left.fields()
                .iter()
                .map(|f| prefixed(f, &self.config.left_prefix, false)),
        );
        fields.extend(
            right
                .fields()
                .iter()
                .map(|f| prefixed(f, &self.config.right_prefix, keep_unmatched)),
        );
        let mut seen = std::collections::HashSet::new();
        if let Some(duplicate) = fields.iter().find(|f| !seen.insert(f.name().clone())) {
            return Err(Error::config(
                "right_prefix",
                format!(
                    "column `{}` would appear twice in the output; set `left_prefix` or `right_prefix`",
                    duplicate.name()
                ),
            ));
        }
        let schema = Schema::new(fields);
        let time_column = match (&self.mode, left_time) {
            (Mode::Window { .. }, _) => Some("window_end".to_string()),
            (_, Some(t)) => Some(format!(
                "{}{}",
                self.config.left_prefix,
                left.field(t).name()
            )),
            (Mode::Lookup(_), None) => {
                event_time_column(&left).map(|c| format!("{}{c}", self.config.left_prefix))
            }
            _ => None,
        };
        let schema = match time_column {
            Some(column) => with_event_time(&schema, &column),
            None => Arc::new(schema),
        };
        Ok(JoinPlan {
            left,
            right,
            left_keys,
            right_keys,
            left_time,
            right_time,
            keep_unmatched,
            lateness: self.lateness,
            schema,
        })
    }
}

impl OperatorFactory for Join {
    fn input_count(&self) -> RangeInclusive<usize> {
        match self.mode {
            Mode::Lookup(_) => 1..=1,
            _ => 2..=2,
        }
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.plan(inputs)?.schema)
    }

    fn named_outputs(&self, inputs: &[SchemaRef]) -> Result<Vec<(String, SchemaRef)>> {
        Ok(match self.mode {
            Mode::Lookup(_) => Vec::new(),
            _ => vec![
                ("left_late".to_string(), inputs[0].clone()),
                ("right_late".to_string(), inputs[1].clone()),
            ],
        })
    }

    fn input_partitioning(&self, input: usize) -> Option<Vec<String>> {
        match (&self.mode, input) {
            // Every instance has the whole table: any partitioning will do.
            (Mode::Lookup(_), _) => None,
            (_, 0) => Some(self.config.left_keys.clone()),
            _ => Some(self.config.right_keys.clone()),
        }
    }

    /// Timed joins are at 2: each kept row carries its window, or its
    /// batch and whether it matched, so that it splits by key group.
    fn state_version(&self) -> u32 {
        match self.mode {
            Mode::Lookup(_) => 1,
            _ => 2,
        }
    }

    fn state_rescale(&self) -> StateRescale {
        StateRescale::ByKeyGroup
    }

    fn state_description(&self, inputs: &[SchemaRef]) -> Option<String> {
        let kept = match self.mode {
            Mode::Lookup(_) => return None,
            Mode::Window { size, slide } => format!("in windows of {size} ms every {slide} ms"),
            Mode::Interval { lower, upper } => format!("from {lower} ms to {upper} ms apart"),
        };
        let describe = flumen_core::graph::describe_schema;
        Some(format!(
            "rows matched on [{}] = [{}] {kept}: left ({}), right ({})",
            self.config.left_keys.join(", "),
            self.config.right_keys.join(", "),
            describe(&inputs[0]),
            describe(&inputs[1])
        ))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        let plan = self.plan(inputs)?;
        Ok(match &self.mode {
            Mode::Window { size, slide } => Box::new(WindowJoin::new(plan, *size, *slide)?),
            Mode::Interval { lower, upper } => Box::new(IntervalJoin::new(plan, *lower, *upper)?),
            Mode::Lookup(table) => Box::new(LookupJoin::new(plan, table.clone())?),
        })
    }
}

/// Encodes key columns of a stream (for operators that key rows).
pub(crate) type Keys = keys::KeyEncoder;

/// A key encoder for the columns `names` of `schema`; `key` names the
/// setting in errors.
pub(crate) fn keys_of(schema: &SchemaRef, names: &[String], key: &str) -> Result<Keys> {
    let columns = key_indices(schema, names, key)?;
    keys::KeyEncoder::new(schema, columns)
}

/// Puts matched (or unmatched) pairs of rows side by side, in the join's
/// output schema, after `prefix` columns.
pub(crate) fn pair_up(
    schema: &SchemaRef,
    prefix: Vec<arrow::array::ArrayRef>,
    left: &arrow::record_batch::RecordBatch,
    left_rows: &arrow::array::UInt32Array,
    right: &arrow::record_batch::RecordBatch,
    right_rows: &arrow::array::UInt32Array,
) -> Result<arrow::record_batch::RecordBatch> {
    let mut columns = prefix;
    for column in left.columns() {
        columns.push(arrow::compute::take(column, left_rows, None)?);
    }
    for column in right.columns() {
        columns.push(arrow::compute::take(column, right_rows, None)?);
    }
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(left_rows.len()));
    Ok(arrow::record_batch::RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}
