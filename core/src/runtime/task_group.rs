//! Runs a pipeline as tasks, as Kafka Streams does: its task source's
//! group (a Kafka consumer group, a Kinesis lease table) hands this
//! process some of the partitions (or shards), and the pipeline runs
//! once per partition held, each run (a task) with its own watermark,
//! state and checkpoints, kept under `tasks/<partition>/` of the shared
//! checkpoint store.
//!
//! A task moves between processes through its checkpoints. When the group
//! takes a partition away, its task is suspended: a last checkpoint is
//! taken and committed, and the run stops without ending its streams, so
//! windows still open stay in the checkpoint. The next owner's task starts
//! from it, state and offset together, and finishes those windows once.
//! When a process dies, its tasks start from their latest complete
//! checkpoints, which also publishes output a sink staged but the dead
//! process had not committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::Instrument;

use super::{NodeReport, Pipeline, RunOptions, RunReport};
use crate::checkpoint::{CheckpointSettings, StartFrom};
use crate::component::{TaskChange, TaskGroup};
use crate::error::{Error, Result};
use crate::graph::NodeKind;

impl Pipeline {
    /// The source whose partitions the pipeline runs as, and its group,
    /// joined; `None` for a pipeline that runs whole.
    pub(super) fn task_group(
        &self,
        options: &RunOptions,
    ) -> Result<Option<(String, Box<dyn TaskGroup>)>> {
        let mut found = None;
        for node in &self.nodes {
            let NodeKind::Source(factory) = &node.kind else {
                continue;
            };
            if !factory.runs_as_tasks() {
                continue;
            }
            if let Some((first, _)) = &found {
                return Err(Error::config(
                    format!("sources.{}.tasks", node.name),
                    format!("`{first}` already runs as tasks: a pipeline has one task source"),
                ));
            }
            if node.parallelism != 1 {
                return Err(Error::config(
                    format!("sources.{}.parallelism", node.name),
                    "must be 1 for a source run as tasks: each task reads one partition",
                ));
            }
            if options
                .checkpoints
                .as_ref()
                .is_some_and(|c| !matches!(c.start, StartFrom::Latest))
            {
                return Err(Error::Checkpoint(
                    "a pipeline run as tasks starts each task from its own latest checkpoint; \
                     to start over, delete the checkpoint store"
                        .into(),
                ));
            }
            if options.checkpoints.is_none() {
                return Err(Error::config(
                    format!("sources.{}.tasks", node.name),
                    "needs a `checkpoint` section: a task's state and read position are kept in its checkpoints, where its next owner finds them",
                ));
            }
            found = Some((node.name.clone(), factory));
        }
        let Some((name, factory)) = found else {
            return Ok(None);
        };
        let group = factory.task_group().map_err(|e| e.in_node(&name))?;
        Ok(group.map(|group| (name, group)))
    }
}

/// A task running here.
struct Running {
    stop: super::ShutdownHandle,
    /// Set when the task is to be stopped at once rather than suspended.
    lost: bool,
}

