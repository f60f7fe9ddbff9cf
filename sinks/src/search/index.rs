//! The Tantivy side: which field each column becomes, and the index a
//! sink writes, with its staged checkpoints.
//!
//! A checkpoint's rows are staged as an Arrow IPC file in a directory
//! beside the index (`PATH.staged/N.arrow`, synced), since Tantivy keeps a
//! prepared commit only in the process that prepared it. The commit
//! applies them in one Tantivy commit with the payload `flumen:N`, the
//! checkpoint whose rows the index holds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use tantivy::indexer::IndexWriterOptions;
use tantivy::schema::{
    DateOptions, Field, INDEXED, IndexRecordOption, NumericOptions, STORED, STRING, Schema,
    TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{LowerCaser, NgramTokenizer, TextAnalyzer};
use tantivy::{Index, IndexWriter, TantivyDocument, Term};

use flumen_core::changelog::{self, Op};
use flumen_core::event_time::to_millis;
use flumen_core::prelude::*;
use flumen_core::schema::column_index;

use super::config::{FieldConfig, FieldType, SearchSinkConfig, Tokenizer};

/// The field that holds a document's id.
pub(crate) const ID: &str = "_id";

fn index_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::connector(
        "search",
        false,
        format!("search index {}: {error}", path.display()),
    )
}

/// Where each indexed column goes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) schema: Schema,
    /// Column, field, type.
    fields: Vec<(usize, Field, FieldType)>,
    /// The id column and its field.
    id: Option<(usize, Field)>,
}

impl Layout {
    /// The fields of `config` over `input`, each checked against its
    /// column's type.
    pub(crate) fn of(config: &SearchSinkConfig, input: &SchemaRef) -> Result<Layout> {
        let wanted: IndexMap<String, FieldConfig> = match &config.fields {
            Some(fields) => fields.clone(),
            None => input
                .fields()
                .iter()
                .filter(|f| f.name() != changelog::OP)
                .filter_map(|f| {
                    let kind = default_type(f.data_type())?;
                    Some((
                        f.name().clone(),
                        FieldConfig {
                            kind,
                            tokenizer: Tokenizer::Default,
                            stored: true,
                        },
                    ))
                })
                .collect(),
        };
        let mut builder = Schema::builder();
        let mut fields = Vec::new();
        for (name, field) in &wanted {
            let key = format!("fields.{name}");
            let column = column_index(input, &key, name)?;
            let data_type = input.field(column).data_type();
            if !fits(field.kind, data_type) {
                return Err(Error::config(
                    key,
                    format!(
                        "column `{name}` is {data_type}; a {} field needs {}",
                        kind_name(field.kind),
                        wanted_types(field.kind)
                    ),
                ));
            }
            let stored = field.stored;
            let tantivy_field = match field.kind {
                FieldType::Text => {
                    let options = TextOptions::default().set_indexing_options(
                        TextFieldIndexing::default()
                            .set_tokenizer(field.tokenizer.name())
                            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
                    );
                    let options = if stored {
                        options.set_stored()
                    } else {
                        options
                    };
                    builder.add_text_field(name, options)
                }
                FieldType::Keyword => {
                    let options = if stored { STRING | STORED } else { STRING };
                    builder.add_text_field(name, options)
                }
                FieldType::Number => {
                    let options = NumericOptions::from(INDEXED).set_fast();
                    let options = if stored {
                        options.set_stored()
                    } else {
                        options
                    };
                    if is_float(data_type) {
                        builder.add_f64_field(name, options)
                    } else {
                        builder.add_i64_field(name, options)
                    }
                }
                FieldType::Date => {
                    let options = DateOptions::from(INDEXED).set_fast();
                    let options = if stored {
                        options.set_stored()
                    } else {
                        options
                    };
                    builder.add_date_field(name, options)
                }
            };
            fields.push((column, tantivy_field, field.kind));
        }
        let id = match &config.id {
            Some(name) => Some((
                column_index(input, "id", name)?,
                builder.add_text_field(ID, STRING | STORED),
            )),
            None => None,
        };
        Ok(Layout {
            schema: builder.build(),
            fields,
            id,
        })
    }

    /// The columns that become fields, in order.
    pub(crate) fn columns(&self) -> Vec<usize> {
        self.fields.iter().map(|&(column, ..)| column).collect()
    }

    /// The id column, if documents have ids.
    pub(crate) fn id_column(&self) -> Option<usize> {
        self.id.map(|(column, _)| column)
    }
}

