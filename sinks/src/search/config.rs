//! Configuration of the search-index sink.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Deserialize;

use flumen_core::prelude::*;

use super::sink::SearchSink;

/// Keeps its input searchable in an embedded Tantivy index (upserts by
/// `id`, changelog deletes), exactly once with checkpoints.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSinkConfig {
    /// The index's directory, e.g. `search/tweets`, created if missing.
    /// `flumen search` queries it while the pipeline runs.
    #[schemars(extend("format" = "path"))]
    pub path: PathBuf,

    /// A column that identifies a document: a row replaces the document
    /// of its id, and a changelog's delete removes it. Default: every row
    /// is a new document.
    #[serde(default)]
    pub id: Option<String>,

    /// How columns become fields, by column name, e.g. `{ text: { type:
    /// text, tokenizer: en_stem }, user: { type: keyword } }`. Default:
    /// text columns as `text`, numbers as `number`, timestamps as `date`,
    /// every one stored; other columns are left out.
    #[serde(default)]
    pub fields: Option<IndexMap<String, FieldConfig>>,
}

/// How one column is indexed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// `text` (analysed: words, for full-text queries), `keyword` (exact:
    /// the whole value is one term), `number` or `date` (fast fields, for
    /// ranges and sorting).
    #[serde(rename = "type")]
    pub kind: FieldType,

    /// How a `text` field is split into terms.
    #[serde(default)]
    pub tokenizer: Tokenizer,

    /// Whether queries return the value (and highlight it).
    #[serde(default = "default_stored")]
    pub stored: bool,
}

fn default_stored() -> bool {
    true
}

/// How a column is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Analysed text.
    Text,
    /// An exact value.
    Keyword,
    /// An integer or a float.
    Number,
    /// A timestamp.
    Date,
}

/// How text is split into terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// Words, lowercased.
    #[default]
    Default,
    /// Words, lowercased and stemmed (English): `roasting` finds `roast`.
    EnStem,
    /// Every 2 and 3 letters, lowercased: parts of words match.
    Ngram,
}

impl Tokenizer {
    /// The name Tantivy knows it by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tokenizer::Default => "default",
            Tokenizer::EnStem => "en_stem",
            Tokenizer::Ngram => "ngram",
        }
    }
}

impl SearchSinkConfig {
    /// Indexes rows in the directory `path`, every column by its type.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SearchSinkConfig {
            path: path.into(),
            id: None,
            fields: None,
        }
    }
}

impl SinkConfig for SearchSinkConfig {
    const TYPE: &str = "search";
    const DESCRIPTION: &str = "Keeps rows searchable in an embedded Tantivy index (upserts by id, deletes), exactly once.";
    type Sink = SearchSink;

    fn build(&self) -> Result<SearchSink> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config("path", "is empty; e.g. `search/tweets`"));
        }
        if self.fields.as_ref().is_some_and(IndexMap::is_empty) {
            return Err(Error::config("fields", "lists no columns"));
        }
        if let Some(fields) = &self.fields {
            for (name, field) in fields {
                if field.kind != FieldType::Text && field.tokenizer != Tokenizer::Default {
                    return Err(Error::config(
                        format!("fields.{name}.tokenizer"),
                        "applies to `text` fields only",
                    ));
                }
            }
        }
        Ok(SearchSink::new(self.clone()))
    }
}
