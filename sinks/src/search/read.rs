//! Querying an index, for `flumen search`: Tantivy's query language over
//! the index's text and keyword fields, against the last commit, with
//! fuzzy terms (`tweet~1`) for typos.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::query::{BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, QueryParser, Weight};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};
use tantivy::schema::FieldType as TantivyFieldType;
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    DocId, DocSet, Document, Index, IndexReader, ReloadPolicy, Score, SegmentReader, TERMINATED,
    TantivyDocument, Term,
};

use flumen_core::prelude::*;

use super::index::register_tokenizers;

/// An index opened for queries, beside the process that writes it.
pub struct SearchReader {
    path: PathBuf,
    index: Index,
    reader: IndexReader,
    parser: QueryParser,
    /// Where words without a field name are looked for.
    default_fields: Vec<tantivy::schema::Field>,
    /// The commit the reader has loaded, as `meta.json`'s modification
    /// time and length: a commit rewrites the file.
    loaded: Mutex<Option<(SystemTime, u64)>>,
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
            .collect::<Vec<_>>();
        let parser = QueryParser::for_index(&index, fields.clone());
        Ok(SearchReader {
            path: path.to_path_buf(),
            loaded: Mutex::new(None),
            index,
            reader,
            parser,
            default_fields: fields,
        })
    }

    /// The documents matching `query`, best first: `limit` of them after
    /// the first `offset`; also how many match, counted up to
    /// [`COUNT_UP_TO`] (or `offset + limit`, if more).
    pub fn search(&self, query: &str, limit: usize, offset: usize) -> Result<(Total, Vec<Hit>)> {
        let parsed = self.parse(query)?;
        self.reload_if_committed()?;
        let searcher = self.reader.searcher();
        let bound = COUNT_UP_TO.max(offset.saturating_add(limit));
        // Two searches, not one with both collectors: alone, the top
        // documents skip blocks that cannot beat them, and the count stops
        // at its bound.
        let top = searcher
            .search(
                &parsed,
                &TopDocs::with_limit(limit.max(1))
                    .and_offset(offset)
                    .order_by_score(),
            )
            .map_err(|e| Error::internal(e.to_string()))?;
        let total = searcher
            .search(&parsed, &CountUpTo::new(bound))
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

impl SearchReader {
    /// How many documents match `query`, every one counted.
    pub fn count(&self, query: &str) -> Result<usize> {
        let parsed = self.parse(query)?;
        self.reload_if_committed()?;
        self.reader
            .searcher()
            .search(&parsed, &Count)
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// Loads the last commit if there was one since the last query.
    /// Reloading opens every segment again, which would cost a busy
    /// server more than its queries do.
    fn reload_if_committed(&self) -> Result<()> {
        let meta = std::fs::metadata(self.path.join("meta.json"))
            .map_err(|e| search_error(&self.path, e))?;
        let commit = (
            meta.modified().map_err(|e| search_error(&self.path, e))?,
            meta.len(),
        );
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if *loaded != Some(commit) {
            self.reader
                .reload()
                .map_err(|e| search_error(&self.path, e))?;
            *loaded = Some(commit);
        }
        Ok(())
    }

    /// `query` in Tantivy's language, where a word with a distance
    /// (`tweet~1`) is a fuzzy term: it matches words that many edits
    /// away. Tantivy's parser takes `~N` after a word as part of the word,
    /// so those words are built here.
    fn parse(&self, query: &str) -> Result<Box<dyn Query>> {
        let invalid = |e: &dyn std::fmt::Display| {
            Error::connector("search", false, format!("query `{query}`: {e}"))
        };
        // Tantivy's parser checks the whole query and explains mistakes.
        let parsed = self.parser.parse_query(query).map_err(|e| invalid(&e))?;
        let ast = query_grammar::parse_query(query).map_err(|_| invalid(&"Syntax Error"))?;
        if !has_fuzzy_term(&ast) {
            return Ok(parsed);
        }
        self.build(ast).map_err(|e| invalid(&e))
    }

    fn build(&self, ast: UserInputAst) -> std::result::Result<Box<dyn Query>, String> {
        match ast {
            UserInputAst::Leaf(leaf) => match *leaf {
                UserInputLeaf::Literal(literal) if fuzzy_word(&literal).is_some() => {
                    self.fuzzy(&literal)
                }
                leaf => self
                    .parser
                    .build_query_from_user_input_ast(UserInputAst::Leaf(Box::new(leaf)))
                    .map_err(|e| e.to_string()),
            },
            UserInputAst::Boost(inner, boost) => Ok(Box::new(BoostQuery::new(
                self.build(*inner)?,
                boost.into_inner() as f32,
            ))),
            UserInputAst::Clause(clauses) if clauses.iter().any(|(_, c)| has_fuzzy_term(c)) => {
                let clauses = clauses
                    .into_iter()
                    .map(|(occur, clause)| {
                        Ok((occur.unwrap_or(Occur::Should), self.build(clause)?))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            clause => self
                .parser
                .build_query_from_user_input_ast(clause)
                .map_err(|e| e.to_string()),
        }
    }

    /// A fuzzy word: in its field, or in every default field; each of the
    /// terms the field's tokenizer makes of it, within the distance.
    fn fuzzy(&self, literal: &UserInputLiteral) -> std::result::Result<Box<dyn Query>, String> {
        let (word, distance) = fuzzy_word(literal).expect("a fuzzy word");
        let distance = u8::try_from(distance)
            .ok()
            .filter(|d| (1..=2).contains(d))
            .ok_or_else(|| format!("`{}`: a fuzzy word's distance is 1 or 2", literal.phrase))?;
        let schema = self.index.schema();
        let fields = match &literal.field_name {
            Some(name) => vec![schema.get_field(name).map_err(|e| e.to_string())?],
            None => self.default_fields.clone(),
        };
        let mut per_field: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for field in fields {
            if !matches!(
                schema.get_field_entry(field).field_type(),
                TantivyFieldType::Str(_)
            ) {
                return Err(format!(
                    "`{}`: fuzzy words need a text or keyword field",
                    literal.phrase
                ));
            }
            let mut analyzer = self
                .index
                .tokenizer_for_field(field)
                .map_err(|e| e.to_string())?;
            let mut terms: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            analyzer.token_stream(word).process(&mut |token| {
                let term = Term::from_field_text(field, &token.text);
                terms.push((
                    Occur::Must,
                    Box::new(FuzzyTermQuery::new(term, distance, true)),
                ));
            });
            if !terms.is_empty() {
                per_field.push((Occur::Should, Box::new(BooleanQuery::new(terms))));
            }
        }
        Ok(Box::new(BooleanQuery::new(per_field)))
    }
}

/// A word with an edit distance, `roast~1`: the word and the distance.
fn fuzzy_word(literal: &UserInputLiteral) -> Option<(&str, u32)> {
    if literal.delimiter != Delimiter::None || literal.prefix {
        return None;
    }
    let (word, distance) = literal.phrase.rsplit_once('~')?;
    if word.is_empty() || distance.is_empty() || !distance.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((word, distance.parse().ok()?))
}

fn has_fuzzy_term(ast: &UserInputAst) -> bool {
    match ast {
        UserInputAst::Leaf(leaf) => {
            matches!(&**leaf, UserInputLeaf::Literal(l) if fuzzy_word(l).is_some())
        }
        UserInputAst::Boost(inner, _) => has_fuzzy_term(inner),
        UserInputAst::Clause(clauses) => clauses.iter().any(|(_, c)| has_fuzzy_term(c)),
    }
}

/// How many documents a query counts at most: counting every match of a
/// query that matches millions would cost more than finding the best.
pub const COUNT_UP_TO: usize = 10_000;

/// How many documents match a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    /// The count, or the bound it stopped at.
    pub count: usize,
    /// Whether `count` is every match, rather than a lower bound.
    pub exact: bool,
}

/// Counts the matches of a query up to a bound, over all segments, and
/// stops there.
struct CountUpTo {
    bound: u32,
    /// Counted so far, in the segments done.
    counted: AtomicU32,
}

impl CountUpTo {
    fn new(bound: usize) -> Self {
        CountUpTo {
            bound: u32::try_from(bound).unwrap_or(u32::MAX),
            counted: AtomicU32::new(0),
        }
    }
}

/// The per-segment side of [`CountUpTo`], which counts in
/// [`Collector::collect_segment`] instead.
struct SegmentCount(Total);

impl SegmentCollector for SegmentCount {
    type Fruit = Total;

    fn collect(&mut self, _doc: DocId, _score: Score) {
        self.0.count += 1;
    }

    fn harvest(self) -> Total {
        self.0
    }
}

impl Collector for CountUpTo {
    type Fruit = Total;
    type Child = SegmentCount;

    fn for_segment(&self, _segment: u32, _reader: &SegmentReader) -> tantivy::Result<SegmentCount> {
        Ok(SegmentCount(Total {
            count: 0,
            exact: true,
        }))
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        _segment: u32,
        reader: &SegmentReader,
    ) -> tantivy::Result<Total> {
        let budget = self
            .bound
            .saturating_sub(self.counted.load(Ordering::Relaxed));
        if budget == 0 {
            return Ok(Total {
                count: 0,
                exact: false,
            });
        }
        let mut scorer = weight.scorer(reader, 1.0)?;
        let alive = reader.alive_bitset();
        let mut count = 0;
        let mut exact = true;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                count += 1;
                if count >= budget {
                    exact = false;
                    break;
                }
            }
            doc = scorer.advance();
        }
        self.counted.fetch_add(count, Ordering::Relaxed);
        Ok(Total {
            count: count as usize,
            exact,
        })
    }

    fn merge_fruits(&self, segments: Vec<Total>) -> tantivy::Result<Total> {
        Ok(Total {
            count: segments.iter().map(|t| t.count).sum(),
            exact: segments.iter().all(|t| t.exact),
        })
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