fn default_type(data_type: &DataType) -> Option<FieldType> {
    [FieldType::Text, FieldType::Number, FieldType::Date]
        .into_iter()
        .find(|kind| fits(*kind, data_type))
}

fn fits(kind: FieldType, data_type: &DataType) -> bool {
    match kind {
        FieldType::Text | FieldType::Keyword => matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        FieldType::Number => data_type.is_integer() || is_float(data_type),
        FieldType::Date => matches!(data_type, DataType::Timestamp(..)),
    }
}

fn is_float(data_type: &DataType) -> bool {
    data_type.is_floating() || matches!(data_type, DataType::Decimal128(..))
}

fn kind_name(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Text => "text",
        FieldType::Keyword => "keyword",
        FieldType::Number => "number",
        FieldType::Date => "date",
    }
}

fn wanted_types(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Text | FieldType::Keyword => "a string column",
        FieldType::Number => "an integer or float column",
        FieldType::Date => "a timestamp column",
    }
}

/// Registers the tokenizers Tantivy does not know by itself; needed at
/// every open.
pub(crate) fn register_tokenizers(index: &Index) -> tantivy::Result<()> {
    index.tokenizers().register(
        "ngram",
        TextAnalyzer::builder(NgramTokenizer::new(2, 3, false)?)
            .filter(LowerCaser)
            .build(),
    );
    Ok(())
}

/// An index a sink writes.
pub(crate) struct SearchIndex {
    path: PathBuf,
    staged: PathBuf,
    layout: Layout,
    index: Index,
    writer: Mutex<IndexWriter>,
}

