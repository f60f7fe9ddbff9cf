//! `flumen sql`: read-only SQL, with DataFusion, over the Parquet files that
//! Flumen's sinks write, in a local directory or an object store.
//!
//! Each table is a DataFusion listing table: every `*.parquet` file under
//! its location, with Hive partition columns (`dt=2026-11-26/`) taken from
//! the directory names, so that a filter on them skips whole directories.
//! Files and directories whose name starts with `.`, or with `_` and holds
//! no `=`, are never read: sinks stage files being written there.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::common::{DataFusionError, TableReference};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement as SqlStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use flumen::config::{LoadedPipeline, Registry, Section};
use flumen_core::storage::{StorageOptions, resolve};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use url::Url;

use super::Failure;

/// Where the interactive prompt keeps its history, under the home directory.
const HISTORY_FILE: &str = ".flumen_sql_history";

/// The options of `flumen sql`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// SQL to run: one statement, or several separated by `;`. Without it,
    /// an interactive prompt reads statements ending in `;`.
    query: Option<String>,

    /// A table: `NAME=LOCATION`, where LOCATION is a local directory or
    /// file, or a `file://` or `s3://bucket/prefix/` URL (S3 settings come
    /// from the AWS environment variables). Repeat for more tables.
    #[arg(long = "table", value_name = "NAME=LOCATION")]
    tables: Vec<String>,

    /// A pipeline file: each of its `parquet` sinks becomes a table named
    /// after the sink, at the sink's `path` (with its `storage` settings).
    #[arg(long = "pipeline", value_name = "FILE")]
    pipelines: Vec<PathBuf>,

    /// How results are written. `parquet` needs `--output`.
    #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
    format: SqlFormat,

    /// Write results to this file instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Memory for running queries (e.g. `512MB`, `2GB`; units are powers of
    /// 1024). Sorts and aggregates that need more spill to temporary files;
    /// what cannot spill (the build side of a join) fails, saying so.
    #[arg(long, value_name = "SIZE", default_value = "1GB", value_parser = parse_size)]
    memory_limit: Size,
}

/// Result formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SqlFormat {
    /// A text table (the whole result is held to size the columns).
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per row and line.
    Json,
    /// A Parquet file (needs `--output`).
    Parquet,
}

/// A number of bytes, shown as the user wrote it.
#[derive(Debug, Clone)]
struct Size {
    bytes: usize,
    text: String,
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `512MB`, `1.5GiB`, `64k`, `1000000`: units are powers of 1024.
fn parse_size(text: &str) -> Result<Size, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. `512MB` or `2GB`"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use B, KB, MB, GB or TB"
            ));
        }
    };
    let bytes = number * (1u64 << shift) as f64;
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("`{text}` is not a usable amount of memory"));
    }
    Ok(Size {
        bytes: bytes as usize,
        text: trimmed.to_string(),
    })
}

/// A table to register.
struct TableSpec {
    name: String,
    location: String,
    storage: StorageOptions,
    /// The configuration key it came from, for messages.
    key: String,
    /// From a pipeline's sink: one that wrote nothing yet is skipped.
    from_sink: bool,
}

