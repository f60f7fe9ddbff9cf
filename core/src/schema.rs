//! Declaring a schema in configuration: `{ auction: int64, price: int64,
//! date_time: timestamp }`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The index of `column` in `schema`, which setting `path` names; or the
/// error listing the columns there are.
pub fn column_index(schema: &Schema, path: &str, column: &str) -> Result<usize> {
    schema
        .index_of(column)
        .map_err(|_| Error::unknown_column(path, column, schema))
}

/// Columns and their types, in order, as written in a pipeline file.
///
/// Types are friendly names (`int64`, `string`, `timestamp`, `list<int64>`,
/// see [`parse_type`]). Every column is nullable, so a record that lacks a
/// field decodes with a null there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SchemaSpec {
    /// Column name to type name, in column order.
    pub columns: IndexMap<String, String>,
}

impl SchemaSpec {
    /// Resolves the type names. `key` is the configuration path used in
    /// errors, e.g. `sources.bids.schema`.
    pub fn to_schema(&self, key: &str) -> Result<SchemaRef> {
        if self.columns.is_empty() {
            return Err(Error::config(key, "declares no columns"));
        }
        let fields = self
            .columns
            .iter()
            .map(|(name, type_name)| {
                let data_type = parse_type(type_name)
                    .map_err(|message| Error::config(format!("{key}.{name}"), message))?;
                Ok(Field::new(name, data_type, true))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl<const N: usize> From<[(&str, &str); N]> for SchemaSpec {
    fn from(columns: [(&str, &str); N]) -> Self {
        SchemaSpec {
            columns: columns
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        }
    }
}

/// The column types a schema may declare: the name, other names accepted
/// for it, and what it holds.
pub const TYPES: &[(&str, &str, &str)] = &[
    ("bool", "boolean", "true or false"),
    ("int8", "tinyint", "8-bit signed integer"),
    ("int16", "smallint", "16-bit signed integer"),
    ("int32", "int, integer", "32-bit signed integer"),
    ("int64", "bigint, long", "64-bit signed integer"),
    ("uint8", "", "8-bit unsigned integer"),
    ("uint16", "", "16-bit unsigned integer"),
    ("uint32", "", "32-bit unsigned integer"),
    ("uint64", "", "64-bit unsigned integer"),
    ("float32", "float, real", "32-bit floating point"),
    ("float64", "double", "64-bit floating point"),
    ("string", "utf8, text, varchar", "UTF-8 text"),
    ("binary", "bytes", "bytes"),
    ("date", "date32", "a calendar date (`2026-01-31`)"),
    (
        "timestamp",
        "timestamp_ms",
        "milliseconds since the epoch, from a number or RFC 3339 text (`2026-01-31T12:00:00Z`)",
    ),
    ("timestamp_s", "", "seconds since the epoch, or text"),
    ("timestamp_us", "", "microseconds since the epoch, or text"),
    ("timestamp_ns", "", "nanoseconds since the epoch, or text"),
    (
        "list<TYPE>",
        "",
        "a list of values of TYPE (`list<string>`)",
    ),
    (
        "an Arrow type",
        "",
        "as Arrow writes it, e.g. `Decimal128(10, 2)`",
    ),
];

/// Names people reach for that are another type here.
const SYNONYMS: &[(&str, &str)] = &[
    ("datetime", "timestamp"),
    ("timestamptz", "timestamp"),
    ("time", "timestamp"),
    ("instant", "timestamp"),
    ("str", "string"),
    ("char", "string"),
    ("number", "float64"),
    ("numeric", "float64"),
    ("decimal", "float64"),
    ("blob", "binary"),
];

/// The type names a schema may use.
pub const TYPE_NAMES: &str = "bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64, \
     float32, float64, string, binary, date, timestamp (milliseconds), timestamp_s, timestamp_us, \
     timestamp_ns, list<TYPE>, or an Arrow type such as Decimal128(10, 2)";

/// The name a pipeline file declares `data_type` with (`string`,
/// `int64`, `timestamp`, `list<string>`), or Arrow's name for it.
pub fn type_name(data_type: &DataType) -> String {
    let name = match data_type {
        DataType::Boolean => "bool",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::UInt8 => "uint8",
        DataType::UInt16 => "uint16",
        DataType::UInt32 => "uint32",
        DataType::UInt64 => "uint64",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary",
        DataType::Date32 => "date",
        DataType::Timestamp(TimeUnit::Millisecond, None) => "timestamp",
        DataType::Timestamp(TimeUnit::Second, None) => "timestamp_s",
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp_us",
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "timestamp_ns",
        DataType::List(item) | DataType::LargeList(item) => {
            return format!("list<{}>", type_name(item.data_type()));
        }
        other => return other.to_string(),
    };
    name.to_string()
}

/// Parses a friendly type name (`int64`, `bigint`, `string`, `timestamp`,
/// `list<string>`) or, failing that, an Arrow type as Arrow prints it.
pub fn parse_type(name: &str) -> std::result::Result<DataType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let data_type = match lower.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" | "tinyint" => DataType::Int8,
        "int16" | "smallint" => DataType::Int16,
        "int32" | "int" | "integer" => DataType::Int32,
        "int64" | "bigint" | "long" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" | "real" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "string" | "utf8" | "text" | "varchar" => DataType::Utf8,
        "binary" | "bytes" => DataType::Binary,
        "date" | "date32" => DataType::Date32,
        "timestamp" | "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "timestamp_s" => DataType::Timestamp(TimeUnit::Second, None),
        "timestamp_us" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamp_ns" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        _ => {
            if let Some(item) = lower
                .strip_prefix("list<")
                .and_then(|rest| rest.strip_suffix('>'))
            {
                let item = parse_type(item)?;
                return Ok(DataType::List(Arc::new(Field::new_list_field(item, true))));
            }
            return name.trim().parse::<DataType>().map_err(|_| {
                let guess = SYNONYMS
                    .iter()
                    .find(|(synonym, _)| *synonym == lower)
                    .map(|(_, meant)| *meant)
                    .or_else(|| closest_type(&lower));
                match guess {
                    Some(meant) => format!(
                        "unknown type `{name}`; did you mean `{meant}`? The types are: {TYPE_NAMES}"
                    ),
                    None => format!("unknown type `{name}`; expected one of: {TYPE_NAMES}"),
                }
            });
        }
    };
    Ok(data_type)
}

/// The type name `name` is one or two edits away from, if any.
fn closest_type(name: &str) -> Option<&'static str> {
    TYPES
        .iter()
        .flat_map(|(type_name, aliases, _)| {
            std::iter::once(*type_name).chain(aliases.split(", ").filter(|a| !a.is_empty()))
        })
        .filter(|candidate| !candidate.contains(' ') && !candidate.contains('<'))
        .map(|candidate| (strsim::levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_and_arrow_names() {
        assert_eq!(parse_type("BIGINT").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("list<string>").unwrap(),
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
        );
        assert_eq!(
            parse_type("Decimal128(10, 2)").unwrap(),
            DataType::Decimal128(10, 2)
        );
        assert!(
            parse_type("int65")
                .unwrap_err()
                .starts_with("unknown type `int65`; did you mean `int64`? The types are: bool")
        );
        assert!(
            parse_type("datetime")
                .unwrap_err()
                .starts_with("unknown type `datetime`; did you mean `timestamp`?")
        );
        assert!(
            parse_type("whatever")
                .unwrap_err()
                .starts_with("unknown type `whatever`; expected one of: bool")
        );
        // Every type the reference lists parses.
        for (name, aliases, _) in TYPES.iter().filter(|(name, ..)| !name.contains(' ')) {
            let name = name.replace("TYPE", "int64");
            assert!(parse_type(&name).is_ok(), "{name}");
            for alias in aliases.split(", ").filter(|a| !a.is_empty()) {
                assert_eq!(parse_type(alias).unwrap(), parse_type(&name).unwrap());
            }
        }
    }

    #[test]
    fn columns_keep_their_order_and_errors_name_the_column() {
        let spec: SchemaSpec = serde_json::from_str(r#"{"z": "int64", "a": "string"}"#).unwrap();
        let schema = spec.to_schema("schema").unwrap();
        assert_eq!(schema.field(0).name(), "z");
        let bad: SchemaSpec = serde_json::from_str(r#"{"price": "money"}"#).unwrap();
        let err = bad
            .to_schema("sources.bids.schema")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "invalid configuration at `sources.bids.schema.price`: unknown type `money`"
            ),
            "{err}"
        );
    }
}
