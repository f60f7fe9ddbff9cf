//! The payloads of message sources (Kafka records, Kinesis records) as
//! Arrow columns: one format setting and one decoder for all of them.
//!
//! Decoding is vectorized where the format allows: a chunk of JSON or CSV
//! messages is decoded in one pass, and only when that fails is it decoded
//! message by message to find the bad ones.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use flumen_core::file_format::CsvOptions;
use flumen_core::prelude::*;

use flumen_clients::avro::schema_file as avro_schema_file;

/// How message payloads are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// One CSV record per message.
    Csv,
    /// One Avro datum per message, written with the schema in
    /// `avro.schema_file`.
    Avro,
    /// The payload as UTF-8 text, in a `value` column.
    String,
    /// The payload as bytes, in a `value` column.
    Bytes,
}

/// Avro decoding.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroOptions {
    /// The writer's Avro schema (`.avsc`, JSON).
    #[schemars(extend("format" = "path"))]
    pub schema_file: PathBuf,
    /// Whether each message starts with the Confluent schema-registry
    /// header (a zero byte and a 4-byte schema id), which is skipped.
    #[serde(default)]
    pub confluent_header: bool,
}

/// The longest piece of a rejected message kept in its dead-letter record.
const MAX_REJECTED_BYTES: usize = 64 << 10;

/// A resolved value format.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    Json,
    Csv {
        delimiter: u8,
    },
    Avro {
        schema: Arc<apache_avro::Schema>,
        confluent_header: bool,
    },
    String,
    Bytes,
}

impl Format {
    /// The format a source's `format`, `csv` and `avro` settings name.
    pub(crate) fn from_settings(
        format: MessageFormat,
        csv: &CsvOptions,
        avro: Option<&AvroOptions>,
    ) -> Result<Format> {
        if !csv.delimiter.is_ascii() {
            return Err(Error::config(
                "csv.delimiter",
                "must be one ASCII character",
            ));
        }
        Ok(match format {
            MessageFormat::Json => Format::Json,
            MessageFormat::Csv => Format::Csv {
                delimiter: csv.delimiter as u8,
            },
            MessageFormat::String => Format::String,
            MessageFormat::Bytes => Format::Bytes,
            MessageFormat::Avro => {
                let options = avro.ok_or_else(|| {
                    Error::config(
                        "avro.schema_file",
                        "format avro needs the writer's schema file",
                    )
                })?;
                let schema = avro_schema_file("avro.schema_file", &options.schema_file)?;
                Format::Avro {
                    schema: Arc::new(schema),
                    confluent_header: options.confluent_header,
                }
            }
        })
    }
}

/// A batch of message values to decode: the payloads laid end to end,
/// each followed by a newline (so that JSON and CSV decode in one pass).
#[derive(Debug, Default, Clone)]
pub(crate) struct Payloads {
    pub(crate) bytes: Vec<u8>,
    /// Where each payload ends in `bytes` (before its newline).
    pub(crate) ends: Vec<usize>,
}

impl Payloads {
    pub(crate) fn push(&mut self, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
        self.bytes.push(b'\n');
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn get(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] + 1
        };
        &self.bytes[start..self.ends[index]]
    }
}

/// What decoding a chunk gave: the rows of the messages that decoded (in
/// order, one row each), which messages those were, and why the others
/// failed.
pub(crate) struct Decoded {
    pub(crate) batch: RecordBatch,
    /// `None`: every message decoded.
    pub(crate) kept: Option<Vec<usize>>,
    pub(crate) failed: Vec<(usize, String)>,
}

/// Decodes values in one format into batches of one schema.
pub(crate) struct ValueDecoder {
    format: Format,
    schema: SchemaRef,
}

impl ValueDecoder {
    pub(crate) fn new(format: Format, schema: SchemaRef) -> Self {
        ValueDecoder { format, schema }
    }

