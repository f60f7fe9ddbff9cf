//! Querying an index, for `flumen search`: Tantivy's query language over
//! the index's text and keyword fields, against the last commit.

use std::path::Path;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::QueryParser;
use tantivy::schema::FieldType as TantivyFieldType;
use tantivy::snippet::SnippetGenerator;
use tantivy::{Document, Index, IndexReader, ReloadPolicy, TantivyDocument};

use flumen_core::prelude::*;

use super::index::register_tokenizers;

/// An index opened for queries, beside the process that writes it.
pub struct SearchReader {
    index: Index,
    reader: IndexReader,
    parser: QueryParser,
}

/// One document a query found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// How well it matches (BM25).
    pub score: f32,
    /// Its stored fields (and `_id`), as JSON.
    pub document: serde_json::Value,
    /// Its stored text fields that matched, as HTML fragments with the
    /// matching words in `<b>`, by field.
    pub snippets: std::collections::BTreeMap<String, String>,
}

fn search_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::connector(
        "search",
        false,
        format!("search index {}: {error}", path.display()),
    )
}

impl SearchReader {
    /// Opens the index in the directory `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("meta.json").exists() {
            return Err(search_error(
                path,
                "no index there (an index is a `search` sink's `path`)",
            ));
        }
        let index = Index::open_in_dir(path).map_err(|e| search_error(path, e))?;
        register_tokenizers(&index).map_err(|e| search_error(path, e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| search_error(path, e))?;
        let schema = index.schema();
        // Terms without a field name look in every text and keyword field.
        let fields = schema
            .fields()
            .filter(|(_, entry)| {
                matches!(entry.field_type(), TantivyFieldType::Str(options)
                    if options.get_indexing_options().is_some())
            })
            .map(|(field, _)| field)
            .collect();
        let parser = QueryParser::for_index(&index, fields);
        Ok(SearchReader {
            index,
            reader,
            parser,
        })
    }

    /// The documents matching `query`, best first: `limit` of them after
    /// the first `offset`; also how many match in all.
    pub fn search(&self, query: &str, limit: usize, offset: usize) -> Result<(usize, Vec<Hit>)> {
        let parsed = self
            .parser
            .parse_query(query)
            .map_err(|e| Error::connector("search", false, format!("query `{query}`: {e}")))?;
        self.reader
            .reload()
            .map_err(|e| Error::internal(e.to_string()))?;
        let searcher = self.reader.searcher();
        let (top, total) = searcher
            .search(
                &parsed,
                &(
                    TopDocs::with_limit(limit.max(1))
                        .and_offset(offset)
                        .order_by_score(),
                    Count,
                ),
            )
            .map_err(|e| Error::internal(e.to_string()))?;
        let schema = self.index.schema();
        // A snippet generator per stored, analysed field.
        let mut generators = Vec::new();
        for (field, entry) in schema.fields() {
            if let TantivyFieldType::Str(options) = entry.field_type()
                && options.is_stored()
                && options
                    .get_indexing_options()
                    .is_some_and(|i| i.tokenizer() != "raw")
            {
                let generator = SnippetGenerator::create(&searcher, &*parsed, field)
                    .map_err(|e| Error::internal(e.to_string()))?;
                generators.push((entry.name().to_string(), generator));
            }
        }
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top.into_iter().take(limit) {
            let document: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| Error::internal(e.to_string()))?;
            let snippets = generators
                .iter()
                .filter_map(|(name, generator)| {
                    let snippet = generator.snippet_from_doc(&document);
                    (!snippet.highlighted().is_empty()).then(|| (name.clone(), snippet.to_html()))
                })
                .collect();
            hits.push(Hit {
                score,
                document: flatten(
                    serde_json::from_str(&document.to_json(&schema))
                        .map_err(|e| Error::internal(e.to_string()))?,
                ),
                snippets,
            });
        }
        Ok((total, hits))
    }
}

/// Tantivy's JSON of a document lists every field's values; a field with
/// one value (all of them, as the sink writes) shows it alone.
fn flatten(document: serde_json::Value) -> serde_json::Value {
    match document {
        serde_json::Value::Object(fields) => serde_json::Value::Object(
            fields
                .into_iter()
                .map(|(name, values)| match values {
                    serde_json::Value::Array(mut values) if values.len() == 1 => {
                        (name, values.remove(0))
                    }
                    other => (name, other),
                })
                .collect(),
        ),
        other => other,
    }
}
