//! Event time: which column holds it, and how sources turn it into
//! watermarks.

use std::collections::HashMap;
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
        time_column(schema, Some(&self.column), "event_time.column")
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

/// The index of the time column an operator reads: the one its setting
/// `key` names, or else the input's event-time column. Checks that it
/// exists and holds times.
pub fn time_column(schema: &Schema, named: Option<&str>, key: &str) -> Result<usize> {
    let name = named.or_else(|| event_time_column(schema)).ok_or_else(|| {
        Error::config(
            key,
            "the input has no event-time column; name one, or set `event_time` on its source",
        )
    })?;
    let index = crate::schema::column_index(schema, key, name)?;
    let data_type = schema.field(index).data_type();
    if !is_event_time_type(data_type) {
        let declared = crate::schema::type_name(data_type);
        let hint = match data_type {
            // Times written as text are read as times when declared so.
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => format!(
                "; declare it `{name}: timestamp` in its source's `schema` to read text such as \
                 `2026-01-31T12:00:00Z` as a time"
            ),
            _ => String::new(),
        };
        return Err(Error::config(
            key,
            format!(
                "column `{name}` is {declared}, expected a timestamp or integer milliseconds{hint}"
            ),
        ));
    }
    Ok(index)
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
///
/// A source that reads several splits which advance in event time
/// independently (the partitions of a Kafka topic) names the split of each
/// batch: the watermark is then the minimum over the splits of each one's
/// newest event time, so a lagging partition holds it back instead of
/// seeing its events arrive late. A split quiet for the idle timeout stops
/// holding it back. A split the source gives up (a rebalance took it)
/// keeps holding it back for [`RELEASE_GRACE`], and is then forgotten: a
/// rebalance often hands the split back, and its events must not be late
/// for the pause.
#[derive(Debug)]
pub(crate) struct WatermarkGenerator {
    column: usize,
    delay_millis: i64,
    idle_timeout: Option<Duration>,
    splits: HashMap<u64, SplitProgress>,
    emitted: Option<EventTime>,
    idle_since: Option<Instant>,
    idle: bool,
}

/// How long a split the source gave up keeps holding the watermark back.
pub(crate) const RELEASE_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct SplitProgress {
    /// `None` until the split's first event: it holds the watermark back.
    max_seen: Option<EventTime>,
    last_data: Instant,
    /// When the source gave the split up, if it did.
    released: Option<Instant>,
}

impl SplitProgress {
    fn new(now: Instant) -> Self {
        SplitProgress {
            max_seen: None,
            last_data: now,
            released: None,
        }
    }
}

impl WatermarkGenerator {
    pub(crate) fn new(config: &EventTimeConfig, column: usize) -> Self {
        WatermarkGenerator {
            column,
            delay_millis: i64::try_from(config.max_out_of_orderness.as_millis())
                .unwrap_or(i64::MAX),
            idle_timeout: config.idle_timeout,
            splits: HashMap::new(),
            emitted: None,
            idle_since: None,
            idle: false,
        }
    }

    /// Notes a batch's event times; returns a watermark to send after the
    /// batch if it advanced (or the source was idle until now).
    #[cfg(test)]
    pub(crate) fn observe(&mut self, batch: &RecordBatch) -> Result<Option<Watermark>> {
        self.observe_split(batch, None, Instant::now())
    }

    /// As [`WatermarkGenerator::observe`], for a batch from `split`.
    pub(crate) fn observe_split(
        &mut self,
        batch: &RecordBatch,
        split: Option<u64>,
        now: Instant,
    ) -> Result<Option<Watermark>> {
        self.idle_since = None;
        let millis = to_millis(batch.column(self.column))?;
        if let Some(batch_max) = max(&millis) {
            let progress = self
                .splits
                .entry(split.unwrap_or(0))
                .or_insert_with(|| SplitProgress::new(now));
            progress.max_seen = Some(progress.max_seen.map_or(batch_max, |m| m.max(batch_max)));
            progress.last_data = now;
        }
        let was_idle = std::mem::replace(&mut self.idle, false);
        match self.advance(now) {
            Some(watermark) => Ok(Some(watermark)),
            // Data makes an idle source active again, even without progress.
            None if was_idle => Ok(self.emitted.map(Watermark::EventTime)),
            None => Ok(None),
        }
    }

    /// Notes a split the source has started reading: until its first
    /// event (or its idle timeout) it holds the watermark back, so that
    /// its events are not late for having arrived after another split's.
    /// A split given up and handed back within the grace keeps where it
    /// was.
    pub(crate) fn add(&mut self, split: u64, now: Instant) {
        let progress = self
            .splits
            .entry(split)
            .or_insert_with(|| SplitProgress::new(now));
        if progress.released.take().is_some() {
            progress.last_data = now;
        }
    }

    /// Notes that the source no longer reads `split`: it holds the
    /// watermark back for [`RELEASE_GRACE`] more, in case it comes back.
    pub(crate) fn release(&mut self, split: u64, now: Instant) -> Option<Watermark> {
        if let Some(progress) = self.splits.get_mut(&split) {
            progress.released.get_or_insert(now);
        }
        self.advance(now)
    }

    /// Forgets `split`, read to its end; returns the watermark if that
    /// lets it advance.
    pub(crate) fn finish(&mut self, split: u64, now: Instant) -> Option<Watermark> {
        self.splits.remove(&split);
        self.advance(now)
    }

    /// The minimum over the active splits, if it moved forward.
    fn advance(&mut self, now: Instant) -> Option<Watermark> {
        self.splits.retain(|_, p| {
            p.released
                .is_none_or(|at| now.duration_since(at) < RELEASE_GRACE)
        });
        // A released split in its grace holds the watermark back even if
        // quiet: it is quiet because nobody reads it.
        let active = |p: &&SplitProgress| {
            p.released.is_some()
                || self
                    .idle_timeout
                    .is_none_or(|timeout| now.duration_since(p.last_data) < timeout)
        };
        // A split with no event yet (`None`) is the minimum.
        let slowest = self
            .splits
            .values()
            .filter(active)
            .map(|p| p.max_seen)
            .min()??;
        let watermark = slowest.saturating_sub(self.delay_millis);
        if self.emitted.is_some_and(|e| watermark <= e) {
            return None;
        }
        self.emitted = Some(watermark);
        Some(Watermark::EventTime(watermark))
    }

    /// Notes that the source had nothing; returns [`Watermark::Idle`] once
    /// the idle timeout has passed, or a watermark that advanced because
    /// a quiet split stopped holding it back.
    pub(crate) fn on_idle(&mut self, now: Instant) -> Option<Watermark> {
        let Some(timeout) = self.idle_timeout else {
            // A released split's grace may have run out.
            return self.advance(now);
        };
        let since = *self.idle_since.get_or_insert(now);
        if !self.idle && now.duration_since(since) >= timeout {
            self.idle = true;
            return Some(Watermark::Idle);
        }
        if self.idle {
            return None;
        }
        self.advance(now)
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
    fn slowest_split_holds_the_watermark_until_released() {
        let config = EventTimeConfig::new("ts");
        let mut generator = WatermarkGenerator::new(&config, 0);
        let now = Instant::now();
        assert_eq!(
            generator
                .observe_split(&batch(&[5_000]), Some(1), now)
                .unwrap(),
            Some(Watermark::EventTime(5_000))
        );
        // Split 2 is behind: the watermark does not move past it, and does
        // not move back either.
        assert_eq!(
            generator
                .observe_split(&batch(&[2_000]), Some(2), now)
                .unwrap(),
            None
        );
        assert_eq!(
            generator
                .observe_split(&batch(&[9_000]), Some(1), now)
                .unwrap(),
            None
        );
        assert_eq!(
            generator
                .observe_split(&batch(&[7_000]), Some(2), now)
                .unwrap(),
            Some(Watermark::EventTime(7_000))
        );
        // Released, split 2 holds the watermark back through its grace,
        // and is forgotten after it.
        assert_eq!(generator.release(2, now), None);
        let later = now + RELEASE_GRACE / 2;
        assert_eq!(generator.on_idle(later), None);
        assert_eq!(
            generator.on_idle(now + RELEASE_GRACE),
            Some(Watermark::EventTime(9_000))
        );
    }

    #[test]
    fn a_split_handed_back_within_its_grace_holds_the_watermark_as_before() {
        let config = EventTimeConfig::new("ts").with_idle_timeout(Duration::from_secs(5));
        let mut generator = WatermarkGenerator::new(&config, 0);
        let now = Instant::now();
        generator.add(1, now);
        generator.add(2, now);
        generator
            .observe_split(&batch(&[2_000]), Some(2), now)
            .unwrap();
        assert_eq!(
            generator
                .observe_split(&batch(&[5_000]), Some(1), now)
                .unwrap(),
            Some(Watermark::EventTime(2_000))
        );
        // A rebalance takes split 2 away for longer than the idle timeout:
        // split 1's events do not carry the watermark past split 2's.
        assert_eq!(generator.release(2, now), None);
        let later = now + Duration::from_secs(10);
        assert_eq!(
            generator
                .observe_split(&batch(&[9_000]), Some(1), later)
                .unwrap(),
            None
        );
        // Handed back, it goes on from where it was.
        generator.add(2, later);
        assert_eq!(
            generator
                .observe_split(&batch(&[3_000]), Some(2), later)
                .unwrap(),
            Some(Watermark::EventTime(3_000))
        );
    }

    #[test]
    fn a_split_without_events_holds_the_watermark_back() {
        let config = EventTimeConfig::new("ts");
        let mut generator = WatermarkGenerator::new(&config, 0);
        let now = Instant::now();
        generator.add(1, now);
        generator.add(2, now);
        assert_eq!(
            generator
                .observe_split(&batch(&[5_000]), Some(1), now)
                .unwrap(),
            None
        );
        assert_eq!(
            generator
                .observe_split(&batch(&[3_000]), Some(2), now)
                .unwrap(),
            Some(Watermark::EventTime(3_000))
        );
    }

    #[test]
    fn quiet_split_stops_holding_the_watermark_back() {
        let config = EventTimeConfig::new("ts").with_idle_timeout(Duration::from_millis(100));
        let mut generator = WatermarkGenerator::new(&config, 0);
        let start = Instant::now();
        generator
            .observe_split(&batch(&[1_000]), Some(1), start)
            .unwrap();
        let later = start + Duration::from_millis(150);
        assert_eq!(
            generator
                .observe_split(&batch(&[8_000]), Some(2), later)
                .unwrap(),
            Some(Watermark::EventTime(8_000))
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