pub fn run(args: SqlArgs, registry: &Registry) -> Result<(), Failure> {
    if args.format == SqlFormat::Parquet && args.output.is_none() {
        return Err(Failure::Usage(
            "`--format parquet` writes a file: give it with `--output PATH`".into(),
        ));
    }
    if args.query.is_none() && args.output.is_some() {
        return Err(Failure::Usage(
            "`--output` needs a QUERY; the interactive prompt prints to the terminal".into(),
        ));
    }
    let specs = table_specs(&args, registry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let mut session = Session::new(&args.memory_limit)?;
    runtime.block_on(session.register_all(specs))?;
    match &args.query {
        Some(query) => {
            let statements = parse(query).map_err(Failure::Runtime)?;
            if statements.is_empty() {
                return Err(Failure::Usage("QUERY holds no SQL statement".into()));
            }
            if args.format == SqlFormat::Parquet && statements.len() > 1 {
                return Err(Failure::Usage(
                    "`--format parquet` writes the result of one statement; QUERY holds several"
                        .into(),
                ));
            }
            let mut out = Destination::open(args.output.as_ref())?;
            let result = runtime.block_on(async {
                for statement in statements {
                    session.run(statement, args.format, &mut out).await?;
                }
                Ok(())
            });
            out.finish(result.is_ok())?;
            result
        }
        None => interactive(&runtime, &session, args.format),
    }
}

/// The tables named by `--table` and by the pipelines' `parquet` sinks.
fn table_specs(args: &SqlArgs, registry: &Registry) -> Result<Vec<TableSpec>, Failure> {
    let mut specs = Vec::new();
    for table in &args.tables {
        let Some((name, location)) = table.split_once('=') else {
            return Err(Failure::Usage(format!(
                "`--table {table}`: expected NAME=LOCATION, e.g. `--table bids=out/bids/`"
            )));
        };
        let (name, location) = (name.trim(), location.trim());
        if name.is_empty() || location.is_empty() {
            return Err(Failure::Usage(format!(
                "`--table {table}`: expected NAME=LOCATION, e.g. `--table bids=out/bids/`"
            )));
        }
        specs.push(TableSpec {
            name: name.to_string(),
            location: location.to_string(),
            storage: StorageOptions::default(),
            key: format!("--table {name}"),
            from_sink: false,
        });
    }
    for file in &args.pipelines {
        let loaded = LoadedPipeline::load(file, registry)?;
        let mut found = false;
        for component in &loaded.components {
            if component.section != Section::Sinks || component.type_name != "parquet" {
                continue;
            }
            found = true;
            let key = format!("{}.path", component.path());
            let settings = component.settings();
            let location = settings
                .get("path")
                .and_then(|p| p.as_str())
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "{}: `{key}` is not set to a location",
                        file.display()
                    ))
                })?;
            let storage = match settings.get("storage") {
                None => StorageOptions::default(),
                Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                    Failure::Usage(format!(
                        "{}: `{}.storage`: {e}",
                        file.display(),
                        component.path()
                    ))
                })?,
            };
            specs.push(TableSpec {
                name: component.name.clone(),
                location: location.to_string(),
                storage,
                key,
                from_sink: true,
            });
        }
        if !found {
            return Err(Failure::Usage(format!(
                "{} has no `parquet` sinks, so no tables to query",
                file.display()
            )));
        }
    }
    let mut seen = HashMap::new();
    for spec in &specs {
        if let Some(first) = seen.insert(spec.name.as_str(), spec.key.as_str()) {
            return Err(Failure::Usage(format!(
                "two tables are called `{}` (`{first}` and `{}`)",
                spec.name, spec.key
            )));
        }
    }
    Ok(specs)
}

/// A DataFusion session with a memory limit and read-only object stores.
struct Session {
    ctx: SessionContext,
    memory_limit: String,
    /// The object stores registered, by URL (`s3://bucket`, `file://`).
    stores: HashMap<String, RegisteredStore>,
}

/// An object store on the context, and the settings it was built with.
struct RegisteredStore {
    /// The configuration key of the first table in it.
    key: String,
    storage: StorageOptions,
    store: Arc<dyn ObjectStore>,
}

