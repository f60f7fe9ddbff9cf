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

/// Renders the pipeline's graph.
pub fn render(loaded: &LoadedPipeline, format: GraphFormat) -> Result<String, String> {
    match format {
        GraphFormat::Mermaid => Ok(mermaid(loaded)),
        GraphFormat::Dot => Ok(dot(loaded)),
        GraphFormat::Svg => svg(&dot(loaded)),
    }
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
/// if it is not the main one.
fn edges(loaded: &LoadedPipeline) -> Vec<(&str, &str, String)> {
    let nodes = loaded.pipeline.nodes();
    let mut edges = Vec::new();
    for node in nodes {
        for edge in &node.inputs {
            let from = &nodes[edge.from];
            let mut label = edge.partitioning.to_string();
            if let Some(port) = &from.outputs[edge.port].name {
                label = format!("{port}: {label}");
            }
            edges.push((from.name.as_str(), node.name.as_str(), label));
        }
    }
    edges
}

fn mermaid(loaded: &LoadedPipeline) -> String {
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
    for (from, to, label) in edges(loaded) {
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

fn dot(loaded: &LoadedPipeline) -> String {
    let mut out = String::from("digraph pipeline {\n    rankdir=LR;\n");
    for node in loaded.pipeline.nodes() {
        let (name, kind) = caption(node);
        let shape = match node.kind {
            NodeKind::Source(_) => "Mrecord",
            NodeKind::Operator(_) => "box",
            NodeKind::Sink(_) => "Mrecord",
        };
        let label = match node.kind {
            // Records draw their fields side by side.
            NodeKind::Source(_) | NodeKind::Sink(_) => format!("{name} | {kind}"),
            NodeKind::Operator(_) => format!("{name}\\n{kind}"),
        };
        writeln!(out, "    \"{name}\" [label=\"{label}\", shape={shape}];")
            .expect("writing to a string");
    }
    for (from, to, label) in edges(loaded) {
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
