//! `flumen graph`: the dataflow as Mermaid, DOT or SVG.

use std::fmt::Write;

use flumen::config::LoadedPipeline;
use flumen_core::graph::{Node, NodeKind};

/// Output format of `flumen graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Mermaid flowchart (renders on GitHub and in many editors).
    Mermaid,
    /// Graphviz DOT.
    Dot,
    /// A self-contained SVG image.
    Svg,
}

/// What the edges are labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeLabels {
    /// The partitioning (and the named output, if any).
    Partitioning,
    /// That, and the columns and types the edge carries.
    WithSchemas,
}

/// Renders the pipeline's graph.
pub fn render(
    loaded: &LoadedPipeline,
    format: GraphFormat,
    labels: EdgeLabels,
) -> Result<String, String> {
    match format {
        GraphFormat::Mermaid => Ok(mermaid(loaded, labels)),
        GraphFormat::Dot => Ok(dot(loaded, labels, Shapes::Graphviz)),
        GraphFormat::Svg => svg(&dot(loaded, labels, Shapes::LayoutRs)),
    }
}

/// The columns of a schema, one `name: type` per line.
pub fn columns(schema: &arrow::datatypes::Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let name = flumen_core::schema::type_name(f.data_type());
            format!("{}: {name}", f.name())
        })
        .collect()
}

/// `bids` / `nexmark ×2`.
fn caption(node: &Node) -> (String, String) {
    let kind = node
        .component_type
        .clone()
        .unwrap_or_else(|| node.kind.label().to_string());
    let parallel = if node.parallelism > 1 {
        format!(" ×{}", node.parallelism)
    } else {
        String::new()
    };
    (node.name.clone(), format!("{kind}{parallel}"))
}

/// Each edge as (from, to, label): the partitioning, and the named output
/// if it is not the main one; with schemas, the columns on further lines.
fn edges(loaded: &LoadedPipeline, labels: EdgeLabels) -> Vec<(&str, &str, Vec<String>)> {
    let nodes = loaded.pipeline.nodes();
    let mut edges = Vec::new();
    for node in nodes {
        for edge in &node.inputs {
            let from = &nodes[edge.from];
            let output = &from.outputs[edge.port];
            let mut label = vec![edge.partitioning.to_string()];
            if let Some(port) = &output.name {
                label[0] = format!("{port}: {}", label[0]);
            }
            if let Some(repartition) = &edge.repartition {
                label[0] = format!("{} via {}", label[0], repartition.describe());
            }
            if labels == EdgeLabels::WithSchemas {
                label.extend(columns(&output.schema));
            }
            edges.push((from.name.as_str(), node.name.as_str(), label));
        }
    }
    edges
}

fn mermaid(loaded: &LoadedPipeline, labels: EdgeLabels) -> String {
    let mut out = String::from("flowchart LR\n");
    for node in loaded.pipeline.nodes() {
        let (name, kind) = caption(node);
        let text = format!("\"{name}<br/><small>{kind}</small>\"");
        let shape = match node.kind {
            NodeKind::Source(_) => format!("([{text}])"),
            NodeKind::Operator(_) => format!("[{text}]"),
            NodeKind::Sink(_) => format!("[({text})]"),
        };
        writeln!(out, "    {}{shape}", mermaid_id(&name)).expect("writing to a string");
    }
    for (from, to, label) in edges(loaded, labels) {
        let label = label.join("<br/>");
        writeln!(
            out,
            "    {} -->|\"{label}\"| {}",
            mermaid_id(from),
            mermaid_id(to)
        )
        .expect("writing to a string");
    }
    out
}

/// Mermaid ids may not contain `-`.
fn mermaid_id(name: &str) -> String {
    name.replace('-', "_")
}

/// Which shapes a DOT graph is drawn with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shapes {
    /// Graphviz's: sources rounded, operators boxes, sinks cylinders.
    Graphviz,
    /// What layout-rs draws (it has no cylinder): sources rounded, sinks
    /// square and shaded.
    LayoutRs,
}

fn dot(loaded: &LoadedPipeline, labels: EdgeLabels, shapes: Shapes) -> String {
    let mut out = String::from("digraph pipeline {\n    rankdir=LR;\n");
    for node in loaded.pipeline.nodes() {
        let (name, kind) = caption(node);
        let (attributes, label) = match (&node.kind, shapes) {
            (NodeKind::Source(_), Shapes::Graphviz) => {
                ("shape=box, style=rounded", format!("{name}\\n{kind}"))
            }
            // layout-rs rounds the corners of records only, which draw
            // their fields side by side.
            (NodeKind::Source(_), Shapes::LayoutRs) => {
                ("shape=Mrecord", format!("{name} | {kind}"))
            }
            (NodeKind::Operator(_), _) => ("shape=box", format!("{name}\\n{kind}")),
            (NodeKind::Sink(_), Shapes::Graphviz) => ("shape=cylinder", format!("{name}\\n{kind}")),
            (NodeKind::Sink(_), Shapes::LayoutRs) => {
                ("shape=box, style=filled", format!("{name}\\n{kind}"))
            }
        };
        writeln!(out, "    \"{name}\" [label=\"{label}\", {attributes}];")
            .expect("writing to a string");
    }
    for (from, to, label) in edges(loaded, labels) {
        let label = label.join("\\n");
        writeln!(out, "    \"{from}\" -> \"{to}\" [label=\"{label}\"];")
            .expect("writing to a string");
    }
    out.push_str("}\n");
    out
}

/// Lays out and draws the DOT graph in Rust (layout-rs), no Graphviz
/// needed.
fn svg(dot: &str) -> Result<String, String> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};

    let graph = DotParser::new(dot)
        .process()
        .map_err(|e| format!("cannot lay out the graph: {e}"))?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    Ok(writer.finalize())
}
