//! A request's events: checked against the stream's schema and written
//! into the buffer record as they came.
//!
//! A body is one JSON object, an array of them, or objects one after
//! another (NDJSON). `serde_json` checks that it is JSON and finds where
//! each event starts and ends; each event is then checked field by field
//! without building it (no `Value`s, no copies of its strings), and its
//! bytes go into the record unchanged. A body that is one object, the
//! usual case, is checked in a single pass and framed into the buffer
//! straight from the request. The pipeline's arrow-json
//! decoder reads the record back, so what ingest accepts is exactly what
//! it decodes.

use std::fmt;

use arrow::datatypes::{DataType, Schema};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;

/// A request's events, checked against the schema.
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

/// Checks the events of `body`. The first problem refuses the whole
/// request, naming the row and field.
pub(crate) fn check<'a>(
    body: &'a [u8],
    schema: &Schema,
    required: &[String],
) -> Result<Events<'a>, String> {
    // Most requests are one object: that is checked in one pass, and its
    // bytes go into the record as they are. Anything else, or anything
    // wrong, takes the general way, which names the problem.
    let whole = body.trim_ascii();
    if whole.starts_with(b"{") && is_one_fitting_event(whole, schema, required) {
        return Ok(Events::One(whole));
    }
    let mut lines = Vec::with_capacity(body.len() + 16);
    let mut count = 0u32;
    let mut take = |event: &[u8], lines: &mut Vec<u8>| {
        check_event(event, schema, required).map_err(|e| format!("row {count}: {e}"))?;
        lines.push(b'\n');
        lines.extend_from_slice(event);
        count += 1;
        Ok::<_, String>(())
    };
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<IgnoredAny>();
    let mut first = true;
    loop {
        let start = values.byte_offset();
        match values.next() {
            None => break,
            Some(Err(e)) => return Err(format!("the body is not valid JSON: {e}")),
            Some(Ok(_)) => {}
        }
        let value = body[start..values.byte_offset()].trim_ascii();
        if first && value.starts_with(b"[") {
            for event in array_elements(value) {
                take(event, &mut lines)?;
            }
        } else {
            take(value, &mut lines)?;
        }
        first = false;
    }
    if count == 0 {
        return Err("the body holds no events".into());
    }
    Ok(Events::Many { count, lines })
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

/// Checks one event (valid JSON) against the schema.
fn check_event(event: &[u8], schema: &Schema, required: &[String]) -> Result<(), String> {
    if !event.starts_with(b"{") {
        return Err(format!(
            "expected a JSON object, found {}",
            shortened(&String::from_utf8_lossy(event))
        ));
    }
    let mut parser = serde_json::Deserializer::from_slice(event);
    let found = EventCheck { schema }
        .deserialize(&mut parser)
        .map_err(|e| format!("the event is not valid JSON: {e}"))??;
    match missing_required(schema, required, &found) {
        Some(field) => Err(format!("field `{field}` is required")),
        None => Ok(()),
    }
}

/// Whether `body` is one JSON object, and an event that fits the schema.
fn is_one_fitting_event(body: &[u8], schema: &Schema, required: &[String]) -> bool {
    let mut parser = serde_json::Deserializer::from_slice(body);
    let found = EventCheck { schema }.deserialize(&mut parser);
    match found {
        Ok(Ok(present)) => {
            parser.end().is_ok() && missing_required(schema, required, &present).is_none()
        }
        _ => false,
    }
}

/// The first required field an event lacks (`present` says which of the
/// schema's fields it has).
fn missing_required<'a>(
    schema: &'a Schema,
    required: &[String],
    present: &[bool],
) -> Option<&'a str> {
    schema
        .fields()
        .iter()
        .zip(present)
        .find(|(field, present)| !**present && required.iter().any(|r| r == field.name()))
        .map(|(field, _)| field.name().as_str())
}

/// Which of the schema's fields an event has (not null), or the first one
/// that does not fit its type.
struct EventCheck<'a> {
    schema: &'a Schema,
}

impl<'de> DeserializeSeed<'de> for EventCheck<'_> {
    type Value = Result<Vec<bool>, String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventCheck<'_> {
    type Value = Result<Vec<bool>, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut present = vec![false; self.schema.fields().len()];
        let mut problem = None;
        while let Some(index) = map.next_key_seed(FieldIndex(self.schema))? {
            // Once a field is wrong the rest is only read through.
            let Some(index) = index.filter(|_| problem.is_none()) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let field = &self.schema.fields()[index];
            match map.next_value_seed(ValueCheck(field.data_type()))? {
                Checked::Null => present[index] = false,
                Checked::Fits => present[index] = true,
                Checked::Misfit(found) => {
                    problem = Some(format!(
                        "field `{}` should be {}, found {found}",
                        field.name(),
                        field.data_type()
                    ));
                }
            }
        }
        Ok(problem.map_or(Ok(present), Err))
    }
}

