//! `flumen search INDEX QUERY`: queries what a search sink keeps, beside
//! the pipeline that writes it. Queries see committed checkpoints only.

use std::path::PathBuf;

use flumen_sinks::search::SearchReader;

use super::Failure;

/// What to look for.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// The index (a `search` sink's `path`).
    index: PathBuf,
    /// The query, in Tantivy's language: words (`roast`), phrases
    /// (`"flat white"`), `AND`/`OR`/`NOT`, fields (`user:mara`), ranges
    /// (`likes:[10 TO 100]`).
    query: String,
    /// At most this many hits.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Skip this many of the best hits first.
    #[arg(long, default_value_t = 0)]
    offset: usize,
}

/// Prints the hits, best first, one JSON object a line (`score` and the
/// stored `document`), and how many match on standard error.
pub fn run(args: SearchArgs) -> Result<(), Failure> {
    let reader = SearchReader::open(&args.index).map_err(|e| Failure::Usage(e.to_string()))?;
    let (total, hits) = reader
        .search(&args.query, args.limit, args.offset)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    for hit in &hits {
        // Four decimals are all a score's f32 carries meaningfully.
        let score = (f64::from(hit.score) * 1e4).round() / 1e4;
        let mut line = serde_json::json!({ "score": score, "document": hit.document });
        if !hit.snippets.is_empty() {
            line["snippets"] = serde_json::json!(hit.snippets);
        }
        println!("{line}");
    }
    eprintln!("{total} hits");
    Ok(())
}
