//! The console: a running pipeline's live status over HTTP, read-only.
//!
//! - `GET /v1/status`: the run's state, uptime and the checkpoint in
//!   progress;
//! - `GET /v1/nodes`: per node and instance, rows in and out and their
//!   rates, input channel fill (backpressure), watermark, dead-lettered
//!   rows, state, source lag;
//! - `GET /v1/checkpoints`: the recent checkpoints, newest first;
//! - `GET /v1/dead_letters/recent`: the recent rejected records, newest
//!   first;
//! - `GET /`: the page that shows them, with the graph
//!   (`GET /v1/graph.svg`).
//!
//! Rates are rows per second over the time since the previous read of
//! `/v1/nodes` that was at least a second before (or since the start).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use flumen_core::graph::NodeKind;
use flumen_core::runtime::{NodeStats, RunStatus};

/// The page, with its script and styles: no other asset, nothing fetched
/// from elsewhere.
pub(crate) const PAGE: &str = include_str!("console.html");

/// A node as the console lists it.
#[derive(Debug, Clone)]
struct ConsoleNode {
    name: String,
    kind: &'static str,
    component: String,
    parallelism: usize,
    inputs: Vec<String>,
}

/// Rows counted at the last rate sample, per node and instance.
struct Sample {
    at: Instant,
    rows: Vec<Vec<(u64, u64)>>,
    per_second: Vec<Vec<(f64, f64)>>,
}

/// What the console serves of one run.
pub struct Console {
    pipeline: String,
    nodes: Vec<ConsoleNode>,
    stats: Arc<[Arc<NodeStats>]>,
    status: Arc<RunStatus>,
    graph_svg: Option<String>,
    sample: Mutex<Sample>,
}

impl Console {
    /// The console of `pipeline` (named `name`, e.g. its file), before or
    /// while it runs; `graph_svg` is its picture, if there is one.
    pub fn new(
        name: impl Into<String>,
        pipeline: &flumen_core::graph::Pipeline,
        graph_svg: Option<String>,
    ) -> Console {
        let nodes: Vec<ConsoleNode> = pipeline
            .nodes()
            .iter()
            .map(|node| ConsoleNode {
                name: node.name.clone(),
                kind: match node.kind {
                    NodeKind::Source(_) => "source",
                    NodeKind::Operator(_) => "operator",
                    NodeKind::Sink(_) => "sink",
                },
                component: node
                    .component_type
                    .clone()
                    .unwrap_or_else(|| node.kind.label().to_string()),
                parallelism: node.parallelism,
                inputs: node
                    .inputs
                    .iter()
                    .map(|edge| pipeline.nodes()[edge.from].name.clone())
                    .collect(),
            })
            .collect();
        let sample = Sample {
            at: Instant::now(),
            rows: nodes.iter().map(|n| vec![(0, 0); n.parallelism]).collect(),
            per_second: nodes
                .iter()
                .map(|n| vec![(0.0, 0.0); n.parallelism])
                .collect(),
        };
        Console {
            pipeline: name.into(),
            nodes,
            stats: pipeline.stats(),
            status: pipeline.status(),
            graph_svg,
            sample: Mutex::new(sample),
        }
    }

    /// The JSON answer of a console path, if `path` is one.
    pub(crate) fn answer(&self, path: &str) -> Option<Value> {
        Some(match path {
            "/v1/status" => self.status_json(),
            "/v1/nodes" => self.nodes_json(),
            "/v1/checkpoints" => {
                let mut checkpoints = self.status.checkpoints();
                checkpoints.reverse();
                json!({ "checkpoints": checkpoints })
            }
            "/v1/dead_letters/recent" => {
                let mut rejected = self.status.dead_letters();
                rejected.reverse();
                json!({ "dead_letters": rejected })
            }
            _ => return None,
        })
    }

    /// The graph's SVG, if the console has one.
    pub(crate) fn graph_svg(&self) -> Option<&str> {
        self.graph_svg.as_deref()
    }

    fn status_json(&self) -> Value {
        let last = self.status.checkpoints().last().map(|c| c.id);
        let (mut read, mut rejected) = (0, 0);
        for (node, stats) in self.nodes.iter().zip(self.stats.iter()) {
            if node.kind == "source" {
                read += stats.rows_out();
            }
            rejected += stats.rejected();
        }
        json!({
            "pipeline": self.pipeline,
            "state": self.status.state(),
            "started_at_ms": self.status.started_at_ms(),
            "uptime_seconds": self.status.uptime().as_secs_f64(),
            "checkpoint_in_progress": self.status.checkpoint_in_progress(),
            "last_checkpoint": last,
            "rows_read": read,
            "rejected": rejected,
        })
    }

