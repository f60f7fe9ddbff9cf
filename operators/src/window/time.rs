//! Window arithmetic: panes, window bounds, and which clock windows follow.

use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::record_batch::RecordBatch;
use flumen_core::event_time::to_millis;
use flumen_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// Which clock places rows in windows and closes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeDomain {
    /// The events' own time (a column), closed by the watermark: results
    /// do not depend on when events arrive.
    #[default]
    Event,
    /// The time rows arrive, closed by the wall clock.
    Processing,
}

/// Where a row's time comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowTime {
    /// Column `0` holds event time.
    Column(usize),
    /// Arrival time.
    Arrival,
}

impl RowTime {
    /// Milliseconds since the epoch of every row.
    pub(crate) fn of(&self, batch: &RecordBatch) -> Result<Int64Array> {
        match self {
            RowTime::Column(column) => to_millis(batch.column(*column)),
            RowTime::Arrival => Ok(Int64Array::from_value(
                wall_clock_millis(),
                batch.num_rows(),
            )),
        }
    }
}

/// Wall-clock time in milliseconds since the epoch.
pub(crate) fn wall_clock_millis() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as EventTime)
}

/// A duration in milliseconds, rejecting zero for `key`.
pub(crate) fn millis(duration: Duration, key: &str) -> Result<i64> {
    let millis =
        i64::try_from(duration.as_millis()).map_err(|_| Error::config(key, "is too long"))?;
    if millis == 0 {
        return Err(Error::config(key, "must be at least 1ms"));
    }
    Ok(millis)
}

/// The start of the `length`-long slot holding `time` (slots start at the
/// epoch).
pub(crate) fn slot_start(time: EventTime, length: i64) -> EventTime {
    time.div_euclid(length) * length
}

/// Greatest common divisor.
pub(crate) fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A timestamp column of `values`, for `window_start` and `window_end`.
pub(crate) fn timestamps(values: Vec<i64>) -> ArrayRef {
    std::sync::Arc::new(TimestampMillisecondArray::from(values))
}
