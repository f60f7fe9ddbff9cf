//! Whether a JSON object's values fit the columns of a schema, read with
//! `serde_json` and no Arrow: the first value that does not, described
//! for a person. HTTP ingest refuses such an event with this description;
//! the file and Kafka sources give it as the reason a record is rejected.

use std::fmt;

use arrow::datatypes::{DataType, Schema};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::json;

/// If `body` is one JSON object (and nothing else), whether its fields'
/// values are of their columns' types and the `required` columns (by
/// index) hold a value.
pub(crate) fn one_object(
    body: &[u8],
    schema: &Schema,
    required: &[usize],
) -> Option<Result<(), String>> {
    if !body.starts_with(b"{") {
        return None;
    }
    let mut parser = serde_json::Deserializer::from_slice(body);
    let checked = TypeCheck {
        schema,
        required,
        wording: Wording::Field,
    }
    .deserialize(&mut parser)
    .ok()?;
    parser.end().ok()?;
    Some(checked)
}

/// The first field of `event` (a JSON object) whose value is not of its
/// column's type, described for a person: ``field `id` should be Int64,
/// found "three"``. `None` if every field it looks at fits.
pub(crate) fn describe_misfit(event: &[u8], schema: &Schema) -> Option<String> {
    misfit(event, schema, Wording::Field)
}

/// The first column of `record` (a JSON object) whose value is not of its
/// declared type, in a pipeline file's words: ``column `likes`: declared
/// string, found number 18``. `None` if every value fits.
pub(crate) fn describe_column_misfit(record: &[u8], schema: &Schema) -> Option<String> {
    misfit(record, schema, Wording::Column)
}

fn misfit(event: &[u8], schema: &Schema, wording: Wording) -> Option<String> {
    let mut parser = serde_json::Deserializer::from_slice(event);
    TypeCheck {
        schema,
        required: &[],
        wording,
    }
    .deserialize(&mut parser)
    .ok()?
    .err()
}

/// Reads an event through, finding the first field whose value does not
/// fit its column's type, or else the first `required` column (by index)
/// it leaves null.
struct TypeCheck<'a> {
    schema: &'a Schema,
    required: &'a [usize],
    wording: Wording,
}

/// How a value that does not fit is described.
#[derive(Clone, Copy)]
enum Wording {
    /// To a client that sent an event: ``field `id` should be Int64,
    /// found "three"``.
    Field,
    /// To a pipeline's author: ``column `id`: declared int64, found
    /// string "three"``.
    Column,
}

impl<'de> DeserializeSeed<'de> for TypeCheck<'_> {
    type Value = Result<(), String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TypeCheck<'_> {
    type Value = Result<(), String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut problem = None;
        // Which required columns hold a value: the last of a repeated key
        // is the one the decoder keeps.
        let mut held = vec![false; self.required.len()];
        while let Some(index) = map.next_key_seed(FieldIndex(self.schema))? {
            // Once a field is wrong the rest is only read through.
            let Some(index) = index.filter(|_| problem.is_none()) else {
                map.next_value::<AnyValue>()?;
                continue;
            };
            let field = &self.schema.fields()[index];
            let checked = map.next_value_seed(ValueCheck(field.data_type()))?;
            if let Some(held) = self
                .required
                .iter()
                .position(|r| *r == index)
                .map(|at| &mut held[at])
            {
                *held = !matches!(checked, Checked::Null);
            }
            if let Checked::Misfit { kind, value } = checked {
                problem = Some(match self.wording {
                    Wording::Field => format!(
                        "field `{}` should be {}, found {value}",
                        field.name(),
                        field.data_type()
                    ),
                    Wording::Column => format!(
                        "column `{}`: declared {}, found {}",
                        field.name(),
                        flumen_core::schema::type_name(field.data_type()),
                        match kind {
                            "" => value,
                            kind => format!("{kind} {value}"),
                        }
                    ),
                });
            }
        }
        if problem.is_none()
            && let Some(at) = held.iter().position(|held| !held)
        {
            let name = self.schema.field(self.required[at]).name();
            problem = Some(format!("field `{name}` is required"));
        }
        Ok(problem.map_or(Ok(()), Err))
    }
}

/// Any JSON value, read through with every string in it read as text (so
/// checked to be UTF-8 with sound escapes), as the decoder reads it.
struct AnyValue;

impl<'de> de::Deserialize<'de> for AnyValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyValue)
    }
}

impl<'de> Visitor<'de> for AnyValue {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(AnyValue)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
        while map.next_entry::<AnyValue, AnyValue>()?.is_some() {}
        Ok(AnyValue)
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
    Misfit {
        kind: &'static str,
        value: String,
    },
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

impl Found<'_> {
    /// The kind of JSON value, in a person's words.
    fn kind(&self) -> &'static str {
        match self {
            Found::Bool(_) => "boolean",
            Found::Int(_) | Found::UInt(_) | Found::Float(_) => "number",
            Found::Str(_) => "string",
            Found::Array | Found::Object => "",
        }
    }
}

/// Whether a JSON value can be read as `data_type`, as far as its kind
/// and range go (the decoder has the last word).
fn fits(data_type: &DataType, found: &Found<'_>) -> bool {
    let integer = match found {
        Found::Int(n) => Some(i128::from(*n)),
        Found::UInt(n) => Some(i128::from(*n)),
        _ => None,
    };
    let within = |low: i128, high: i128| integer.is_some_and(|n| (low..=high).contains(&n));
    match data_type {
        DataType::Int8 => within(i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => within(i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => within(i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => within(i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => within(0, u8::MAX.into()),
        DataType::UInt16 => within(0, u16::MAX.into()),
        DataType::UInt32 => within(0, u32::MAX.into()),
        DataType::UInt64 => within(0, u64::MAX.into()),
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            matches!(found, Found::Int(_) | Found::UInt(_) | Found::Float(_))
        }
        DataType::Boolean => matches!(found, Found::Bool(_)),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => matches!(found, Found::Str(_)),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            matches!(found, Found::Str(_)) || within(i64::MIN.into(), i64::MAX.into())
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
            Checked::Misfit {
                kind: found.kind(),
                value: found.to_string(),
            }
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
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(self.check(Found::Array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<AnyValue, AnyValue>()?.is_some() {}
        Ok(self.check(Found::Object))
    }
}

/// `text`, cut short for an error message.
pub(crate) fn shortened(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}
