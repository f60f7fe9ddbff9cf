//! What a file of rows is: its encoding and, for CSV, how it is written.
//! The file source reads such files, and so does a lookup join's table.

use serde::{Deserialize, Serialize};

/// The encoding of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line (NDJSON).
    Json,
    /// Comma-separated values.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// Guesses the format from a file name's extension.
    pub fn from_extension(path: &str) -> Option<FileFormat> {
        let extension = path.rsplit('.').next()?.to_ascii_lowercase();
        match extension.as_str() {
            "json" | "jsonl" | "ndjson" => Some(FileFormat::Json),
            "csv" => Some(FileFormat::Csv),
            "parquet" => Some(FileFormat::Parquet),
            _ => None,
        }
    }
}

/// Options for CSV files.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Whether the first line names the columns (and is skipped).
    #[serde(default = "yes")]
    pub header: bool,
    /// The field separator, one ASCII character.
    #[serde(default = "comma")]
    pub delimiter: char,
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            delimiter: ',',
        }
    }
}
