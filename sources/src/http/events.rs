//! A request's events: framed, decoded by the pipeline's own decoder, and
//! written into the buffer record as they came.
//!
//! A body is one JSON object, an array of them, or objects one after
//! another (NDJSON). `serde_json` checks that it is JSON, finds where each
//! event starts and ends, and checks each field's value against its
//! column's type, more strictly than the decoder would: a value of another
//! kind or out of range is refused, not converted (the decoder would read
//! `1.5` into an integer column as `1`). The events are then decoded into Arrow by
//! the same decoder the source reads the buffer with ([`EventDecoder`]),
//! and the decoded rows checked for `required` columns and for values no
//! sink could write ([`flumen_core::writable`]). So a request answered 202
//! decodes when it is read back: the one check is the decoder itself.
//! Where the schema's columns are all integers, `float64`, booleans or
//! strings, reading one object through settles what the decoder makes of
//! it, and it is not decoded twice (see `settled_by_reading`).
//!
//! The events' bytes go into the record unchanged (fields outside the
//! schema included). A body that is one object, the usual case, is framed
//! into the buffer straight from the request.

use std::sync::Mutex;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use serde::de::IgnoredAny;

use crate::json_fit::{describe_misfit, one_object, shortened};

/// A request's events, checked.
#[derive(Debug)]
pub(crate) enum Events<'a> {
    /// The body is one event: these bytes of it.
    One(&'a [u8]),
    /// Several events, each on a line of its own after a `\n`.
    Many { count: u32, lines: Vec<u8> },
}

impl Events<'_> {
    pub(crate) fn count(&self) -> u32 {
        match self {
            Events::One(_) => 1,
            Events::Many { count, .. } => *count,
        }
    }

    /// The parts of the buffer record holding the events: `header` (see
    /// [`record_header`]), then each event on a line of its own after a
    /// `\n`.
    pub(crate) fn record<'b>(&'b self, header: &'b [u8]) -> [&'b [u8]; 3] {
        match self {
            Events::One(event) => [header, b"\n", event],
            Events::Many { lines, .. } => [header, lines, b""],
        }
    }
}

/// The events of a buffer record's payload: what follows its header line.
pub(crate) fn record_events(payload: &[u8]) -> &[u8] {
    let start = payload
        .iter()
        .position(|b| *b == b'\n')
        .map_or(payload.len(), |n| n + 1);
    &payload[start..]
}

/// The stream's JSON decoder: what the source reads the buffer with, and
/// what ingest checks requests with. Decoders are kept and reused, since
/// building one allocates room for a whole batch.
pub(crate) struct EventDecoder {
    schema: SchemaRef,
    batch_size: usize,
    spare: Mutex<Vec<Decoder>>,
}

/// Decoders kept for reuse: as many as requests are checked at once, about.
const SPARE_DECODERS: usize = 8;

impl EventDecoder {
    pub(crate) fn new(schema: SchemaRef, batch_size: usize) -> Self {
        EventDecoder {
            schema,
            batch_size: batch_size.max(1),
            spare: Mutex::default(),
        }
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `parts`, one after another: JSON objects separated by
    /// whitespace, split anywhere between them. Every object is decoded,
    /// however many batches they fill.
    pub(crate) fn decode<'p>(
        &self,
        parts: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<RecordBatch, ArrowError> {
        let spare = self.spare.lock().expect("decoders").pop();
        let mut decoder = match spare {
            Some(decoder) => decoder,
            None => ReaderBuilder::new(self.schema.clone())
                .with_batch_size(self.batch_size)
                .build_decoder()?,
        };
        let mut batches = Vec::new();
        for mut part in parts {
            while !part.is_empty() {
                let used = decoder.decode(part)?;
                part = &part[used..];
                // The decoder stops once it holds a full batch.
                if !part.is_empty() {
                    match decoder.flush()? {
                        Some(batch) => batches.push(batch),
                        None if used == 0 => {
                            return Err(ArrowError::JsonError(
                                "the decoder made no progress".into(),
                            ));
                        }
                        None => {}
                    }
                }
            }
        }
        batches.extend(decoder.flush()?);
        // A decoder that failed may hold half a row: only a clean one is
        // kept.
        let mut spare = self.spare.lock().expect("decoders");
        if spare.len() < SPARE_DECODERS {
            spare.push(decoder);
        }
        drop(spare);
        match batches.len() {
            0 => Ok(RecordBatch::new_empty(self.schema.clone())),
            1 => Ok(batches.pop().expect("one")),
            _ => arrow::compute::concat_batches(&self.schema, &batches),
        }
    }
}

/// Checks requests' events against a stream's schema.
pub(crate) struct EventCheck {
    decoder: EventDecoder,
    /// Columns that must be present and not null, by index.
    required: Vec<usize>,
    /// Whether reading an event through with `serde_json` settles what
    /// the decoder makes of it, so that one object need not also be
    /// decoded (see [`settled_by_reading`]).
    settled_by_reading: bool,
}

impl EventCheck {
    pub(crate) fn new(schema: SchemaRef, required: &[String]) -> Self {
        let required = required
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .collect();
        EventCheck {
            settled_by_reading: settled_by_reading(&schema),
            // Requests are small: a decoder for a few hundred events
            // at a time is enough, and quick to reuse.
            decoder: EventDecoder::new(schema, 256),
            required,
        }
    }

