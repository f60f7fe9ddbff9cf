//! `flumen validate FILE`: everything about a pipeline file that can be
//! checked without a network, including a sample of each local input read
//! with its declared schema.

use std::path::PathBuf;

use flumen::config::{ConfigError, LoadedPipeline, Registry};
use flumen_core::graph::NodeKind;
use flumen_core::sample::sample;

use super::Failure;
use super::graph::columns;

/// How many records of each input are read.
const SAMPLE_RECORDS: usize = 100;

/// Options of `flumen validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    file: PathBuf,

    /// Also print the columns and types each component outputs (a sink:
    /// what it receives).
    #[arg(long)]
    schemas: bool,
}

pub fn run(args: ValidateArgs, registry: &Registry) -> Result<(), Failure> {
    let loaded = LoadedPipeline::load(&args.file, registry)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let warnings = runtime.block_on(check_inputs(&loaded))?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let nodes = loaded.pipeline.nodes();
    eprintln!("{}: ok ({} components)", args.file.display(), nodes.len());
    if args.schemas {
        print_schemas(&loaded);
    }
    Ok(())
}

/// Reads a sample of each source that can be read locally. An input that
/// cannot be read, or whose every sampled record the schema rejects, is an
/// error; some rejected records are a warning.
async fn check_inputs(loaded: &LoadedPipeline) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for node in loaded.pipeline.nodes() {
        let NodeKind::Source(source) = &node.kind else {
            continue;
        };
        if !source.samples_locally() {
            continue;
        }
        let path = format!("sources.{}", node.name);
        let sample = sample(source.as_ref(), SAMPLE_RECORDS)
            .await
            .map_err(|e| loaded.error_at(&format!("{path}.path"), e.to_string()))?;
        let Some(first) = sample.rejected.first() else {
            continue;
        };
        let read = sample.rows + sample.rejected.len();
        let summary = format!(
            "{} of the first {read} records of `{}` do not fit its schema; the first: {first}",
            sample.rejected.len(),
            node.name
        );
        if sample.rows > 0 {
            warnings.push(format!("{summary} (they would go to the dead letters)"));
            continue;
        }
        // Point at the declared column the first record does not fit.
        let column = first
            .error
            .strip_prefix("column `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(column, _)| column);
        let at = match column {
            Some(column) => format!("{path}.schema.{column}"),
            None => format!("{path}.schema"),
        };
        return Err(loaded.error_at(
            &at,
            format!("every record read would be rejected: {summary}"),
        ));
    }
    Ok(warnings)
}

/// Each component's columns: `bids (source nexmark)` then `  auction: int64`.
fn print_schemas(loaded: &LoadedPipeline) {
    let nodes = loaded.pipeline.nodes();
    let mut out = String::new();
    for node in nodes {
        let schema = match node.outputs.first() {
            Some(output) => output.schema.clone(),
            None => match node.input_schemas(nodes).first() {
                Some(schema) => (*schema).clone(),
                None => continue,
            },
        };
        let section = match node.kind {
            NodeKind::Source(_) => "source",
            NodeKind::Operator(_) => "transform",
            NodeKind::Sink(_) => "sink",
        };
        let kind = node.component_type.as_deref().unwrap_or_default();
        out.push_str(&format!("{} ({section} {kind})\n", node.name));
        for column in columns(&schema) {
            out.push_str(&format!("  {column}\n"));
        }
    }
    print!("{out}");
}
