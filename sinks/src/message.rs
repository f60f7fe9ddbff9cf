//! Rows to the messages of message sinks (Kafka, Kinesis): a value per
//! row in one of the value formats, and the text of the columns a message
//! carries besides (a key, headers, a partition key).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;

use flumen_clients::avro::schema_file as avro_schema_file;
use flumen_core::prelude::*;
use flumen_core::schema::column_index;
use flumen_core::writable::split_writable;

/// How rows are encoded as message values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// One JSON object per row.
    #[default]
    Json,
    /// One Avro datum per row.
    Avro,
    /// A text column's value.
    String,
    /// A binary column's value.
    Bytes,
}

/// Avro encoding.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroWriteOptions {
    /// The Avro record schema to write (`.avsc`); its fields are taken
    /// from the columns of the same names.
    #[schemars(extend("format" = "path"))]
    pub schema_file: PathBuf,
}

/// What a sink's settings say about its messages.
pub(crate) struct MessageSettings<'a> {
    pub(crate) format: ValueFormat,
    /// The column written as the value with `string` and `bytes`.
    pub(crate) value_column: Option<&'a str>,
    pub(crate) avro: Option<&'a AvroWriteOptions>,
    /// Columns each message carries as text besides its value: the
    /// setting that names each (for errors), and the column.
    pub(crate) text_columns: Vec<(String, &'a str)>,
}

/// The messages of one batch.
pub(crate) struct Messages {
    values: Vec<u8>,
    /// Where each row's value ends in `values`.
    ends: Vec<usize>,
    /// The text columns, in the order of [`MessageSettings::text_columns`].
    texts: Vec<StringArray>,
}

impl Messages {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn value(&self, row: usize) -> &[u8] {
        let start = if row == 0 { 0 } else { self.ends[row - 1] };
        &self.values[start..self.ends[row]]
    }

    /// Text column `index` of `row`, unless null.
    pub(crate) fn text(&self, index: usize, row: usize) -> Option<&str> {
        let texts = &self.texts[index];
        texts.is_valid(row).then(|| texts.value(row))
    }
}

/// Encodes batches of one schema.
pub(crate) struct RowEncoder {
    format: ValueFormat,
    value_column: Option<usize>,
    avro: Option<Arc<apache_avro::Schema>>,
    texts: Vec<usize>,
}

impl RowEncoder {
    pub(crate) fn new(settings: &MessageSettings<'_>, schema: &SchemaRef) -> Result<Self> {
        let column = |key: &str, name: &str| column_index(schema, key, name);
        let texts = settings
            .text_columns
            .iter()
            .map(|(key, name)| column(key, name))
            .collect::<Result<Vec<_>>>()?;
        let value_column = match settings.format {
            ValueFormat::String | ValueFormat::Bytes => {
                let name = settings.value_column.ok_or_else(|| {
                    Error::config("value_column", "names the column written as the value; required with format string or bytes")
                })?;
                Some(column("value_column", name)?)
            }
            _ => None,
        };
        let avro = match settings.format {
            ValueFormat::Avro => {
                let options = settings.avro.ok_or_else(|| {
                    Error::config("avro.schema_file", "format avro needs a schema file")
                })?;
                let schema = avro_schema_file("avro.schema_file", &options.schema_file)?;
                Some(Arc::new(schema))
            }
            _ => None,
        };
        Ok(RowEncoder {
            format: settings.format,
            value_column,
            avro,
            texts,
        })
    }