impl Session {
    fn new(memory_limit: &Size) -> Result<Session, Failure> {
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(memory_limit.bytes),
            NonZeroUsize::new(3).expect("3 is not zero"),
        );
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(DiskManagerBuilder::default())
            .build_arc()
            .map_err(|e| Failure::Runtime(format!("cannot set up query execution: {e}")))?;
        // `SET` is refused, so DataFusion's settings come from `DATAFUSION_*`
        // environment variables (`DATAFUSION_EXECUTION_TARGET_PARTITIONS=4`).
        let mut config = SessionConfig::from_env()
            .map_err(|e| Failure::Usage(format!("a DATAFUSION_* variable: {e}")))?
            .with_information_schema(true);
        // Files in subdirectories that are not `key=value` partitions are
        // not part of the table (the default, said out loud).
        config
            .options_mut()
            .execution
            .listing_table_ignore_subdirectory = true;
        Ok(Session {
            ctx: SessionContext::new_with_config_rt(config, runtime),
            memory_limit: memory_limit.to_string(),
            stores: Default::default(),
        })
    }

    async fn register_all(&mut self, specs: Vec<TableSpec>) -> Result<(), Failure> {
        for spec in specs {
            self.register(spec).await?;
        }
        Ok(())
    }

    /// Registers one table: its object store (once per bucket), then a
    /// listing table over its Parquet files with inferred partitions.
    async fn register(&mut self, spec: TableSpec) -> Result<(), Failure> {
        let TableSpec {
            name,
            location,
            storage,
            key,
            from_sink,
        } = spec;
        let resolved =
            resolve(&location, &storage, &key).map_err(|e| Failure::Usage(e.to_string()))?;
        let table_error = |message: String| format!("table `{name}` at `{location}`: {message}");
        let mut url = match Url::parse(&location) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A local path, as `resolve` reads it.
            _ => std::path::absolute(&location)
                .ok()
                .and_then(|path| Url::from_file_path(path).ok())
                .ok_or_else(|| Failure::Usage(table_error("not a usable path".into())))?,
        };
        let store_url = ListingTableUrl::try_new(url.clone(), None)
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?
            .object_store();
        let store = self.store(store_url.as_ref(), &key, &storage, resolved.store)?;

        // A single file is read as it is; anything else is a directory
        // (or prefix) whose files make the table.
        let is_file = !resolved.path.as_ref().is_empty()
            && match store.head(&resolved.path).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => {
                    return Err(Failure::Runtime(table_error(format!(
                        "cannot reach the location: {e}"
                    ))));
                }
            };
        if !is_file && !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let table_url = ListingTableUrl::try_new(url, None)
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?;

        let state = self.ctx.state();
        // In a directory, `*.parquet` files; a file named on its own is read
        // whatever its name.
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(if is_file { "" } else { ".parquet" });
        let partitions = options
            .infer_partitions(&state, &table_url)
            .await
            .map_err(|e| registration_failure(&table_error, e))?;
        // Partition values are strings, as the directory names are.
        let options = options.with_table_partition_cols(
            partitions
                .into_iter()
                .map(|column| (column, DataType::Utf8))
                .collect(),
        );
        let config = ListingTableConfig::new(table_url).with_listing_options(options);
        let config = match config.infer_schema(&state).await {
            Ok(config) => config,
            Err(e) if no_files(&e) => {
                let message = "holds no Parquet files (names starting with `_` or `.` are \
                               skipped: they are staged or in progress)";
                if from_sink {
                    tracing::warn!("{}; no table registered", table_error(message.into()));
                    return Ok(());
                }
                return Err(Failure::Usage(table_error(message.into())));
            }
            Err(e) => return Err(registration_failure(&table_error, e)),
        };
        let table =
            ListingTable::try_new(config).map_err(|e| registration_failure(&table_error, e))?;
        self.ctx
            .register_table(TableReference::bare(name.as_str()), Arc::new(table))
            .map_err(|e| Failure::Usage(table_error(e.to_string())))?;
        Ok(())
    }

    /// The store for `url` (`s3://bucket`, `file://`), registered on the
    /// context on first use. Tables in the same bucket share one store, so
    /// they must agree on its settings.
    fn store(
        &mut self,
        url: &str,
        key: &str,
        storage: &StorageOptions,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<dyn ObjectStore>, Failure> {
        if let Some(registered) = self.stores.get(url) {
            if &registered.storage != storage {
                return Err(Failure::Usage(format!(
                    "`{key}` and `{}` are both in `{url}` but with different storage \
                     settings; flumen sql reaches one store with one set of settings",
                    registered.key
                )));
            }
            return Ok(Arc::clone(&registered.store));
        }
        let parsed = Url::parse(url).map_err(|e| Failure::Usage(format!("`{url}`: {e}")))?;
        let store: Arc<dyn ObjectStore> = Arc::new(VisibleFiles { inner: store });
        self.ctx.register_object_store(&parsed, Arc::clone(&store));
        self.stores.insert(
            url.to_string(),
            RegisteredStore {
                key: key.to_string(),
                storage: storage.clone(),
                store: Arc::clone(&store),
            },
        );
        Ok(store)
    }

    /// Plans and runs one statement, writing its result to `out`; returns
    /// the number of rows.
    async fn run(
        &self,
        statement: DfStatement,
        format: SqlFormat,
        out: &mut Destination,
    ) -> Result<usize, Failure> {
        check_read_only(&statement).map_err(Failure::Runtime)?;
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.query_failure(e))?;
        // What the check above let through cannot write either.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| {
                Failure::Runtime(format!(
                    "flumen sql is read-only: the statement would write ({})",
                    e.strip_backtrace()
                ))
            })?;
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| self.query_failure(e))?;
        self.write(frame, format, out).await
    }

    async fn write(
        &self,
        frame: DataFrame,
        format: SqlFormat,
        out: &mut Destination,
    ) -> Result<usize, Failure> {
        let schema = Arc::new(frame.schema().as_arrow().clone());
        if format == SqlFormat::Table {
            let batches = frame.collect().await.map_err(|e| self.query_failure(e))?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            out.write_all(format!("{table}\n").as_bytes())?;
            return Ok(rows);
        }
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| self.query_failure(e))?;
        let mut rows = 0;
        match format {
            SqlFormat::Parquet => {
                let mut writer = ArrowWriter::try_new(out.file()?, schema, None)
                    .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| self.query_failure(e))?;
                    rows += batch.num_rows();
                    writer
                        .write(&batch)
                        .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
                }
                writer
                    .close()
                    .map_err(|e| Failure::Runtime(format!("cannot write Parquet: {e}")))?;
            }
            SqlFormat::Csv | SqlFormat::Json => {
                let mut header = true;
                let mut buffer = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| self.query_failure(e))?;
                    rows += batch.num_rows();
                    buffer.clear();
                    let encoded = if format == SqlFormat::Csv {
                        let mut writer = arrow::csv::WriterBuilder::new()
                            .with_header(header)
                            .build(&mut buffer);
                        header = false;
                        writer.write(&batch)
                    } else {
                        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                        writer.write(&batch).and_then(|()| writer.finish())
                    };
                    encoded.map_err(|e| Failure::Runtime(format!("cannot encode rows: {e}")))?;
                    out.write_all(&buffer)?;
                    if out.closed {
                        break;
                    }
                }
                // A header even when no row came.
                if header && format == SqlFormat::Csv {
                    let empty = arrow::record_batch::RecordBatch::new_empty(schema);
                    buffer.clear();
                    arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(&mut buffer)
                        .write(&empty)
                        .map_err(|e| Failure::Runtime(format!("cannot encode rows: {e}")))?;
                    out.write_all(&buffer)?;
                }
            }
            SqlFormat::Table => unreachable!("handled above"),
        }
        Ok(rows)
    }

    /// A failed query, with advice when it ran out of memory.
    fn query_failure(&self, error: DataFusionError) -> Failure {
        let message = error.strip_backtrace();
        let exhausted = matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
            || message.contains("Resources exhausted");
        if exhausted {
            Failure::Runtime(format!(
                "the query needs more memory than `--memory-limit {}` allows, even spilling \
                 to disk: {message}\n  = help: raise `--memory-limit`, or make the query \
                 lighter (filter on partition columns, select fewer columns, LIMIT)",
                self.memory_limit
            ))
        } else {
            Failure::Runtime(message)
        }
    }
}

