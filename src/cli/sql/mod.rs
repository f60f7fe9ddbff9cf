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

mod prompt;
mod read_only;
mod session;
mod visible;

use self::prompt::*;
use self::read_only::*;
use self::session::*;
use self::visible::*;

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
