//! The command line: `flumen run | validate | graph | config | checkpoints |
//! buffer | sql`.
//!
//! Exit codes: 0 success, 1 the pipeline failed while running (or a
//! `flumen sql` query failed), 2 the command or the pipeline file is wrong.

mod buffer;
mod checkpoints;
mod graph;
mod logging;
mod metrics;
mod progress;
mod run;
mod sql;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flumen::config::{ConfigError, LoadedPipeline, Registry, pipeline_schema, reference_markdown};

use self::graph::GraphFormat;
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
    /// network.
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Draw a pipeline's dataflow: components, types, parallelism and
    /// partitioning.
    Graph {
        /// The pipeline file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
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
    /// Inspect a durable buffer (an HTTP source's): size, segments, damage.
    #[command(subcommand)]
    Buffer(buffer::BufferCommand),
    /// Query the Parquet files that sinks write, with SQL (read-only):
    /// tables given by location or by a pipeline file's `parquet` sinks.
    Sql(sql::SqlArgs),
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
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    let registry = Registry::builtin();
    match command {
        Command::Run(args) => run::run(args, &registry),
        Command::Validate { file } => {
            let loaded = LoadedPipeline::load(&file, &registry)?;
            let nodes = loaded.pipeline.nodes().len();
            eprintln!("{}: ok ({nodes} components)", file.display());
            Ok(())
        }
        Command::Graph {
            file,
            format,
            output,
        } => {
            let loaded = LoadedPipeline::load(&file, &registry)?;
            let rendered = graph::render(&loaded, format).map_err(Failure::Runtime)?;
            write_output(output, &rendered)
        }
        Command::Checkpoints(command) => checkpoints::run(command),
        Command::Buffer(command) => buffer::run(command),
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