    /// The messages of `batch`'s rows, and the rows that cannot be a
    /// message: a value no text can show, or a row that does not fit the
    /// Avro schema.
    pub(crate) fn encode(&self, batch: RecordBatch) -> Result<(Messages, Vec<Rejected>)> {
        let (mut batch, mut rejected) = split_writable(batch)?;
        let mut avro_values = Vec::new();
        if let Some(schema) = &self.avro {
            let mut keep = Vec::with_capacity(batch.num_rows());
            let mut lines = Vec::new();
            json_lines(&batch, &mut lines)?;
            for (row, line) in lines
                .split(|b| *b == b'\n')
                .take(batch.num_rows())
                .enumerate()
            {
                match avro_datum(schema, line) {
                    Ok(datum) => {
                        avro_values.push(datum);
                        keep.push(true);
                    }
                    Err(reason) => {
                        rejected.extend(Rejected::rows(&batch.slice(row, 1), &reason)?);
                        keep.push(false);
                    }
                }
            }
            if avro_values.len() < batch.num_rows() {
                batch = arrow::compute::filter_record_batch(&batch, &keep.into())?;
            }
        }
        let batch = &batch;
        let as_text = |index: usize| -> Result<StringArray> {
            let column = arrow::compute::cast(batch.column(index), &DataType::Utf8)?;
            Ok(column.as_string::<i32>().clone())
        };
        let texts = self
            .texts
            .iter()
            .map(|index| as_text(*index))
            .collect::<Result<Vec<_>>>()?;
        let mut values = Vec::new();
        let mut ends = Vec::with_capacity(batch.num_rows());
        match self.format {
            ValueFormat::Json => {
                json_lines(batch, &mut values)?;
                // One line per row: newlines inside values are escaped.
                let mut text = Vec::with_capacity(values.len());
                for line in values.split(|b| *b == b'\n').take(batch.num_rows()) {
                    text.extend_from_slice(line);
                    ends.push(text.len());
                }
                values = text;
            }
            ValueFormat::Avro => {
                for datum in avro_values {
                    values.extend_from_slice(&datum);
                    ends.push(values.len());
                }
            }
            ValueFormat::String | ValueFormat::Bytes => {
                let column = batch.column(self.value_column.expect("set for string and bytes"));
                let binary = arrow::compute::cast(column, &DataType::Binary)?;
                let binary = binary.as_binary::<i32>();
                for row in 0..binary.len() {
                    if binary.is_valid(row) {
                        values.extend_from_slice(binary.value(row));
                    }
                    ends.push(values.len());
                }
            }
        }
        let messages = Messages {
            values,
            ends,
            texts,
        };
        Ok((messages, rejected))
    }
}

/// One row, as JSON, encoded as an Avro datum of `schema`; or why not.
fn avro_datum(schema: &apache_avro::Schema, row: &[u8]) -> Result<Vec<u8>, String> {
    let json: serde_json::Value =
        serde_json::from_slice(row).map_err(|e| format!("row JSON: {e}"))?;
    let value = apache_avro::types::Value::from(json)
        .resolve(schema)
        .map_err(|e| format!("row does not fit the Avro schema: {e}"))?;
    apache_avro::to_avro_datum(schema, value)
        .map_err(|e| format!("cannot encode the row as Avro: {e}"))
}

fn json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let mut writer = arrow::json::LineDelimitedWriter::new(out);
    writer.write(batch)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, TimestampMillisecondArray};

    use super::*;

    #[test]
    fn a_row_no_text_can_show_is_rejected_not_sent_with_an_error_in_it() {
        let settings = MessageSettings {
            format: ValueFormat::Json,
            value_column: None,
            avro: None,
            text_columns: vec![("key".into(), "at")],
        };
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            (
                "at",
                Arc::new(TimestampMillisecondArray::from(vec![0, i64::MAX, 1_000])) as _,
            ),
        ])
        .unwrap();
        let encoder = RowEncoder::new(&settings, &batch.schema()).unwrap();
        let (messages, rejected) = encoder.encode(batch).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].error.contains("9223372036854775807"),
            "{}",
            rejected[0].error
        );
        for row in 0..messages.len() {
            let value = String::from_utf8_lossy(messages.value(row)).into_owned();
            assert!(!value.contains("ERROR"), "{value}");
            assert!(!messages.text(0, row).unwrap().contains("ERROR"));
        }
        assert_eq!(messages.text(0, 1), Some("1970-01-01T00:00:01"));
    }
}