/// Runs `pipeline` as the tasks `group` gives this process, until every
/// task has finished (bounded input) or the run is interrupted.
pub(super) async fn run(
    pipeline: Pipeline,
    source: String,
    mut group: Box<dyn TaskGroup>,
    options: RunOptions,
) -> Result<RunReport> {
    let started = Instant::now();
    let settings = options.checkpoints.clone().expect("checked in task_group");
    let signals = pipeline.signals.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let signal_task = options.handle_signals.then(|| {
        tokio::spawn(super::handle_os_signals(
            signals.clone(),
            interrupted.clone(),
        ))
    });
    // A Kinesis stream's shards are found once the group has started.
    let known = group.tasks().len();
    tracing::info!(
        source = %source,
        tasks = (known > 0).then_some(known),
        store = settings.store.display(),
        "running as tasks, one per partition"
    );

    let mut running: HashMap<u32, Running> = HashMap::new();
    let mut runs: JoinSet<(u32, Result<RunReport>)> = JoinSet::new();
    let mut reports: Vec<RunReport> = Vec::new();
    // Tasks that finished here, or were found finished in their store.
    let mut finished: BTreeSet<u32> = BTreeSet::new();
    // Of those that finished here, the ones the group has been told of.
    let mut told: BTreeSet<u32> = BTreeSet::new();
    let mut revoking: Vec<(BTreeSet<u32>, std::sync::mpsc::Sender<()>)> = Vec::new();
    let mut failure: Option<Error> = None;
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Set on an interrupt: every task is being suspended, for the group
    // to hand over once this process leaves.
    let mut leaving = false;
    loop {
        if leaving && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = signals.abort.cancelled() => {
                for task in running.values() {
                    task.stop.abort();
                }
                while let Some(joined) = runs.join_next().await {
                    record(joined, &mut running, &mut reports, &mut finished, &mut failure);
                }
                break;
            }
            _ = signals.drain.cancelled(), if !leaving => {
                leaving = true;
                for task in running.values() {
                    task.stop.suspend();
                }
            }
            change = group.next() => {
                let Some(change) = change? else { break };
                match change {
                    TaskChange::Assigned(tasks) if leaving => {
                        tracing::info!(tasks = ?tasks, "not starting tasks assigned while leaving");
                    }
                    TaskChange::Assigned(tasks) => {
                        for task in tasks {
                            if running.contains_key(&task) {
                                continue;
                            }
                            // A task found finished runs too: its run
                            // reads nothing, and publishes what its last
                            // owner staged, had it died before doing so.
                            let store = settings.store.task(task);
                            let run = pipeline.for_task(task);
                            let stop = run.shutdown_handle();
                            let options = RunOptions {
                                channel_capacity: options.channel_capacity,
                                handle_signals: false,
                                checkpoints: Some(CheckpointSettings {
                                    store,
                                    ..settings.clone()
                                }),
                            };
                            tracing::info!(task, "task starting from its latest checkpoint");
                            let span = tracing::info_span!("task", task);
                            runs.spawn(async move { (task, run.run_whole(options).await) }.instrument(span));
                            running.insert(task, Running { stop, lost: false });
                        }
                    }
                    TaskChange::Revoked { tasks, done } => {
                        let stopping: BTreeSet<u32> =
                            tasks.into_iter().filter(|t| running.contains_key(t)).collect();
                        for task in &stopping {
                            running[task].stop.suspend();
                        }
                        if stopping.is_empty() {
                            let _ = done.send(());
                        } else {
                            revoking.push((stopping, done));
                        }
                    }
                    TaskChange::Lost(tasks) => {
                        for task in tasks {
                            if let Some(running) = running.get_mut(&task) {
                                running.lost = true;
                                running.stop.abort();
                            }
                        }
                    }
                }
            }
            Some(joined) = runs.join_next(), if !runs.is_empty() => {
                let ended = record(joined, &mut running, &mut reports, &mut finished, &mut failure);
                if let Some(task) = ended.filter(|t| told.insert(*t)) {
                    let positions = final_positions(&settings, task, &source).await?;
                    group.finished(task, &positions).await?;
                }
                revoking.retain(|(tasks, done)| {
                    let stopped = tasks.iter().all(|t| !running.contains_key(t));
                    if stopped {
                        let _ = done.send(());
                    }
                    !stopped
                });
                if failure.is_some() {
                    // A task failed: stop the others as a crash would; each
                    // starts again from its last checkpoint, here or
                    // elsewhere.
                    for task in running.values() {
                        task.stop.abort();
                    }
                    while let Some(joined) = runs.join_next().await {
                        record(joined, &mut running, &mut reports, &mut finished, &mut failure);
                    }
                    break;
                }
            }
            // A bounded input: once some task has finished, or while this
            // process runs none, see whether all have.
            // A task still running here may have recorded its end, and
            // still be publishing what it wrote: wait for it.
            _ = ticks.tick(), if (!finished.is_empty() || running.is_empty()) && !leaving => {
                let tasks = group.tasks();
                if running.is_empty() && all_finished(&settings, &tasks, &finished).await? {
                    tracing::info!(tasks = tasks.len(), "every task has finished");
                    break;
                }
            }
        }
    }
    for (_, done) in revoking.drain(..) {
        let _ = done.send(());
    }
    group.leave().await?;
    if let Some(task) = signal_task {
        task.abort();
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if signals.abort.is_cancelled() {
        return Err(Error::Interrupted);
    }
    if interrupted.load(Ordering::Relaxed) {
        tracing::info!("tasks handed over after interrupt");
    }
    Ok(RunReport {
        duration: started.elapsed(),
        nodes: sum_nodes(&pipeline, &reports),
        drained: signals.drain.is_cancelled(),
        suspended: false,
        restored: None,
    })
}

