//! Runs a pipeline with a repartitioned edge as two stages of tasks, as
//! Kafka Streams runs a topology with a repartition topic as two
//! sub-topologies.
//!
//! A pipeline run as tasks keeps each key's state in the task of the
//! source partition its rows come from. That is exact only while the
//! pipeline groups by the source's partitioning. To group by another key,
//! the rows must meet by that key first, across processes: the edge into
//! the grouping component goes through a broker ([`Repartition`]).
//!
//! - **Stage 1** is everything before the edge: stateless, one instance
//!   per task. Its tasks, one per source partition, write the edge's rows
//!   keyed to the carrier (a Kafka topic), numbered so that the rows a
//!   restarted task writes again are dropped by the reader.
//! - **Stage 2** is the grouping component and everything after it. Its
//!   tasks, one per partition of the carrier, read the rows back and keep
//!   their own checkpoints, under `repartition-<topic>/tasks/<partition>/`
//!   of the same store.
//!
//! Both stages' groups share the processes: each process runs whichever
//! tasks of either stage its groups give it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::Instrument;

use super::{NodeReport, Pipeline, RunOptions, RunReport, task_group};
use crate::checkpoint::CheckpointSettings;
use crate::component::Repartition;
use crate::dead_letter::OnError;
use crate::error::{Error, Result};
use crate::event_time::{EventTimeConfig, event_time_column};
use crate::graph::{Edge, Node, NodeKind, OutputPort, Plan};
use crate::partition::Partitioning;

/// Where a pipeline is cut: input `input` of node `to` goes through a
/// broker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    to: usize,
    input: usize,
}

impl Pipeline {
    /// The edge that goes through a broker, if the pipeline has one.
    pub(super) fn cut(&self) -> Result<Option<Cut>> {
        let mut found: Option<Cut> = None;
        for (to, node) in self.nodes.iter().enumerate() {
            for (input, edge) in node.inputs.iter().enumerate() {
                if edge.repartition.is_none() {
                    continue;
                }
                if let Some(first) = found {
                    return Err(Error::graph_at(
                        &node.name,
                        "repartition",
                        format!(
                            "a pipeline has one repartitioned edge, and `{}` has it",
                            self.nodes[first.to].name
                        ),
                    ));
                }
                found = Some(Cut { to, input });
            }
        }
        Ok(found)
    }