    /// Checks the events of `body`. The first problem refuses the whole
    /// request, naming the event and the field.
    pub(crate) fn check<'a>(&self, body: &'a [u8]) -> Result<Events<'a>, String> {
        let schema = self.decoder.schema();
        // Most requests are one object: read once, for where it ends and
        // for its fields' types together.
        let read = match self.settled_by_reading {
            true => &self.required[..],
            false => &[],
        };
        let framed = match one_object(body.trim_ascii(), schema, read) {
            // Reading it settled it: the decoder takes it as it is.
            Some(Ok(())) if self.settled_by_reading => {
                return Ok(Events::One(body.trim_ascii()));
            }
            Some(Ok(())) => vec![body.trim_ascii()],
            Some(Err(misfit)) => return Err(format!("event 0: {misfit}")),
            None => {
                let framed = frame(body)?;
                for (index, event) in framed.iter().enumerate() {
                    if let Some(misfit) = describe_misfit(event, schema) {
                        return Err(format!("event {index}: {misfit}"));
                    }
                }
                framed
            }
        };
        let events = match framed.as_slice() {
            [one] if one.len() == body.trim_ascii().len() => Events::One(one),
            _ => {
                let mut lines = Vec::with_capacity(body.len() + framed.len());
                for event in &framed {
                    lines.push(b'\n');
                    lines.extend_from_slice(event);
                }
                let count = u32::try_from(framed.len())
                    .map_err(|_| "the body holds too many events".to_string())?;
                Events::Many { count, lines }
            }
        };
        let decoded = match &events {
            Events::One(event) => self.decoder.decode([*event]),
            Events::Many { lines, .. } => self.decoder.decode([lines.as_slice()]),
        };
        let fits = decoded
            .is_ok_and(|batch| batch.num_rows() == framed.len() && self.problem(&batch).is_none());
        if fits {
            Ok(events)
        } else {
            Err(self.explain(&framed))
        }
    }

    /// The first row of `batch` that lacks a required column or holds a
    /// value no sink could write, with why.
    fn problem(&self, batch: &RecordBatch) -> Option<(usize, String)> {
        let schema = batch.schema();
        let missing = self.required.iter().find_map(|&index| {
            let column = batch.column(index);
            (column.null_count() > 0).then(|| {
                let row = (0..column.len()).find(|&row| column.is_null(row))?;
                Some((
                    row,
                    format!("field `{}` is required", schema.field(index).name()),
                ))
            })?
        });
        let unwritable = flumen_core::writable::unwritable_rows(batch)
            .into_iter()
            .next()
            .map(|u| (u.row, u.reason.replacen("column", "field", 1)));
        match (missing, unwritable) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Why the events do not fit, naming the first that does not: checked
    /// one by one, as the decoder sees each.
    fn explain(&self, events: &[&[u8]]) -> String {
        for (index, event) in events.iter().enumerate() {
            let why = match self.decoder.decode([*event]) {
                // The decoder's own words name the field; a readable
                // account of the value, where there is one, is better.
                Err(error) => Some(
                    describe_misfit(event, self.decoder.schema())
                        .unwrap_or_else(|| decoder_message(&error)),
                ),
                Ok(batch) => self.problem(&batch).map(|(_, why)| why),
            };
            if let Some(why) = why {
                return format!("event {index}: {why}");
            }
        }
        "the events could not be decoded together".into()
    }
}

