//! The command line: `flumen run | validate | graph | config | checkpoints |
//! buffer | sql | completions`.
//!
//! Exit codes: 0 success, 1 the pipeline failed while running (or a
//! `flumen sql` query failed), 2 the command or the pipeline file is wrong.

mod buffer;
mod checkpoints;
mod graph;
#[cfg(feature = "kv")]
mod kv;
mod logging;
mod metrics;
mod progress;
mod run;
mod savepoint;
#[cfg(feature = "search")]
mod search;
mod sql;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flumen::config::{ConfigError, LoadedPipeline, Registry, pipeline_schema, reference_markdown};

use self::graph::{EdgeLabels, GraphFormat};
use self::logging::LogFormat;

/// High-throughput stream processing on Arrow record batches.
#[derive(Debug, Parser)]
#[command(name = "flumen", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    /// Log level or filter (`info`, `flumen=debug`). Default: `RUST_LOG`,
    /// else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until its bounded sources finish, or until SIGINT or
    /// SIGTERM (which drain: what was read is written).
    Run(run::RunArgs),
    /// Check a pipeline file without running it: everything that needs no
    /// network, including a sample of each local input against its
    /// declared schema.
    Validate(validate::ValidateArgs),
    /// Draw a pipeline's dataflow: components, types, parallelism and
    /// partitioning.
    Graph {
        /// The pipeline file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
        /// Label each edge with the columns and types it carries.
        #[arg(long)]
        schemas: bool,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Pipeline file schema and reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List and inspect the checkpoints in a checkpoint store.
    #[command(subcommand)]
    Checkpoints(checkpoints::CheckpointsCommand),
    /// Keep a pipeline's latest complete checkpoint as a savepoint, which
    /// stays until deleted (`--list`, `--delete NAME`). A running pipeline
    /// takes a fresh one on SIGUSR2.
    Savepoint(savepoint::SavepointArgs),
    /// Inspect a durable buffer (an HTTP source's): size, segments, damage.
    #[command(subcommand)]
    Buffer(buffer::BufferCommand),
    /// Read what a key-value sink keeps (`get`, `scan`, `count`), beside
    /// the pipeline that writes it.
    #[cfg(feature = "kv")]
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Query what a search sink indexes, beside the pipeline that writes it.
    #[cfg(feature = "search")]
    Search(search::SearchArgs),
    /// Query the Parquet files that sinks write, with SQL (read-only):
    /// tables given by location or by a pipeline file's `parquet` sinks.
    Sql(sql::SqlArgs),
    /// Print a shell completion script: `flumen completions bash >
    /// ~/.local/share/bash-completion/completions/flumen`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of pipeline files (for editors).
    Schema,
    /// Print the configuration reference in Markdown.
    Reference,
}

/// Why a command failed, which decides the exit code.
enum Failure {
    /// The command line or the pipeline file is wrong: exit 2.
    Usage(String),
    /// The pipeline (or a query) failed while running: exit 1.
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure::Usage(error.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print and exit 0; usage errors exit 2.
        Err(error) => error.exit(),
    };
    if let Err(message) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let (message, code) = match dispatch(cli.command, cli.log_format) {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => (message, 2),
        Err(Failure::Runtime(message)) => (message, 1),
    };
    match cli.log_format {
        LogFormat::Pretty => eprintln!("error: {message}"),
        LogFormat::Json => {
            logging::print_json("ERROR", &message, serde_json::json!({ "exit_code": code }))
        }
    }
    ExitCode::from(code)
}

fn dispatch(command: Command, log_format: LogFormat) -> Result<(), Failure> {
    let registry = Registry::builtin();
    match command {
        Command::Run(args) => run::run(args, &registry, log_format),
        Command::Validate(args) => validate::run(args, &registry),
        Command::Graph {
            file,
            format,
            schemas,
            output,
        } => {
            let loaded = LoadedPipeline::load(&file, &registry)?;
            let labels = match schemas {
                true => EdgeLabels::WithSchemas,
                false => EdgeLabels::Partitioning,
            };
            let rendered = graph::render(&loaded, format, labels).map_err(Failure::Runtime)?;
            write_output(output, &rendered)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flumen", &mut script);
            write_output(None, &String::from_utf8_lossy(&script))
        }
        Command::Checkpoints(command) => checkpoints::run(command),
        Command::Savepoint(args) => savepoint::run(args, &registry),
        Command::Buffer(command) => buffer::run(command),
        #[cfg(feature = "kv")]
        Command::Kv(command) => kv::run(command),
        #[cfg(feature = "search")]
        Command::Search(args) => search::run(args),
        Command::Sql(args) => sql::run(args, &registry),
        Command::Config(ConfigCommand::Schema) => {
            let schema = serde_json::to_string_pretty(&pipeline_schema(&registry))
                .expect("a schema serializes");
            write_output(None, &(schema + "\n"))
        }
        Command::Config(ConfigCommand::Reference) => {
            write_output(None, &reference_markdown(&registry))
        }
    }
}

fn write_output(path: Option<PathBuf>, content: &str) -> Result<(), Failure> {
    match path {
        Some(path) => std::fs::write(&path, content)
            .map_err(|e| Failure::Usage(format!("cannot write `{}`: {e}", path.display()))),
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(content.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(Failure::Runtime(e.to_string()))
                }
                _ => Ok(()),
            }
        }
    }
}