/// A registration failure: bad data or configuration is the user's to fix
/// (exit 2); an unreachable store is a failure while running (exit 1).
fn registration_failure(table_error: &dyn Fn(String) -> String, error: DataFusionError) -> Failure {
    let message = table_error(error.strip_backtrace());
    match error.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => Failure::Runtime(message),
        _ => Failure::Usage(message),
    }
}

/// Whether DataFusion found no files to infer a schema from.
fn no_files(error: &DataFusionError) -> bool {
    error.strip_backtrace().contains("No files found")
}

/// Splits SQL text into statements.
fn parse(sql: &str) -> Result<Vec<DfStatement>, String> {
    let dialect = GenericDialect {};
    DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map(Vec::from)
        .map_err(|e| e.strip_backtrace())
}

/// Lets through what only reads: queries, `EXPLAIN` of them, `DESCRIBE`
/// and `SHOW`. Anything else is refused, named by its class.
fn check_read_only(statement: &DfStatement) -> Result<(), String> {
    let allowed = match statement {
        DfStatement::Statement(inner) => match inner.as_ref() {
            SqlStatement::Explain { statement, .. } => {
                return check_read_only(&DfStatement::Statement(statement.clone()));
            }
            // `SELECT ... INTO t` creates a table.
            SqlStatement::Query(query) => {
                if let SetExpr::Select(select) = query.body.as_ref()
                    && select.into.is_some()
                {
                    return Err(
                        "flumen sql is read-only: SELECT INTO is not allowed (it creates a table)"
                            .into(),
                    );
                }
                true
            }
            SqlStatement::ExplainTable { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowStatus { .. }
            | SqlStatement::ShowVariables { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowCatalogs { .. }
            | SqlStatement::ShowDatabases { .. }
            | SqlStatement::ShowSchemas { .. }
            | SqlStatement::ShowObjects { .. }
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowViews { .. }
            | SqlStatement::ShowCollation { .. }
            | SqlStatement::ShowCharset { .. } => true,
            _ => false,
        },
        DfStatement::Explain(explain) => return check_read_only(&explain.statement),
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => {
            false
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "flumen sql is read-only: {} is not allowed",
            statement_class(&statement.to_string())
        ))
    }
}

/// `CREATE TABLE`, `INSERT`, `COPY`, `SET`...: the leading keywords of a
/// statement as its parser prints it.
fn statement_class(text: &str) -> String {
    const OBJECTS: &[&str] = &[
        "TABLE",
        "VIEW",
        "SCHEMA",
        "DATABASE",
        "CATALOG",
        "FUNCTION",
        "INDEX",
        "SEQUENCE",
        "TYPE",
        "ROLE",
        "USER",
        "MACRO",
        "PROCEDURE",
        "TRIGGER",
        "EXTENSION",
        "SECRET",
        "STAGE",
        "DOMAIN",
        "POLICY",
    ];
    const MODIFIERS: &[&str] = &["OR", "REPLACE", "IF", "NOT", "EXISTS"];
    let words: Vec<String> = text
        .split_whitespace()
        .take(8)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let Some(first) = words.first() else {
        return "this statement".into();
    };
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => {
            let mut class = vec![first.as_str()];
            for word in &words[1..] {
                if MODIFIERS.contains(&word.as_str()) {
                    continue;
                }
                if !word.chars().all(|c| c.is_ascii_alphabetic()) || class.len() == 4 {
                    break;
                }
                class.push(word);
                if OBJECTS.contains(&word.as_str()) {
                    return class.join(" ");
                }
            }
            class.truncate(2);
            class.join(" ")
        }
        "START" => "START TRANSACTION".into(),
        _ => first.clone(),
    }
}

