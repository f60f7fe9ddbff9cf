//! Configuration of the search-index sink.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Deserialize;

use flumen_core::prelude::*;

use super::elasticsearch::ElasticsearchConfig;
use super::sink::{Backend, SearchSink};

/// Keeps its input searchable (upserts by `id`, changelog deletes) in an
/// embedded Tantivy index (`path`), or in an Elasticsearch or OpenSearch
/// index (`elasticsearch`); give one of the two.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSinkConfig {
    /// The embedded index's directory, e.g. `search/tweets`, created if
    /// missing. `flumen search` queries it while the pipeline runs, and
    /// so does the `serve:` server. Exactly once with checkpoints.
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub path: Option<PathBuf>,

    /// Index into Elasticsearch or OpenSearch instead, through the
    /// `_bulk` API. At least once; with `id`, a repeated write replaces
    /// the same document, so the effect is exactly once.
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchConfig>,

    /// A column that identifies a document: a row replaces the document
    /// of its id, and a changelog's delete removes it. Default: every row
    /// is a new document. Required with `elasticsearch`.
    #[serde(default)]
    pub id: Option<String>,

    /// How columns become fields, by column name, e.g. `{ text: { type:
    /// text, tokenizer: en_stem }, user: { type: keyword } }`. Default:
    /// text columns as `text`, numbers as `number`, timestamps as `date`,
    /// every one stored; other columns are left out. With `elasticsearch`
    /// they choose the columns a document holds, checked the same way;
    /// how they are analysed is the index mapping's business.
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
            path: Some(path.into()),
            elasticsearch: None,
            id: None,
            fields: None,
        }
    }
}

impl SinkConfig for SearchSinkConfig {
    const TYPE: &str = "search";
    const DESCRIPTION: &str = "Keeps rows searchable (upserts by id, deletes) in an embedded Tantivy index, exactly once, or in Elasticsearch/OpenSearch.";
    type Sink = SearchSink;

    fn build(&self) -> Result<SearchSink> {
        let backend = match (&self.path, &self.elasticsearch) {
            (Some(path), None) if path.as_os_str().is_empty() => {
                return Err(Error::config("path", "is empty; e.g. `search/tweets`"));
            }
            (Some(path), None) => Backend::Tantivy(path.clone()),
            (None, Some(elasticsearch)) => {
                if self.id.is_none() {
                    return Err(Error::config(
                        "id",
                        "is needed with `elasticsearch`: a document's `_id` comes from it, so that a request sent again replaces what it wrote instead of adding it twice",
                    ));
                }
                Backend::Elasticsearch(Box::new(elasticsearch.client()?))
            }
            (None, None) => {
                return Err(Error::config(
                    "",
                    "needs an index: `path` (an embedded index's directory) or `elasticsearch`",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "",
                    "has two indexes; give one of `path` and `elasticsearch`",
                ));
            }
        };
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
        Ok(SearchSink::new(self.clone(), backend))
    }
}
