//! Records a component could not handle: a line that does not decode, a
//! row a SQL expression fails on, a batch a sink rejects for good.
//!
//! What happens to them is each component's `on_error` policy: sent to the
//! pipeline's dead-letter sink with the error, the component and the
//! record's position in its source ([`OnError::DeadLetter`], the default),
//! counted and dropped ([`OnError::Drop`]), or stopping the pipeline
//! ([`OnError::Fail`]). Either way one bad record does not stop the others
//! unless asked to.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a component does with a record it cannot handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Send it to the dead-letter sink (counted in
    /// `flumen_component_dead_lettered_total`) and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline with the error.
    Fail,
    /// Count it in `flumen_component_dead_lettered_total` and go on.
    Drop,
}

/// One record a component could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: String,
    /// The record: the raw line as read, or the row as a JSON object.
    pub record: String,
    /// Where it came from, when known (`events.jsonl, byte 1234`).
    pub position: Option<String>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(position) = &self.position {
            write!(f, " (at {position})")?;
        }
        write!(f, ": {}", self.record)
    }
}

impl Rejected {
    /// The rows of `rows`, each as a JSON object, rejected with `error`.
    pub fn rows(rows: &RecordBatch, error: &dyn fmt::Display) -> Result<Vec<Rejected>> {
        let error = error.to_string();
        Ok(rows_as_json(rows)?
            .into_iter()
            .map(|record| Rejected {
                error: error.clone(),
                record,
                position: None,
            })
            .collect())
    }
}

/// The schema of what the dead-letter sink receives.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "rejected_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("component", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, true),
    ]))
}

/// Rejected records of `component` as a batch of [`schema`].
pub(crate) fn to_batch(component: &str, rejected: &[Rejected], now: i64) -> Result<RecordBatch> {
    let n = rejected.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![now; n]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![component; n])),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.error.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.record.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rejected.iter().map(|r| r.position.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Each row of `batch` as a JSON object. A value no text can show (see
/// [`crate::writable`]) is written as null, never as an error text.
pub fn rows_as_json(batch: &RecordBatch) -> Result<Vec<String>> {
    let columns = batch
        .columns()
        .iter()
        .map(crate::writable::without_unwritable)
        .collect::<Result<Vec<_>>>()?;
    // Nulls may now stand where the schema allows none.
    let nullable: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(nullable)), columns)?;
    let mut buffer = Vec::new();
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    let text = String::from_utf8(buffer)
        .map_err(|e| Error::internal(format!("JSON writer produced invalid UTF-8: {e}")))?;
    Ok(text.lines().map(String::from).collect())
}