/// A key's place in the schema, if it is one of its fields.
struct FieldIndex<'a>(&'a Schema);

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.index_of(key).ok())
    }
}

/// What a field's value turned out to be.
enum Checked {
    Null,
    Fits,
    /// It does not fit; what was found instead, for the error.
    Misfit(String),
}

/// A JSON value as far as its type goes.
enum Found<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Array,
    Object,
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Bool(b) => write!(f, "{b}"),
            Found::Int(n) => write!(f, "{n}"),
            Found::UInt(n) => write!(f, "{n}"),
            Found::Float(n) => write!(f, "{n}"),
            Found::Str(s) => f.write_str(&shortened(&json!(s).to_string())),
            Found::Array => f.write_str("an array"),
            Found::Object => f.write_str("an object"),
        }
    }
}

/// Whether a JSON value can be read as `data_type`.
fn fits(data_type: &DataType, found: &Found<'_>) -> bool {
    let integer = match found {
        Found::Int(n) => Some(*n),
        Found::UInt(n) => i64::try_from(*n).ok(),
        _ => None,
    };
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => integer.is_some(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            matches!(found, Found::UInt(_))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            matches!(found, Found::Int(_) | Found::UInt(_) | Found::Float(_))
        }
        DataType::Boolean => matches!(found, Found::Bool(_)),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => matches!(found, Found::Str(_)),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            matches!(found, Found::Str(_)) || integer.is_some()
        }
        DataType::List(_) | DataType::LargeList(_) => matches!(found, Found::Array),
        DataType::Struct(_) => matches!(found, Found::Object),
        _ => true,
    }
}

/// Checks one value against a type as it is read.
struct ValueCheck<'a>(&'a DataType);

impl ValueCheck<'_> {
    fn check(&self, found: Found<'_>) -> Checked {
        if fits(self.0, &found) {
            Checked::Fits
        } else {
            Checked::Misfit(found.to_string())
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueCheck<'_> {
    type Value = Checked;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueCheck<'_> {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Checked, E> {
        Ok(self.check(Found::Bool(b)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Checked, E> {
        Ok(self.check(Found::Int(n)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Checked, E> {
        Ok(self.check(Found::UInt(n)))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Checked, E> {
        Ok(self.check(Found::Float(n)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Checked, E> {
        Ok(self.check(Found::Str(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.check(Found::Array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.check(Found::Object))
    }
}

/// `text`, cut short for an error message.
fn shortened(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A record's first line: its metadata (the idempotency key).
pub(crate) fn record_header(key: Option<&str>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Header<'a> {
        key: Option<&'a str>,
    }
    serde_json::to_vec(&Header { key }).expect("JSON")
}

/// The idempotency key of a record's payload, if it has one.
pub(crate) fn record_key(payload: &[u8]) -> Option<String> {
    let first = payload.split(|b| *b == b'\n').next()?;
    let meta: serde_json::Value = serde_json::from_slice(first).ok()?;
    meta.get("key")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Field;

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ])
    }

    /// The events accepted, as the record's lines after the header.
    fn accept(body: &str) -> Result<Vec<String>, String> {
        let checked = check(body.as_bytes(), &schema(), &["id".into()])?;
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
    fn the_first_problem_names_its_row_and_field() {
        let refused = |body: &str| accept(body).unwrap_err();
        assert_eq!(
            refused(r#"{"id":1}{"id":"three"}"#),
            r#"row 1: field `id` should be Int64, found "three""#
        );
        assert_eq!(
            refused(r#"[{"id":1},{"name":"x"}]"#),
            "row 1: field `id` is required"
        );
        assert_eq!(refused(r#"{"id":null}"#), "row 0: field `id` is required");
        assert_eq!(
            refused(r#"{"id":1.5}"#),
            "row 0: field `id` should be Int64, found 1.5"
        );
        assert_eq!(
            refused(r#"{"id":1,"tags":"x"}"#),
            r#"row 0: field `tags` should be List(Utf8), found "x""#
        );
        assert_eq!(
            refused(r#"[{"id":1}, 7]"#),
            "row 1: expected a JSON object, found 7"
        );
        assert!(refused(r#"{"id":1"#).starts_with("the body is not valid JSON"));
        assert_eq!(refused(" [] "), "the body holds no events");
        assert_eq!(refused(""), "the body holds no events");
    }

    #[test]
    fn an_escaped_key_is_still_its_field() {
        assert_eq!(
            accept(r#"{"\u0069d":"x"}"#).unwrap_err(),
            r#"row 0: field `id` should be Int64, found "x""#
        );
    }
}
