//! Avro schema files, read by the sources and sinks that take Avro
//! payloads (Kafka, Kinesis).

use std::path::Path;

use flumen_core::prelude::*;

/// The Avro schema in `path` (`.avsc`, JSON), named by `key` when it
/// cannot be read or parsed.
pub fn schema_file(key: &str, path: &Path) -> Result<apache_avro::Schema> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(key, format!("cannot read `{}`: {e}", path.display())))?;
    apache_avro::Schema::parse_str(&text).map_err(|e| {
        Error::config(
            key,
            format!("`{}` is not an Avro schema: {e}", path.display()),
        )
    })
}
