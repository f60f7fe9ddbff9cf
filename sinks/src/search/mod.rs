//! The search-index sink: keeps its input searchable in an embedded
//! Tantivy index, which `flumen search` queries beside the running
//! pipeline, or in an Elasticsearch or OpenSearch index
//! ([`elasticsearch`]).
//!
//! Columns become fields as `fields` says ([`config`]): analysed text,
//! exact keywords, numbers and dates (fast fields, for ranges). With an
//! `id` column a row replaces the document of its id, and a changelog's
//! delete removes it.
//!
//! Exactly once: Tantivy's prepared commits live only in the process
//! that made them, so a checkpoint's rows are staged in a file beside the
//! index at the barrier ([`index`]), and applied at the commit in one
//! Tantivy commit whose payload names the checkpoint (`flumen:N`). After
//! a crash, the payload tells whether the staged rows were applied.
//! Readers see committed checkpoints only.

mod config;
pub mod elasticsearch;
mod index;
mod read;
mod sink;

pub use self::config::{FieldConfig, FieldType, SearchSinkConfig, Tokenizer};
pub use self::read::{COUNT_UP_TO, Hit, SearchReader, Total};
pub use self::sink::SearchSink;