    pub(crate) fn decode(&self, payloads: &Payloads) -> Result<Decoded> {
        match &self.format {
            Format::Json | Format::Csv { .. } => {
                let csv = match self.format {
                    Format::Csv { delimiter } => Some(delimiter),
                    _ => None,
                };
                // A CSV message that ends inside a quoted field would take
                // the messages after it into that field: decoded together,
                // rows would no longer be messages.
                let whole = |payload: &[u8]| csv.is_none_or(|d| one_csv_record(payload, d));
                let all_whole = (0..payloads.len()).all(|i| whole(payloads.get(i)));
                if all_whole
                    && let Ok(batch) = self.decode_lines(&payloads.bytes, payloads.len())
                    && batch.num_rows() == payloads.len()
                {
                    return Ok(Decoded {
                        batch,
                        kept: None,
                        failed: Vec::new(),
                    });
                }
                self.one_by_one(payloads, |index| {
                    let payload = payloads.get(index);
                    if !whole(payload) {
                        return Err("expected one CSV record per message: a line break \
                             outside quotes, or a quote left open"
                            .into());
                    }
                    let mut line = Vec::with_capacity(payload.len() + 1);
                    line.extend_from_slice(payload);
                    line.push(b'\n');
                    Ok(line)
                })
            }
            Format::Avro {
                schema,
                confluent_header,
            } => self.one_by_one(payloads, |index| {
                avro_to_json_line(schema, payloads.get(index), *confluent_header)
            }),
            Format::String => {
                let mut kept = Vec::with_capacity(payloads.len());
                let mut failed = Vec::new();
                for index in 0..payloads.len() {
                    match std::str::from_utf8(payloads.get(index)) {
                        Ok(_) => kept.push(index),
                        Err(e) => failed.push((index, format!("value is not UTF-8: {e}"))),
                    }
                }
                let values = StringArray::from_iter_values(
                    kept.iter()
                        .map(|i| std::str::from_utf8(payloads.get(*i)).expect("checked above")),
                );
                let kept = (!failed.is_empty()).then_some(kept);
                self.single_column(Arc::new(values), kept, failed)
            }
            Format::Bytes => {
                let values =
                    BinaryArray::from_iter_values((0..payloads.len()).map(|i| payloads.get(i)));
                self.single_column(Arc::new(values), None, Vec::new())
            }
        }
    }

    fn single_column(
        &self,
        values: ArrayRef,
        kept: Option<Vec<usize>>,
        failed: Vec<(usize, String)>,
    ) -> Result<Decoded> {
        let values = arrow::compute::cast(&values, self.schema.field(0).data_type())?;
        let batch = RecordBatch::try_new(self.schema.clone(), vec![values])?;
        Ok(Decoded {
            batch,
            kept,
            failed,
        })
    }

    /// Decodes newline-separated JSON or CSV records in one pass, expecting
    /// `rows` of them. Room is left for one more, so that a message holding
    /// two records shows as a row too many rather than passing unseen.
    fn decode_lines(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch> {
        let batch_size = rows + 1;
        let mut decoder = match self.format {
            Format::Csv { delimiter } => LineDecoder::Csv(Box::new(
                arrow::csv::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(batch_size)
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .build_decoder(),
            )),
            _ => LineDecoder::Json(
                arrow::json::ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(batch_size)
                    .build_decoder()?,
            ),
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = decoder.decode(rest)?;
            if used == 0 {
                break;
            }
            rest = &rest[used..];
        }
        let batch = decoder.flush()?;
        Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }

    /// Decodes each message alone (as a text line `line_of` gives), so that
    /// a bad one is rejected and the rest kept.
    fn one_by_one(
        &self,
        payloads: &Payloads,
        line_of: impl Fn(usize) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Decoded> {
        let mut kept = Vec::with_capacity(payloads.len());
        let mut failed = Vec::new();
        let mut lines = Vec::new();
        for index in 0..payloads.len() {
            let line = match line_of(index) {
                Ok(line) => line,
                Err(error) => {
                    failed.push((index, error));
                    continue;
                }
            };
            match self.decode_lines(&line, 1) {
                Ok(batch) if batch.num_rows() == 1 => {
                    kept.push(index);
                    lines.extend_from_slice(&line);
                }
                Ok(batch) => failed.push((
                    index,
                    format!(
                        "expected one record per message, found {}",
                        batch.num_rows()
                    ),
                )),
                Err(error) => failed.push((index, error.to_string())),
            }
        }
        // The good ones, decoded together (each is known to decode alone).
        let batch = self.decode_lines(&lines, kept.len())?;
        let kept = (!failed.is_empty()).then_some(kept);
        Ok(Decoded {
            batch,
            kept,
            failed,
        })
    }
}

/// Arrow's incremental decoders for the formats with one record per line.
enum LineDecoder {
    Json(arrow::json::reader::Decoder),
    Csv(Box<arrow::csv::reader::Decoder>),
}

impl LineDecoder {
    /// Decodes from `buf`; returns how many bytes were used (0 once the
    /// batch is full).
    fn decode(&mut self, buf: &[u8]) -> std::result::Result<usize, arrow::error::ArrowError> {
        match self {
            LineDecoder::Json(d) => d.decode(buf),
            LineDecoder::Csv(d) => d.decode(buf),
        }
    }

    fn flush(&mut self) -> std::result::Result<Option<RecordBatch>, arrow::error::ArrowError> {
        match self {
            LineDecoder::Json(d) => d.flush(),
            LineDecoder::Csv(d) => d.flush(),
        }
    }
}

/// Whether a CSV message is one record, read as Arrow's CSV reader
/// (`csv-core`) reads it: no line break outside a quoted field (one at
/// the very end is allowed), and no quoted field left open. A quote opens
/// a quoted field only at the start of a field; inside one, `""` is a
/// quote and a lone `"` closes it.
fn one_csv_record(payload: &[u8], delimiter: u8) -> bool {
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A `"` inside a quoted field: closing it, or the first of `""`.
        QuoteInQuoted,
    }
    let body = payload
        .strip_suffix(b"\r\n")
        .or_else(|| payload.strip_suffix(b"\n"))
        .unwrap_or(payload);
    let mut state = State::FieldStart;
    for &byte in body {
        state = match (state, byte) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (_, b'\n' | b'\r') => return false,
            (_, byte) if byte == delimiter => State::FieldStart,
            (State::FieldStart, b'"') => State::Quoted,
            _ => State::Unquoted,
        };
    }
    !matches!(state, State::Quoted)
}