/// Standard output or a file, for results.
struct Destination {
    /// The output file; none for standard output.
    file: Option<OutputFile>,
    stdout: std::io::BufWriter<std::io::Stdout>,
    /// Standard output was closed by its reader (`| head`): write no more.
    closed: bool,
}

/// A file written beside its final path and renamed into place once the
/// query succeeded, so that a failed query neither leaves half a file nor
/// destroys the one that was there.
struct OutputFile {
    file: std::fs::File,
    staged: PathBuf,
    path: PathBuf,
}

impl Destination {
    fn open(path: Option<&PathBuf>) -> Result<Destination, Failure> {
        let file = match path {
            None => None,
            Some(path) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .ok_or_else(|| {
                        Failure::Usage(format!("`--output {}` is not a file", path.display()))
                    })?;
                let staged = path.with_file_name(format!(".{name}.inprogress"));
                let file = std::fs::File::create(&staged).map_err(|e| {
                    Failure::Usage(format!("cannot write `{}`: {e}", path.display()))
                })?;
                Some(OutputFile {
                    file,
                    staged,
                    path: path.clone(),
                })
            }
        };
        Ok(Destination {
            file,
            stdout: std::io::BufWriter::new(std::io::stdout()),
            closed: false,
        })
    }

    fn stdout() -> Destination {
        Destination {
            file: None,
            stdout: std::io::BufWriter::new(std::io::stdout()),
            closed: false,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        match &mut self.file {
            Some(out) => out.file.write_all(bytes).map_err(|e| {
                Failure::Runtime(format!("cannot write `{}`: {e}", out.path.display()))
            }),
            None if self.closed => Ok(()),
            None => match self.stdout.write_all(bytes) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    self.closed = true;
                    Ok(())
                }
                Err(e) => Err(Failure::Runtime(format!("cannot write the result: {e}"))),
                Ok(()) => Ok(()),
            },
        }
    }

    /// The output file, for writers that need one of their own.
    fn file(&mut self) -> Result<&mut std::fs::File, Failure> {
        match &mut self.file {
            Some(out) => Ok(&mut out.file),
            None => Err(Failure::Usage(
                "`--format parquet` writes a file: give it with `--output PATH`".into(),
            )),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        if self.file.is_none() && !self.closed {
            match self.stdout.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.closed = true,
                Err(e) => return Err(Failure::Runtime(format!("cannot write the result: {e}"))),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Flushes, and puts the file in place if the query succeeded.
    fn finish(mut self, succeeded: bool) -> Result<(), Failure> {
        let Some(OutputFile { file, staged, path }) = self.file.take() else {
            return self.flush();
        };
        let synced = file.sync_all();
        drop(file);
        if !succeeded {
            let _ = std::fs::remove_file(&staged);
            return Ok(());
        }
        synced
            .and_then(|()| std::fs::rename(&staged, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&staged);
                Failure::Runtime(format!("cannot write `{}`: {e}", path.display()))
            })
    }
}

/// Reads statements ending in `;` and runs them, until end of input
/// (Ctrl-D). A failed statement is reported and the next one is read. On
/// a terminal, lines are edited and kept in `~/.flumen_sql_history`;
/// otherwise (piped input) the exit code is 1 if any statement failed.
fn interactive(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    format: SqlFormat,
) -> Result<(), Failure> {
    let terminal = std::io::stdin().is_terminal();
    let mut lines: Box<dyn LineSource> = if terminal {
        Box::new(Prompt::new()?)
    } else {
        Box::new(std::io::stdin().lock())
    };
    if terminal {
        eprintln!(
            "flumen sql: statements end with `;`; `SHOW TABLES;` lists the tables; Ctrl-D exits"
        );
    }
    let mut failed = 0usize;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "flumen> "
        } else {
            "     -> "
        };
        let line = match lines.read(prompt)? {
            Line::Text(line) => line,
            Line::Interrupted => {
                buffer.clear();
                continue;
            }
            Line::End => break,
        };
        if buffer.trim().is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if buffer.trim_end().ends_with(';') {
            lines.remember(buffer.trim());
            if !run_interactively(runtime, session, &buffer, format, terminal) {
                failed += 1;
            }
            buffer.clear();
        }
    }
    // Piped input may end without a final `;`.
    if !terminal
        && !buffer.trim().is_empty()
        && !run_interactively(runtime, session, &buffer, format, terminal)
    {
        failed += 1;
    }
    lines.save();
    if failed > 0 && !terminal {
        return Err(Failure::Runtime(format!(
            "{failed} statement{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Runs the statements in `sql`, printing results and errors; returns
/// whether all succeeded.
fn run_interactively(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    sql: &str,
    format: SqlFormat,
    terminal: bool,
) -> bool {
    let statements = match parse(sql) {
        Ok(statements) => statements,
        Err(message) => {
            eprintln!("error: {message}");
            return false;
        }
    };
    let mut out = Destination::stdout();
    for statement in statements {
        let started = Instant::now();
        let run = session.run(statement, format, &mut out);
        let result = runtime.block_on(async {
            if terminal {
                // Ctrl-C cancels the query, not the session.
                tokio::select! {
                    result = run => result,
                    _ = tokio::signal::ctrl_c() => Err(Failure::Runtime("cancelled (Ctrl-C)".into())),
                }
            } else {
                run.await
            }
        });
        let flushed = out.flush();
        match result.and_then(|rows| flushed.map(|()| rows)) {
            Ok(rows) => {
                if terminal {
                    let s = if rows == 1 { "" } else { "s" };
                    eprintln!("{rows} row{s} in {:.3}s", started.elapsed().as_secs_f64());
                }
            }
            Err(Failure::Usage(message) | Failure::Runtime(message)) => {
                eprintln!("error: {message}");
                return false;
            }
        }
    }
    true
}

/// What a line source gives.
enum Line {
    Text(String),
    /// Ctrl-C at the prompt: drop the statement being typed.
    Interrupted,
    End,
}

/// Lines of SQL, from a terminal or a pipe.
trait LineSource {
    fn read(&mut self, prompt: &str) -> Result<Line, Failure>;
    fn remember(&mut self, _statement: &str) {}
    fn save(&mut self) {}
}

impl LineSource for std::io::StdinLock<'static> {
    fn read(&mut self, _prompt: &str) -> Result<Line, Failure> {
        let mut line = String::new();
        match self.read_line(&mut line) {
            Ok(0) => Ok(Line::End),
            Ok(_) => Ok(Line::Text(line.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(Failure::Runtime(format!("cannot read standard input: {e}"))),
        }
    }
}

/// A line editor with history.
struct Prompt {
    editor: rustyline::DefaultEditor,
    history: Option<PathBuf>,
}

impl Prompt {
    fn new() -> Result<Prompt, Failure> {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| Failure::Runtime(format!("cannot start the prompt: {e}")))?;
        let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
        if let Some(path) = &history {
            // No history yet is fine.
            let _ = editor.load_history(path);
        }
        Ok(Prompt { editor, history })
    }
}

impl LineSource for Prompt {
    fn read(&mut self, prompt: &str) -> Result<Line, Failure> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => Ok(Line::Text(line)),
            Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(ReadlineError::Eof) => Ok(Line::End),
            Err(e) => Err(Failure::Runtime(format!("cannot read the prompt: {e}"))),
        }
    }

    fn remember(&mut self, statement: &str) {
        let _ = self.editor.add_history_entry(statement);
    }

    fn save(&mut self) {
        if let Some(path) = &self.history
            && let Err(e) = self.editor.save_history(path)
        {
            tracing::warn!("cannot save the history to `{}`: {e}", path.display());
        }
    }
}

/// The files a table may read: a read-only view of a store whose listings
/// leave out every name below the listed prefix that starts with `.`, or
/// with `_` and holds no `=` (Spark's and Hive's rule for hidden files:
/// sinks stage files being written under such names). Objects asked for by
/// name are served as they are.
#[derive(Debug)]
struct VisibleFiles {
    inner: Arc<dyn ObjectStore>,
}

impl fmt::Display for VisibleFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VisibleFiles({})", self.inner)
    }
}