    /// Checks that a repartitioned pipeline can be cut in two stages:
    /// called when the graph is built, so that a pipeline that cannot is
    /// refused before anything runs.
    pub(crate) fn check_stages(&self) -> Result<()> {
        match self.cut()? {
            Some(cut) => self.after(cut).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Which nodes are after the cut: the cut node and everything reading
    /// it, directly or not. Checks that nothing after the cut reads
    /// anything before it but through the cut edge, and that the nodes
    /// before it replay their input in order, for the reader to drop by
    /// their numbers the rows a restarted task writes again: one instance
    /// per task, no state.
    fn after(&self, cut: Cut) -> Result<Vec<bool>> {
        let to = &self.nodes[cut.to];
        // Nodes are in topological order.
        let mut after = vec![false; self.nodes.len()];
        for (index, node) in self.nodes.iter().enumerate() {
            after[index] = index == cut.to || node.inputs.iter().any(|e| after[e.from]);
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if after[index] {
                for (input, edge) in node.inputs.iter().enumerate() {
                    let is_cut = index == cut.to && input == cut.input;
                    if !is_cut && !after[edge.from] {
                        return Err(Error::graph_at(
                            &to.name,
                            "repartition",
                            format!(
                                "`{}` reads `{}`, which is before the repartition: \
                                 every row after a repartition must come through it",
                                node.name, self.nodes[edge.from].name
                            ),
                        ));
                    }
                }
                continue;
            }
            if node.parallelism != 1 {
                return Err(Error::graph_at(
                    &node.name,
                    "parallelism",
                    format!(
                        "must be 1 before a repartition (`{}` is): the rows each task writes \
                         are numbered in order, for the reader to drop those a restarted task \
                         writes again",
                        to.name
                    ),
                ));
            }
            if let NodeKind::Operator(factory) = &node.kind {
                let inputs: Vec<_> = node
                    .input_schemas(&self.nodes)
                    .into_iter()
                    .cloned()
                    .collect();
                if factory.state_description(&inputs).is_some() {
                    return Err(Error::graph_at(
                        &to.name,
                        "repartition",
                        format!(
                            "`{}` keeps state, and comes before the repartition: the stage \
                             before a repartition must be stateless (filters, projections, SQL \
                             expressions), so that a restarted task writes the same rows again; \
                             move `{}` after the repartition",
                            node.name, node.name
                        ),
                    ));
                }
            }
        }
        Ok(after)
    }

    /// The two stages: the nodes before the cut, writing the edge's rows
    /// to the broker; and a source reading them back, feeding the nodes
    /// after it. `producers` is how many instances write.
    fn stages(&self, cut: Cut, producers: u32) -> Result<(Pipeline, Pipeline)> {
        let after = self.after(cut)?;
        let to = &self.nodes[cut.to];
        let edge = &to.inputs[cut.input];
        let repartition = edge.repartition.clone().expect("a cut edge repartitions");
        let from = &self.nodes[edge.from];
        let schema = from.outputs[edge.port].schema.clone();
        let name = format!("{}.repartition", to.name);

        // Stage 1: the nodes before, and the writer.
        let mut first_index = vec![usize::MAX; self.nodes.len()];
        let mut first = Vec::new();
        for (index, node) in self.nodes.iter().enumerate().filter(|(i, _)| !after[*i]) {
            first_index[index] = first.len();
            first.push(remapped(node, &first_index));
        }
        let keys = edge.key_columns.clone();
        first.push(Node {
            name: name.clone(),
            component_type: None,
            kind: NodeKind::Sink(repartition.writer(&schema, &keys, producers)?),
            parallelism: from.parallelism,
            inputs: vec![Edge {
                from: first_index[edge.from],
                port: edge.port,
                partitioning: Partitioning::Forward,
                key_columns: Vec::new(),
                repartition: None,
            }],
            outputs: Vec::new(),
            event_time: None,
            on_error: OnError::Fail,
            state_keys: vec![None],
        });

        // Stage 2: the reader, and the nodes after. The reader's
        // watermark trails its rows as the source's trailed its own.
        let event_time = match event_time_column(&schema) {
            Some(column) => {
                let like = self
                    .nodes
                    .iter()
                    .find_map(|n| n.event_time.as_ref().map(|(config, _)| config.clone()));
                let config = EventTimeConfig {
                    column: column.to_string(),
                    ..like.unwrap_or_else(|| EventTimeConfig::new(column))
                };
                let index = config.column_index(&schema)?;
                Some((config, index))
            }
            None => None,
        };
        let mut second_index = vec![usize::MAX; self.nodes.len()];
        let mut second = vec![Node {
            name,
            component_type: None,
            kind: NodeKind::Source(repartition.reader(&schema)?),
            parallelism: 1,
            inputs: Vec::new(),
            outputs: vec![OutputPort { name: None, schema }],
            event_time,
            on_error: OnError::Fail,
            state_keys: Vec::new(),
        }];
        for (index, node) in self.nodes.iter().enumerate().filter(|(i, _)| after[*i]) {
            second_index[index] = second.len();
            let mut node = remapped(node, &second_index);
            if index == cut.to {
                let edge = &mut node.inputs[cut.input];
                edge.from = 0;
                edge.port = 0;
                edge.repartition = None;
            }
            second.push(node);
        }

        let stage = |nodes, number| {
            let mut pipeline = Pipeline::new(Plan {
                nodes,
                dead_letter: self.dead_letter.clone(),
                key_groups: self.key_groups,
            });
            pipeline.signals = self.signals.clone();
            pipeline.stage = number;
            pipeline
        };
        Ok((stage(first, 0), stage(second, 1)))
    }
}

/// `node` with its inputs pointing at the new indices of their nodes.
/// The cut edge's source has none (`usize::MAX`) until it is rewired.
fn remapped(node: &Node, index: &[usize]) -> Node {
    let mut node = node.clone();
    for edge in &mut node.inputs {
        edge.from = index[edge.from];
    }
    node
}

/// Runs the two stages of a pipeline cut at `cut`, each as tasks, until
/// both have finished (bounded input) or the run is interrupted.
pub(super) async fn run(pipeline: Pipeline, cut: Cut, options: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let to = &pipeline.nodes[cut.to];
    let edge = &to.inputs[cut.input];
    let repartition: Arc<dyn Repartition> = edge.repartition.clone().expect("cut");
    let Some((source, group)) = pipeline.task_group(&options)? else {
        return Err(Error::graph_at(
            &to.name,
            "repartition",
            "needs the pipeline run as tasks: a kafka source with `tasks: true`, \
             whose partitions the rows are read from before they are repartitioned",
        ));
    };
    let settings = options.checkpoints.clone().expect("checked by task_group");
    // Every writer is counted from the start, so the topic's partitions
    // must be known and fixed: a Kinesis stream's shards are neither.
    let tasks = group.tasks().len() as u32;
    if tasks == 0 {
        return Err(Error::graph_at(
            &to.name,
            "repartition",
            format!(
                "needs a task source with a fixed set of partitions (a kafka source); `{source}`'s are not known in advance"
            ),
        ));
    }
    let producers = tasks * pipeline.nodes[edge.from].parallelism as u32;
    let (first, second) = pipeline.stages(cut, producers)?;
    repartition.prepare().await?;
    let second_options = RunOptions {
        channel_capacity: options.channel_capacity,
        handle_signals: false,
        checkpoints: Some(CheckpointSettings {
            store: settings.store.child(&repartition.folder()),
            ..settings
        }),
    };
    let (reader, reader_group) = second
        .task_group(&second_options)?
        .ok_or_else(|| Error::internal("the repartition reader runs as tasks"))?;
    tracing::info!(
        edge = %format!("{} → {}", pipeline.nodes[edge.from].name, to.name),
        through = %repartition.describe(),
        producers,
        "running as two stages of tasks, repartitioned between them"
    );

    // Both stages answer the same signals: an interrupt suspends the
    // tasks of both, and one stage failing stops the other.
    let signals = pipeline.signals.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let signal_task = options.handle_signals.then(|| {
        tokio::spawn(super::handle_os_signals(
            signals.clone(),
            interrupted.clone(),
        ))
    });
    let first_options = RunOptions {
        handle_signals: false,
        ..options
    };
    let stopping = |result: Result<RunReport>| {
        if result.is_err() {
            signals.abort.cancel();
        }
        result
    };
    // Each stage has tasks of the same numbers: the log says which stage
    // a line is about (`stage{stage=2}:task{task=3}: …`).
    let (before, after) = tokio::join!(
        async { stopping(task_group::run(first, source, group, first_options).await) }
            .instrument(tracing::info_span!("stage", stage = 1)),
        async { stopping(task_group::run(second, reader, reader_group, second_options).await) }
            .instrument(tracing::info_span!("stage", stage = 2)),
    );
    if let Some(task) = signal_task {
        task.abort();
    }
    let reports = match (before, after) {
        (Ok(before), Ok(after)) => [before, after],
        // The stage that failed first says why; the other was stopped.
        (Err(Error::Interrupted), Err(error)) | (Err(error), _) | (_, Err(error)) => {
            return Err(error);
        }
    };
    if interrupted.load(Ordering::Relaxed) {
        tracing::info!("both stages' tasks handed over after interrupt");
    }
    let nodes = pipeline
        .nodes
        .iter()
        .map(|node| {
            reports
                .iter()
                .find_map(|r| r.node(&node.name).cloned())
                .unwrap_or(NodeReport {
                    name: node.name.clone(),
                    kind: node.kind.label(),
                    rows_in: 0,
                    rows_out: 0,
                    state_rows: 0,
                    rejected: 0,
                })
        })
        .collect();
    Ok(RunReport {
        duration: started.elapsed(),
        nodes,
        drained: reports.iter().any(|r| r.drained),
        suspended: false,
        restored: None,
    })
}