/// Takes in a task's end. Returns the task if it finished (ran to the
/// end of its input).
fn record(
    joined: std::result::Result<(u32, Result<RunReport>), tokio::task::JoinError>,
    running: &mut HashMap<u32, Running>,
    reports: &mut Vec<RunReport>,
    finished: &mut BTreeSet<u32>,
    failure: &mut Option<Error>,
) -> Option<u32> {
    let (task, result) = match joined {
        Ok(ended) => ended,
        Err(error) => {
            failure.get_or_insert(Error::internal(format!("a task panicked: {error}")));
            return None;
        }
    };
    let lost = running.remove(&task).is_some_and(|r| r.lost);
    match result {
        Ok(report) => {
            match report.suspended {
                true => tracing::info!(task, "task suspended at a checkpoint, for its next owner"),
                false => {
                    tracing::info!(task, "task finished");
                    finished.insert(task);
                }
            }
            let ended = (!report.suspended).then_some(task);
            reports.push(report);
            return ended;
        }
        // Stopped at once (lost, or another task failed): its next owner
        // starts from its last checkpoint.
        Err(Error::Interrupted) => {
            if lost {
                tracing::warn!(task, "task stopped without a checkpoint, as it was lost");
            }
        }
        Err(error) => {
            tracing::error!(task, %error, "task failed");
            failure.get_or_insert(error);
        }
    }
    None
}

/// Whether every task has finished, here or in another process (as its
/// latest checkpoint says). Not while the tasks are still unknown.
async fn all_finished(
    settings: &CheckpointSettings,
    tasks: &[u32],
    finished: &BTreeSet<u32>,
) -> Result<bool> {
    if tasks.is_empty() {
        return Ok(false);
    }
    for &task in tasks {
        if finished.contains(&task) {
            continue;
        }
        let manifest = settings.store.task(task).latest_manifest().await?;
        if !manifest.is_some_and(|m| m.finished) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What task `task`'s source (node `source`) recorded in its latest
/// checkpoint, per instance.
async fn final_positions(
    settings: &CheckpointSettings,
    task: u32,
    source: &str,
) -> Result<Vec<serde_json::Value>> {
    let manifest = settings.store.task(task).latest_manifest().await?;
    Ok(manifest
        .and_then(|m| m.nodes.get(source).cloned())
        .map(|node| node.instances.into_iter().map(|i| i.values).collect())
        .unwrap_or_default())
}

/// Each node's counters, summed over the task runs.
fn sum_nodes(pipeline: &Pipeline, reports: &[RunReport]) -> Vec<NodeReport> {
    let mut sums: BTreeMap<&str, NodeReport> = BTreeMap::new();
    for report in reports {
        for node in &report.nodes {
            let sum = sums
                .entry(node.name.as_str())
                .or_insert_with(|| NodeReport {
                    rows_in: 0,
                    rows_out: 0,
                    state_rows: 0,
                    rejected: 0,
                    ..node.clone()
                });
            sum.rows_in += node.rows_in;
            sum.rows_out += node.rows_out;
            sum.state_rows += node.state_rows;
            sum.rejected += node.rejected;
        }
    }
    pipeline
        .nodes
        .iter()
        .map(|node| {
            sums.remove(node.name.as_str()).unwrap_or(NodeReport {
                name: node.name.clone(),
                kind: node.kind.label(),
                rows_in: 0,
                rows_out: 0,
                state_rows: 0,
                rejected: 0,
            })
        })
        .collect()
}