/// The events of `body` (valid JSON, each an object), as slices of it.
fn frame(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut events = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<IgnoredAny>();
    let object = |event: &[u8], index: usize| {
        if event.starts_with(b"{") {
            return Ok(());
        }
        Err(format!(
            "event {index}: expected a JSON object, found {}",
            shortened(&String::from_utf8_lossy(event))
        ))
    };
    loop {
        let start = values.byte_offset();
        match values.next() {
            None => break,
            Some(Err(e)) => return Err(format!("the body is not valid JSON: {e}")),
            Some(Ok(_)) => {}
        }
        let value = body[start..values.byte_offset()].trim_ascii();
        if start == 0 && value.starts_with(b"[") {
            for event in array_elements(value) {
                object(event, events.len())?;
                events.push(event);
            }
        } else {
            object(value, events.len())?;
            events.push(value);
        }
    }
    if events.is_empty() {
        return Err("the body holds no events".into());
    }
    Ok(events)
}

/// The Arrow decoder's error, without its prefix.
fn decoder_message(error: &ArrowError) -> String {
    match error {
        ArrowError::JsonError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The elements of a JSON array that `serde_json` has already found
/// valid, as slices of it: split at the commas outside any string, object
/// or array within.
fn array_elements(array: &[u8]) -> Vec<&[u8]> {
    let inner = &array[1..array.len() - 1];
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 0);
    for (i, byte) in inner.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                elements.push(inner[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = inner[start..].trim_ascii();
    if !last.is_empty() {
        elements.push(last);
    }
    elements
}

/// Whether, for events of `schema`, reading one through with
/// [`TypeCheck`] settles what the decoder makes of it. It does where every
/// column is nullable and of a type whose every value `serde_json` reads
/// the decoder reads alike: integers (checked against their width),
/// `float64`, booleans and strings. The reading is stricter than the
/// decoder everywhere (a number written as a string is refused, where the
/// decoder would parse it), and every string in the event, keys and
/// undeclared fields included, is read as text, so an event with bytes that
/// are not UTF-8, or a broken escape, is refused as the decoder refuses it.
/// Timestamps, dates, lists, structs and other types are decoded as well
/// (their texts and elements are the decoder's to judge). The fuzz test
/// `fuzz_what_ingest_admits_the_source_decodes` holds both ways to this.
fn settled_by_reading(schema: &Schema) -> bool {
    schema.fields().iter().all(|field| {
        field.is_nullable()
            && matches!(
                field.data_type(),
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
                    | DataType::Float64
                    | DataType::Boolean
                    | DataType::Utf8
                    | DataType::LargeUtf8
            )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("tags", list(DataType::Utf8), true),
            Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("small", DataType::Int32, true),
            Field::new("scores", list(DataType::Int64), true),
        ]))
    }

    /// The events accepted, as the record's lines after the header.
    fn accept(body: impl AsRef<[u8]>) -> Result<Vec<String>, String> {
        let check = EventCheck::new(schema(), &["id".into()]);
        let checked = check.check(body.as_ref())?;
        let count = checked.count();
        let text = String::from_utf8(checked.record(b"").concat()).unwrap();
        let lines: Vec<String> = text.split('\n').skip(1).map(str::to_string).collect();
        assert_eq!(lines.len(), count as usize);
        Ok(lines)
    }

    #[test]
    fn objects_arrays_and_ndjson_are_kept_as_sent() {
        assert_eq!(accept(r#" {"id": 1} "#).unwrap(), [r#"{"id": 1}"#]);
        assert_eq!(
            accept(r#"[{"id":1,"name":"a, [b]"}, {"id":2,"tags":["x","]"]} ]"#).unwrap(),
            [
                r#"{"id":1,"name":"a, [b]"}"#,
                r#"{"id":2,"tags":["x","]"]}"#
            ]
        );
        assert_eq!(
            accept("{\"id\":1,\"name\":\"say \\\"hi\\\", {\"}\n{\"id\":2}\n").unwrap(),
            [r#"{"id":1,"name":"say \"hi\", {"}"#, r#"{"id":2}"#]
        );
        // Fields outside the schema are kept; the decoder skips them.
        assert_eq!(
            accept(r#"{"id":3,"extra":{"deep":[1,2]}}"#).unwrap(),
            [r#"{"id":3,"extra":{"deep":[1,2]}}"#]
        );
    }

    #[test]
    fn the_first_problem_names_its_event_and_field() {
        let refused = |body: &str| accept(body).unwrap_err();
        assert_eq!(
            refused(r#"{"id":1}{"id":"three"}"#),
            r#"event 1: field `id` should be Int64, found "three""#
        );
        assert_eq!(
            refused(r#"[{"id":1},{"name":"x"}]"#),
            "event 1: field `id` is required"
        );
        assert_eq!(refused(r#"{"id":null}"#), "event 0: field `id` is required");
        assert_eq!(
            refused(r#"{"id":1.5}"#),
            "event 0: field `id` should be Int64, found 1.5"
        );
        assert_eq!(
            refused(r#"{"id":1,"tags":"x"}"#),
            r#"event 0: field `tags` should be List(Utf8), found "x""#
        );
        assert_eq!(
            refused(r#"[{"id":1}, 7]"#),
            "event 1: expected a JSON object, found 7"
        );
        assert!(refused(r#"{"id":1"#).starts_with("the body is not valid JSON"));
        assert_eq!(refused(" [] "), "the body holds no events");
        assert_eq!(refused(""), "the body holds no events");
    }

    #[test]
    fn what_the_decoder_refuses_is_refused_at_ingest() {
        let refused = |body: &[u8]| accept(body).unwrap_err();
        let at = refused(br#"{"id":3,"at":"not a date"}"#);
        assert!(at.starts_with("event 0: ") && at.contains("at"), "{at}");
        assert_eq!(
            refused(br#"{"id":4,"small":3000000000}"#),
            "event 0: field `small` should be Int32, found 3000000000"
        );
        let list = refused(br#"{"id":5,"scores":[1,"two"]}"#);
        assert!(
            list.starts_with("event 0: ") && list.contains("scores"),
            "{list}"
        );
        let utf8 = refused(b"{\"id\":6,\"undeclared\":\"\xff\"}");
        assert!(
            utf8.starts_with("event 0: ") || utf8.contains("JSON"),
            "{utf8}"
        );
        // Decodes, but no sink could write it.
        assert_eq!(
            refused(br#"{"id":8,"at":9223372036854775807}"#),
            "event 0: field `at`: 9223372036854775807 is out of range for Timestamp(ms)"
        );
        // A good event does not carry a bad one in with it.
        let mixed = refused(br#"[{"id":1,"at":"2026-01-01T00:00:00Z"},{"id":2,"at":"soon"}]"#);
        assert!(mixed.starts_with("event 1: "), "{mixed}");
    }

    #[test]
    fn a_schema_settled_by_reading_refuses_what_the_decoder_refuses() {
        let flat = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        assert!(settled_by_reading(&flat) && !settled_by_reading(&schema()));
        let check = EventCheck::new(flat, &["id".into()]);
        let refused = |body: &[u8]| check.check(body).unwrap_err();
        assert!(
            check
                .check(br#"{"id":1,"name":"a","other":[{"x":null}]}"#)
                .is_ok()
        );
        assert_eq!(
            refused(br#"{"name":"a"}"#),
            "event 0: field `id` is required"
        );
        // The decoder keeps the last of a repeated key.
        assert_eq!(
            refused(br#"{"id":1,"id":null}"#),
            "event 0: field `id` is required"
        );
        assert!(check.check(br#"{"id":null,"id":2}"#).is_ok());
        assert_eq!(
            refused(br#"{"id":"1"}"#),
            r#"event 0: field `id` should be Int64, found "1""#
        );
        // Undeclared fields are read as text too.
        for bad_text in [
            &b"{\"id\":1,\"x\":\"\xff\"}"[..],
            br#"{"id":1,"x":["\ud800"]}"#,
        ] {
            let refusal = refused(bad_text);
            assert!(refusal.starts_with("event 0: "), "{refusal}");
        }
    }

    #[test]
    fn an_escaped_key_is_still_its_field() {
        assert_eq!(
            accept(r#"{"\u0069d":"x"}"#).unwrap_err(),
            r#"event 0: field `id` should be Int64, found "x""#
        );
    }

    #[test]
    fn every_event_of_a_body_larger_than_a_batch_is_decoded() {
        let decoder = EventDecoder::new(schema(), 7);
        let lines: String = (0..100).map(|i| format!("{{\"id\":{i}}}\n")).collect();
        let (first, second) = lines.as_bytes().split_at(333);
        let batch = decoder.decode([first, second]).unwrap();
        assert_eq!(batch.num_rows(), 100);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), (0..100).collect::<Vec<i64>>());
    }
}