fn hidden(name: &str) -> bool {
    name.starts_with('.') || (name.starts_with('_') && !name.contains('='))
}

/// Whether `location`, listed under `prefix`, is visible.
fn visible(prefix: Option<&Path>, location: &Path) -> bool {
    let below: Vec<_> = match prefix {
        Some(prefix) => match location.prefix_match(prefix) {
            Some(parts) => parts.collect(),
            None => return true,
        },
        None => location.parts().collect(),
    };
    !below.iter().any(|part| hidden(part.as_ref()))
}

fn read_only<T>() -> object_store::Result<T> {
    Err(object_store::Error::NotSupported {
        source: "flumen sql only reads".into(),
    })
}

#[async_trait]
impl ObjectStore for VisibleFiles {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        read_only()
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        read_only()
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| read_only()).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let owned = prefix.cloned();
        self.inner
            .list(prefix)
            .try_filter(move |meta| futures::future::ready(visible(owned.as_ref(), &meta.location)))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let owned = prefix.cloned();
        self.inner
            .list_with_offset(prefix, offset)
            .try_filter(move |meta| futures::future::ready(visible(owned.as_ref(), &meta.location)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result
            .common_prefixes
            .retain(|p| p.filename().is_none_or(|name| !hidden(name)));
        result
            .objects
            .retain(|o| o.location.filename().is_none_or(|name| !hidden(name)));
        Ok(result)
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        read_only()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("512MB").unwrap().bytes, 512 << 20);
        assert_eq!(parse_size("1gb").unwrap().bytes, 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap().bytes, 3 << 29);
        assert_eq!(parse_size("64k").unwrap().bytes, 64 << 10);
        assert_eq!(parse_size("1000").unwrap().bytes, 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn hidden_names_follow_the_hive_rule() {
        assert!(hidden(".part-0.inprogress"));
        assert!(hidden("_staging"));
        assert!(!hidden("_source=app"));
        assert!(!hidden("dt=2026-11-26"));
        let prefix = Path::from("data/_tables/bids");
        assert!(visible(
            Some(&prefix),
            &Path::from("data/_tables/bids/dt=1/part-0.parquet")
        ));
        assert!(!visible(
            Some(&prefix),
            &Path::from("data/_tables/bids/_staging/part-0.parquet")
        ));
        assert!(!visible(
            Some(&prefix),
            &Path::from("data/_tables/bids/dt=1/.part-0.parquet")
        ));
    }

    #[test]
    fn statement_classes_name_what_was_refused() {
        let class = |sql: &str| {
            let statement = parse(sql).unwrap().remove(0);
            check_read_only(&statement).unwrap_err()
        };
        for (sql, expected) in [
            ("CREATE TABLE x AS SELECT 1", "CREATE TABLE"),
            ("create or replace view v as select 1", "CREATE VIEW"),
            (
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'",
                "CREATE EXTERNAL TABLE",
            ),
            ("DROP TABLE IF EXISTS t", "DROP TABLE"),
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("COPY t TO '/tmp/x.parquet'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "INSERT"),
            ("DELETE FROM t", "DELETE"),
        ] {
            assert_eq!(
                class(sql),
                format!("flumen sql is read-only: {expected} is not allowed"),
                "{sql}"
            );
        }
        for sql in [
            "SELECT 1",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE t",
            "WITH a AS (SELECT 1) SELECT * FROM a",
        ] {
            check_read_only(&parse(sql).unwrap().remove(0)).unwrap();
        }
    }
}
