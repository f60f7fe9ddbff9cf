//! Configuration of the file source.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;
use flumen_core::storage::{self, StorageOptions};
use serde::Deserialize;

use super::source::FileSource;

pub use flumen_core::file_format::{CsvOptions, FileFormat};

/// Reads one file of records, then ends.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file: a local path, or a `file://` or `s3://bucket/key` URL.
    #[schemars(extend("format" = "path"))]
    pub path: String,

    /// `json` (one object per line), `csv` or `parquet`. Default: from the
    /// file's extension (`.json`, `.jsonl`, `.ndjson`, `.csv`, `.parquet`).
    #[serde(default)]
    pub format: Option<FileFormat>,

    /// Columns and types, e.g. `{ auction: int64, date_time: timestamp }`.
    /// Fields not declared are ignored. Default: inferred from the first
    /// 1000 records (JSON, CSV) or read from the file (Parquet); timestamps
    /// in text are only recognised when declared.
    #[serde(default)]
    pub schema: Option<SchemaSpec>,

    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// CSV options (header, delimiter).
    #[serde(default)]
    pub csv: CsvOptions,

    /// How to reach an object store, for `s3://` paths (endpoint, region,
    /// credentials).
    #[serde(default)]
    pub storage: StorageOptions,
}

fn default_batch_size() -> usize {
    8192
}

impl FileSourceConfig {
    /// Reads `path`, with the format from its extension.
    pub fn new(path: impl Into<String>) -> Self {
        FileSourceConfig {
            path: path.into(),
            format: None,
            schema: None,
            batch_size: default_batch_size(),
            csv: CsvOptions::default(),
            storage: StorageOptions::default(),
        }
    }

    /// Reads through an object store reached with these options.
    pub fn with_storage(mut self, storage: StorageOptions) -> Self {
        self.storage = storage;
        self
    }

    /// Declares the columns to read.
    pub fn with_schema(mut self, schema: impl Into<SchemaSpec>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    fn infer_schema(&self, format: FileFormat) -> Result<SchemaRef> {
        let path = local_path(&self.path).ok_or_else(|| {
            Error::config(
                "schema",
                format!(
                    "`{}` is not a local file, so its schema must be declared",
                    self.path
                ),
            )
        })?;
        let open = || {
            File::open(&path).map_err(|e| {
                Error::config(
                    "path",
                    format!("cannot read `{}` to infer its schema: {e}", self.path),
                )
            })
        };
        let inferred = match format {
            FileFormat::Json => {
                arrow::json::reader::infer_json_schema(BufReader::new(open()?), Some(1000))
                    .map(|(schema, _)| schema)
            }
            FileFormat::Csv => arrow::csv::reader::Format::default()
                .with_header(self.csv.header)
                .with_delimiter(self.csv.delimiter as u8)
                .infer_schema(open()?, Some(1000))
                .map(|(schema, _)| schema),
            FileFormat::Parquet => {
                let metadata = ::parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
                    &open()?,
                    Default::default(),
                )
                .map_err(|e| {
                    Error::config(
                        "path",
                        format!("`{}` is not a readable Parquet file: {e}", self.path),
                    )
                })?;
                return Ok(metadata.schema().clone());
            }
        }
        .map_err(|e| {
            Error::config(
                "schema",
                format!(
                    "could not infer the schema of `{}`: {e}; declare it",
                    self.path
                ),
            )
        })?;
        if inferred.fields().is_empty() {
            return Err(Error::config(
                "schema",
                format!(
                    "`{}` has no records to infer a schema from; declare it",
                    self.path
                ),
            ));
        }
        Ok(Arc::new(inferred))
    }
}

impl SourceConfig for FileSourceConfig {
    const TYPE: &str = "file";
    const DESCRIPTION: &str = "Reads a JSON lines, CSV or Parquet file.";
    type Source = FileSource;

    /// Checks the settings and resolves the schema (reading the start of a
    /// local file if none is declared).
    fn build(&self) -> Result<FileSource> {
        let location = storage::resolve(&self.path, &self.storage, "path")?;
        let format = match self.format {
            Some(format) => format,
            None => FileFormat::from_extension(&self.path).ok_or_else(|| {
                Error::config(
                    "format",
                    format!("cannot tell the format of `{}` from its extension; set format: json, csv or parquet", self.path),
                )
            })?,
        };
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if !self.csv.delimiter.is_ascii() {
            return Err(Error::config(
                "csv.delimiter",
                "must be one ASCII character",
            ));
        }
        let schema = match &self.schema {
            Some(spec) => spec.to_schema("schema")?,
            None => self.infer_schema(format)?,
        };
        Ok(FileSource::new(self.clone(), location, format, schema))
    }
}

/// The local file a location names, if it is one.
fn local_path(location: &str) -> Option<std::path::PathBuf> {
    match url::Url::parse(location) {
        Ok(url) if url.scheme() == "file" => url.to_file_path().ok(),
        Ok(url) if url.scheme().len() > 1 => None,
        _ => Some(location.into()),
    }
}