    /// Rows per second of every instance, brought up to date if the last
    /// sample is a second old or more.
    fn rates(&self) -> Vec<Vec<(f64, f64)>> {
        let mut sample = self.sample.lock().expect("not poisoned");
        let elapsed = sample.at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let now: Vec<Vec<(u64, u64)>> = self
                .stats
                .iter()
                .zip(&self.nodes)
                .map(|(stats, node)| {
                    let instances = stats.instances();
                    (0..node.parallelism)
                        .map(|i| {
                            instances
                                .get(i)
                                .map_or((0, 0), |s| (s.rows_in(), s.rows_out()))
                        })
                        .collect()
                })
                .collect();
            sample.per_second = now
                .iter()
                .zip(&sample.rows)
                .map(|(now, before)| {
                    now.iter()
                        .zip(before)
                        .map(|(now, before)| {
                            (
                                now.0.saturating_sub(before.0) as f64 / elapsed,
                                now.1.saturating_sub(before.1) as f64 / elapsed,
                            )
                        })
                        .collect()
                })
                .collect();
            sample.rows = now;
            sample.at = Instant::now();
        }
        sample.per_second.clone()
    }

    fn nodes_json(&self) -> Value {
        let rates = self.rates();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .zip(self.stats.iter())
            .zip(rates)
            .map(|((node, stats), rates)| {
                let live = stats.instances();
                let instances: Vec<Value> = (0..node.parallelism)
                    .map(|i| {
                        let (rate_in, rate_out) = rates.get(i).copied().unwrap_or_default();
                        match live.get(i) {
                            Some(s) => {
                                let (queued, capacity) = s.queued();
                                let (state_rows, state_bytes) = s.state();
                                json!({
                                    "instance": i,
                                    "rows_in": s.rows_in(),
                                    "rows_out": s.rows_out(),
                                    "rows_in_per_second": rate_in,
                                    "rows_out_per_second": rate_out,
                                    "queued_batches": queued,
                                    "channel_capacity": capacity,
                                    "backpressure": fill(queued, capacity),
                                    "watermark_ms": s.watermark(),
                                    "rejected": s.rejected(),
                                    "state_rows": state_rows,
                                    "state_bytes": state_bytes,
                                    "source_lag": s.source_lag(),
                                    "finished": s.finished(),
                                })
                            }
                            None => json!({ "instance": i, "started": false }),
                        }
                    })
                    .collect();
                let sum =
                    |key: &str| -> f64 { instances.iter().filter_map(|i| i[key].as_f64()).sum() };
                let lag: Option<u64> = live
                    .iter()
                    .map(|s| s.source_lag())
                    .reduce(|a, b| Some(a? + b?))
                    .flatten();
                let watermark = live.iter().map(|s| s.watermark()).min().flatten();
                let backpressure = instances
                    .iter()
                    .filter_map(|i| i["backpressure"].as_f64())
                    .fold(0.0, f64::max);
                json!({
                    "name": node.name,
                    "kind": node.kind,
                    "type": node.component,
                    "parallelism": node.parallelism,
                    "inputs": node.inputs,
                    "rows_in": stats.rows_in(),
                    "rows_out": stats.rows_out(),
                    "rows_in_per_second": sum("rows_in_per_second"),
                    "rows_out_per_second": sum("rows_out_per_second"),
                    "backpressure": backpressure,
                    "watermark_ms": watermark,
                    "rejected": stats.rejected(),
                    "state_rows": stats.state_rows(),
                    "state_bytes": stats.state_bytes(),
                    "source_lag": lag,
                    "instances": instances,
                })
            })
            .collect();
        json!({
            "as_of_ms": flumen_core::runtime::wall_clock_millis(),
            "nodes": nodes,
        })
    }
}

/// How full an instance's input channels are, from 0 to 1.
fn fill(queued: u64, capacity: u64) -> f64 {
    match capacity {
        0 => 0.0,
        capacity => (queued as f64 / capacity as f64).min(1.0),
    }
}
