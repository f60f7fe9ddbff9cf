//! Event time: which column holds it, and how sources turn it into
//! watermarks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::compute::kernels::aggregate::max;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::message::{EventTime, Watermark};

/// Where a stream's event time comes from and how far behind it the
/// watermark trails.
///
/// The watermark of a source is the largest event time it has seen minus
/// `max_out_of_orderness`: events up to that much older than the newest one
/// still count as on time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// Column holding each event's time: a timestamp column, or an integer
    /// column of milliseconds since the Unix epoch.
    pub column: String,

    /// How much older than the newest event seen an event may be and still
    /// be on time (for example `2s`). The watermark trails the largest event
    /// time by this much.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_out_of_orderness: Duration,

    /// After this long without data the source is marked idle, so that it no
    /// longer holds back the watermark of nodes that also read other inputs
    /// (for example `30s`). Unset: never idle.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Duration>,
}

impl EventTimeConfig {
    /// Event time from `column` with no out-of-orderness allowed.
    pub fn new(column: impl Into<String>) -> Self {
        EventTimeConfig {
            column: column.into(),
            max_out_of_orderness: Duration::ZERO,
            idle_timeout: None,
        }
    }

    /// Allows events this much older than the newest one.
    pub fn with_max_out_of_orderness(mut self, delay: Duration) -> Self {
        self.max_out_of_orderness = delay;
        self
    }

    /// Marks the source idle after this long without data.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Checks the column against a schema and returns its index.
    pub fn column_index(&self, schema: &Schema) -> Result<usize> {
        let (index, field) = schema.column_with_name(&self.column).ok_or_else(|| {
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::config(
                "event_time.column",
                format!(
                    "column `{}` does not exist; columns: {}",
                    self.column,
                    names.join(", ")
                ),
            )
        })?;
        if !is_event_time_type(field.data_type()) {
            return Err(Error::config(
                "event_time.column",
                format!(
                    "column `{}` is {}, expected a timestamp or integer milliseconds",
                    self.column,
                    field.data_type()
                ),
            ));
        }
        Ok(index)
    }
}

/// Schema metadata naming a stream's event-time column. Sources with an
/// event time set it; operators that keep the column keep it, and windows
/// name `window_end`. Operators with a time setting default to it.
pub const EVENT_TIME_KEY: &str = "flumen.event_time";

/// The event-time column a schema names, if any.
pub fn event_time_column(schema: &Schema) -> Option<&str> {
    schema.metadata().get(EVENT_TIME_KEY).map(String::as_str)
}

/// `schema`, naming `column` as its event-time column.
pub fn with_event_time(schema: &Schema, column: &str) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert(EVENT_TIME_KEY.to_string(), column.to_string());
    Arc::new(schema.clone().with_metadata(metadata))
}

/// Whether a column of this type can hold event time.
pub fn is_event_time_type(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(_, _) | DataType::Int64)
}

/// Converts an event-time column (timestamp of any unit, or `Int64`
/// milliseconds) to milliseconds since the epoch.
pub fn to_millis(column: &ArrayRef) -> Result<Int64Array> {
    let millis = match column.data_type() {
        DataType::Int64 | DataType::Timestamp(TimeUnit::Millisecond, _) => column.clone(),
        DataType::Timestamp(_, tz) => arrow::compute::cast(
            column,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )?,
        other => {
            return Err(Error::internal(format!(
                "event-time column of type {other} was not rejected when the graph was built"
            )));
        }
    };
    let data = millis.to_data().into_builder().data_type(DataType::Int64);
    Ok(Int64Array::from(data.build()?))
}

/// Turns the event times a source produces into watermarks.
#[derive(Debug)]
pub(crate) struct WatermarkGenerator {
    column: usize,
    delay_millis: i64,
    idle_timeout: Option<Duration>,
    max_seen: Option<EventTime>,
    emitted: Option<EventTime>,
    idle_since: Option<Instant>,
    idle: bool,
}

impl WatermarkGenerator {
    pub(crate) fn new(config: &EventTimeConfig, column: usize) -> Self {
        WatermarkGenerator {
            column,
            delay_millis: i64::try_from(config.max_out_of_orderness.as_millis())
                .unwrap_or(i64::MAX),
            idle_timeout: config.idle_timeout,
            max_seen: None,
            emitted: None,
            idle_since: None,
            idle: false,
        }
    }

    /// Notes a batch's event times; returns a watermark to send after the
    /// batch if it advanced (or the source was idle until now).
    pub(crate) fn observe(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        self.idle_since = None;
        let millis = to_millis(batch.column(self.column))?;
        if let Some(batch_max) = max(&millis) {
            self.max_seen = Some(self.max_seen.map_or(batch_max, |m| m.max(batch_max)));
        }
        let Some(max_seen) = self.max_seen else {
            return Ok(None);
        };
        let watermark = max_seen.saturating_sub(self.delay_millis);
        let advanced = self.emitted.is_none_or(|e| watermark > e);
        if advanced || self.idle {
            self.idle = false;
            let watermark = self.emitted.map_or(watermark, |e| e.max(watermark));
            self.emitted = Some(watermark);
            return Ok(Some(Watermark::EventTime(watermark)));
        }
        Ok(None)
    }

    /// Notes that the source had nothing; returns [`Watermark::Idle`] once
    /// the idle timeout has passed.
    pub(crate) fn on_idle(&mut self, now: Instant) -> Option<Watermark> {
        let timeout = self.idle_timeout?;
        let since = *self.idle_since.get_or_insert(now);
        if !self.idle && now.duration_since(since) >= timeout {
            self.idle = true;
            return Some(Watermark::Idle);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::Field;

    use super::*;

    fn batch(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]));
        let array = TimestampMillisecondArray::from(times.to_vec());
        RecordBatch::try_new(schema, vec![Arc::new(array)]).unwrap()
    }

    #[test]
    fn watermark_trails_max_event_time() {
        let config = EventTimeConfig::new("ts").with_max_out_of_orderness(Duration::from_secs(1));
        let mut generator = WatermarkGenerator::new(&config, 0);
        assert_eq!(
            generator.observe(&batch(&[5_000, 3_000])).unwrap(),
            Some(Watermark::EventTime(4_000))
        );
        // An older batch does not move the watermark back.
        assert_eq!(generator.observe(&batch(&[2_000])).unwrap(), None);
        assert_eq!(
            generator.observe(&batch(&[9_000])).unwrap(),
            Some(Watermark::EventTime(8_000))
        );
    }

    #[test]
    fn idle_after_timeout_and_active_again_on_data() {
        let config = EventTimeConfig::new("ts").with_idle_timeout(Duration::from_millis(100));
        let mut generator = WatermarkGenerator::new(&config, 0);
        generator.observe(&batch(&[1_000])).unwrap();
        let start = Instant::now();
        assert_eq!(generator.on_idle(start), None);
        let later = start + Duration::from_millis(150);
        assert_eq!(generator.on_idle(later), Some(Watermark::Idle));
        assert_eq!(generator.on_idle(later), None);
        // Data makes the source active again, even without progress.
        assert_eq!(
            generator.observe(&batch(&[500])).unwrap(),
            Some(Watermark::EventTime(1_000))
        );
    }

    #[test]
    fn column_must_exist_and_hold_time() {
        let schema = Schema::new(vec![Field::new("name", DataType::Utf8, false)]);
        let err = EventTimeConfig::new("ts")
            .column_index(&schema)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("column `ts` does not exist; columns: name")
        );
        let err = EventTimeConfig::new("name")
            .column_index(&schema)
            .unwrap_err();
        assert!(err.to_string().contains("expected a timestamp"));
    }
}