/// A payload as shown in a dead-letter record: text where it is text.
pub(crate) fn shown(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(MAX_REJECTED_BYTES)];
    String::from_utf8_lossy(shown).into_owned()
}

/// One Avro datum as a JSON line.
fn avro_to_json_line(
    schema: &apache_avro::Schema,
    payload: &[u8],
    confluent_header: bool,
) -> std::result::Result<Vec<u8>, String> {
    let mut datum = payload;
    if confluent_header {
        if datum.len() < 5 || datum[0] != 0 {
            return Err("missing the Confluent header (a zero byte and a schema id)".into());
        }
        datum = &datum[5..];
    }
    let value = apache_avro::from_avro_datum(schema, &mut datum, None)
        .map_err(|e| format!("not an Avro datum of the schema: {e}"))?;
    let json = serde_json::Value::try_from(value).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    line.push(b'\n');
    Ok(line)
}

/// The Arrow columns of an Avro record schema's fields.
pub(crate) fn avro_to_arrow(schema: &apache_avro::Schema) -> Result<SchemaRef> {
    use apache_avro::Schema as Avro;
    let apache_avro::Schema::Record(record) = schema else {
        return Err(Error::config(
            "avro.schema_file",
            "the Avro schema must be a record; declare `schema` for other shapes",
        ));
    };
    let mut fields = Vec::new();
    for field in &record.fields {
        let (inner, nullable) = match &field.schema {
            Avro::Union(union) if union.is_nullable() => {
                let others: Vec<_> = union
                    .variants()
                    .iter()
                    .filter(|v| **v != Avro::Null)
                    .collect();
                match others.as_slice() {
                    [one] => (*one, true),
                    _ => (&field.schema, true),
                }
            }
            other => (other, false),
        };
        let data_type = match inner {
            Avro::Boolean => DataType::Boolean,
            Avro::Int => DataType::Int32,
            Avro::Long => DataType::Int64,
            Avro::Float => DataType::Float32,
            Avro::Double => DataType::Float64,
            Avro::String | Avro::Enum(_) | Avro::Uuid => DataType::Utf8,
            Avro::Bytes => DataType::Binary,
            Avro::Date => DataType::Date32,
            Avro::TimestampMillis | Avro::LocalTimestampMillis => {
                DataType::Timestamp(TimeUnit::Millisecond, None)
            }
            Avro::TimestampMicros | Avro::LocalTimestampMicros => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            other => {
                return Err(Error::config(
                    "schema",
                    format!(
                        "Avro field `{}` has type {other:?}, which is not mapped to a column automatically; declare `schema`",
                        field.name
                    ),
                ));
            }
        };
        fields.push(Field::new(&field.name, data_type, nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The schema of the `string` and `bytes` formats.
pub(crate) fn value_schema(data_type: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", data_type, true)]))
}

/// The columns of the payloads: as declared, or as the format fixes them
/// (Avro's schema, `string`, `bytes`). `None` when they must be inferred
/// from a sample (JSON), which the source reads itself.
pub(crate) fn fixed_schema(
    declared: Option<&flumen_core::schema::SchemaSpec>,
    format: &Format,
) -> Result<Option<SchemaRef>> {
    Ok(Some(match (declared, format) {
        (Some(spec), _) => spec.to_schema("schema")?,
        (None, Format::Avro { schema, .. }) => avro_to_arrow(schema)?,
        (None, Format::String) => value_schema(DataType::Utf8),
        (None, Format::Bytes) => value_schema(DataType::Binary),
        (None, Format::Csv { .. }) => {
            return Err(Error::config(
                "schema",
                "is required for CSV messages (they carry no column names)",
            ));
        }
        (None, Format::Json) => return Ok(None),
    }))
}

/// The columns of JSON payloads, inferred from `sample` (one payload per
/// line, `count` of them).
pub(crate) fn infer_json(sample: &[u8], count: usize, from: &str) -> Result<SchemaRef> {
    if count == 0 {
        return Err(Error::config(
            "schema",
            format!("no messages in {from} to infer a schema from; declare it"),
        ));
    }
    let (schema, _) = arrow::json::reader::infer_json_schema(sample, Some(count)).map_err(|e| {
        Error::config(
            "schema",
            format!("could not infer it from a sample: {e}; declare it"),
        )
    })?;
    Ok(Arc::new(schema))
}
