//! `flumen search INDEX QUERY`: queries what a search sink indexes,
//! beside the pipeline that writes it. Queries see committed checkpoints
//! only.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use flumen_sinks::search::{Hit, SearchReader};

use super::Failure;

/// What to look for.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// The index (a `search` sink's `path`).
    index: PathBuf,
    /// The query, in Tantivy's language: words (`roast`), phrases
    /// (`"flat white"`), `AND`/`OR`/`NOT`, fields (`user:mara`), ranges
    /// (`likes:[10 TO 100]`), fuzzy words (`latte~1`: one edit away).
    query: String,
    /// At most this many hits.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Skip this many of the best hits first.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Show only these stored fields, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
    /// `json`: one object a line, with the score, the document and its
    /// highlighted snippets; `table`: a table of scores and fields.
    #[arg(long, value_enum, default_value_t = HitFormat::Json)]
    format: HitFormat,
}

/// How hits are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HitFormat {
    Json,
    Table,
}

/// Prints the hits, best first, and how many match on standard error.
pub fn run(args: SearchArgs) -> Result<(), Failure> {
    let reader = SearchReader::open(&args.index).map_err(|e| Failure::Usage(e.to_string()))?;
    let (total, mut hits) = reader
        .search(&args.query, args.limit, args.offset)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // One query from a terminal can afford every match counted.
    let total = match total.exact {
        true => total.count,
        false => reader
            .count(&args.query)
            .map_err(|e| Failure::Usage(e.to_string()))?,
    };
    if let Some(fields) = &args.fields {
        for hit in &mut hits {
            if let serde_json::Value::Object(document) = &mut hit.document {
                document.retain(|name, _| fields.contains(name));
            }
            hit.snippets.retain(|name, _| fields.contains(name));
        }
    }
    match args.format {
        HitFormat::Json => {
            for hit in &hits {
                let mut line =
                    serde_json::json!({ "score": rounded(hit.score), "document": hit.document });
                if !hit.snippets.is_empty() {
                    line["snippets"] = serde_json::json!(hit.snippets);
                }
                println!("{line}");
            }
        }
        HitFormat::Table if hits.is_empty() => {}
        HitFormat::Table => {
            let table = arrow::util::pretty::pretty_format_batches(&[as_table(
                &hits,
                args.fields.as_deref(),
            )])
            .map_err(|e| Failure::Usage(e.to_string()))?;
            println!("{table}");
        }
    }
    eprintln!("{total} hits");
    Ok(())
}

/// Four decimals are all a score's f32 carries meaningfully.
fn rounded(score: f32) -> f64 {
    (f64::from(score) * 1e4).round() / 1e4
}

/// The hits as rows of text: the score, then each field, in the order
/// `--fields` gives or the order they first appear.
fn as_table(hits: &[Hit], fields: Option<&[String]>) -> RecordBatch {
    let names: Vec<String> = match fields {
        Some(fields) => fields.to_vec(),
        None => {
            let mut names: Vec<String> = Vec::new();
            for hit in hits {
                if let serde_json::Value::Object(document) = &hit.document {
                    for name in document.keys() {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                }
            }
            names
        }
    };
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        hits.iter().map(|hit| rounded(hit.score).to_string()),
    ))];
    for name in &names {
        columns.push(Arc::new(StringArray::from_iter(hits.iter().map(|hit| {
            hit.document.get(name).map(|value| match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            })
        }))));
    }
    let schema = Schema::new(
        std::iter::once("score")
            .chain(names.iter().map(String::as_str))
            .map(|name| Field::new(name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns).expect("one text column per field")
}