impl SearchIndex {
    /// Opens the index at `path` with `layout`'s fields, creating it if
    /// missing.
    pub(crate) fn open(path: &Path, layout: Layout) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| index_error(path, e))?;
        let directory =
            tantivy::directory::MmapDirectory::open(path).map_err(|e| index_error(path, e))?;
        let index = Index::open_or_create(directory, layout.schema.clone()).map_err(|e| {
            index_error(
                path,
                format!("{e} (an index made with other fields is there: delete it, or give another `path`)"),
            )
        })?;
        register_tokenizers(&index).map_err(|e| index_error(path, e))?;
        let writer = index
            .writer_with_options(
                IndexWriterOptions::builder()
                    .num_worker_threads(1)
                    .num_merge_threads(1)
                    .memory_budget_per_thread(64 << 20)
                    .build(),
            )
            .map_err(|e| index_error(path, e))?;
        let mut staged = path.as_os_str().to_owned();
        staged.push(".staged");
        let staged = PathBuf::from(staged);
        std::fs::create_dir_all(&staged).map_err(|e| index_error(&staged, e))?;
        Ok(SearchIndex {
            path: path.to_path_buf(),
            staged,
            layout,
            index,
            writer: Mutex::new(writer),
        })
    }

    fn staged_file(&self, checkpoint: u64) -> PathBuf {
        self.staged.join(format!("{checkpoint}.arrow"))
    }

    /// Keeps `batches` as checkpoint `checkpoint`'s rows, durably.
    pub(crate) fn stage(&self, checkpoint: u64, batches: &[RecordBatch]) -> Result<()> {
        let file = self.staged_file(checkpoint);
        let partial = file.with_extension("partial");
        let failed = |e: &dyn std::fmt::Display| index_error(&file, e);
        {
            let out = std::fs::File::create(&partial).map_err(|e| failed(&e))?;
            let schema = match batches.first() {
                Some(batch) => batch.schema(),
                None => std::sync::Arc::new(arrow::datatypes::Schema::empty()),
            };
            let mut writer = arrow::ipc::writer::FileWriter::try_new(&out, &schema)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            out.sync_all().map_err(|e| failed(&e))?;
        }
        std::fs::rename(&partial, &file).map_err(|e| failed(&e))?;
        std::fs::File::open(&self.staged)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| failed(&e))
    }

    /// The checkpoint whose rows the index holds, from its last commit.
    fn applied(&self) -> Result<u64> {
        let metas = self
            .index
            .load_metas()
            .map_err(|e| index_error(&self.path, e))?;
        Ok(metas
            .payload
            .as_deref()
            .and_then(|p| p.strip_prefix("flumen:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Applies checkpoint `checkpoint`'s staged rows, unless the index
    /// holds them already, in one commit.
    pub(crate) fn apply(&self, checkpoint: u64) -> Result<()> {
        let file = self.staged_file(checkpoint);
        if self.applied()? >= checkpoint || !file.exists() {
            let _ = std::fs::remove_file(&file);
            return Ok(());
        }
        let reader = arrow::ipc::reader::FileReader::try_new(
            std::fs::File::open(&file).map_err(|e| index_error(&file, e))?,
            None,
        )?;
        let mut writer = self.writer.lock().expect("index writer");
        for batch in reader {
            self.write_rows(&writer, &batch?)?;
        }
        let mut commit = writer
            .prepare_commit()
            .map_err(|e| index_error(&self.path, e))?;
        commit.set_payload(&format!("flumen:{checkpoint}"));
        commit.commit().map_err(|e| index_error(&self.path, e))?;
        drop(writer);
        std::fs::remove_file(&file).map_err(|e| index_error(&file, e))
    }

    /// Writes `batch` (a run without checkpoints), and commits what is
    /// written if `commit`.
    pub(crate) fn write_now(&self, batch: &RecordBatch, commit: bool) -> Result<()> {
        let mut writer = self.writer.lock().expect("index writer");
        self.write_rows(&writer, batch)?;
        if commit {
            writer.commit().map_err(|e| index_error(&self.path, e))?;
        }
        Ok(())
    }

    /// After a restart from checkpoint `from` (or a fresh start): applies
    /// `from`'s rows if they are staged and not applied, and drops every
    /// other staged checkpoint. A fresh start's checkpoints count from 1
    /// again: the index forgets which one it holds.
    pub(crate) fn recover(&self, from: Option<u64>) -> Result<()> {
        if let Some(checkpoint) = from {
            self.apply(checkpoint)?;
        } else {
            let mut writer = self.writer.lock().expect("index writer");
            let mut commit = writer
                .prepare_commit()
                .map_err(|e| index_error(&self.path, e))?;
            commit.set_payload("flumen:0");
            commit.commit().map_err(|e| index_error(&self.path, e))?;
        }
        let entries = std::fs::read_dir(&self.staged).map_err(|e| index_error(&self.staged, e))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(())
    }

    /// Adds (or, by id, replaces or deletes) the documents of `batch`.
    fn write_rows(&self, writer: &IndexWriter, batch: &RecordBatch) -> Result<()> {
        let ops = changelog::ops(batch)?;
        let ids = match self.layout.id {
            Some((column, field)) => Some((
                arrow::compute::cast(batch.column(column), &DataType::Utf8)?,
                field,
            )),
            None => None,
        };
        let columns = self
            .layout
            .fields
            .iter()
            .map(|&(column, field, kind)| {
                let array = batch.column(column);
                let array = match kind {
                    FieldType::Text | FieldType::Keyword => {
                        arrow::compute::cast(array, &DataType::Utf8)?
                    }
                    FieldType::Number if is_float(array.data_type()) => {
                        arrow::compute::cast(array, &DataType::Float64)?
                    }
                    FieldType::Number => arrow::compute::cast(array, &DataType::Int64)?,
                    FieldType::Date => std::sync::Arc::new(to_millis(array)?),
                };
                Ok((array, field, kind))
            })
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            if let Some((ids, field)) = &ids {
                let ids = ids.as_string::<i32>();
                if ids.is_valid(row) {
                    writer.delete_term(Term::from_field_text(*field, ids.value(row)));
                }
            }
            if ops.as_ref().is_some_and(|ops| ops[row] == Op::Delete) {
                continue;
            }
            let mut document = TantivyDocument::new();
            if let Some((ids, field)) = &ids {
                let ids = ids.as_string::<i32>();
                if ids.is_valid(row) {
                    document.add_text(*field, ids.value(row));
                }
            }
            for (array, field, kind) in &columns {
                if array.is_null(row) {
                    continue;
                }
                match kind {
                    FieldType::Text | FieldType::Keyword => {
                        document.add_text(*field, array.as_string::<i32>().value(row));
                    }
                    FieldType::Number if array.data_type() == &DataType::Float64 => {
                        document.add_f64(*field, array.as_primitive::<Float64Type>().value(row));
                    }
                    FieldType::Number | FieldType::Date => {
                        let value = array.as_primitive::<Int64Type>().value(row);
                        if *kind == FieldType::Date {
                            document
                                .add_date(*field, tantivy::DateTime::from_timestamp_millis(value));
                        } else {
                            document.add_i64(*field, value);
                        }
                    }
                }
            }
            writer
                .add_document(document)
                .map_err(|e| index_error(&self.path, e))?;
        }
        Ok(())
    }
}
