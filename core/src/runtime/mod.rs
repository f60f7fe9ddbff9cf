//! Runs a [`Pipeline`]: one tokio task per node instance, bounded channels
//! between them.
//!
//! Channels hold at most [`RunOptions::channel_capacity`] batches, so a slow
//! sink fills the channels before it and the sources wait: memory stays
//! bounded by the graph's size, not by the input's.

mod channels;
mod dead_letter;
pub mod metrics;
mod stages;
mod stats;
mod status;
mod task_group;
mod tasks;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use self::channels::{EdgeSender, InputChannel, Inputs, Outputs};
use self::metrics::{MetricsKind, MetricsLabels, NodeMetrics};
pub use self::stats::{InstanceStats, NodeStats};
pub use self::status::{
    CheckpointInProgress, CheckpointRecord, DeadLetterRecord, RunState, RunStatus,
};
pub use self::tasks::wall_clock_millis;
use self::tasks::{DeadLetters, TaskCheckpoint, TaskEnv};
use crate::checkpoint::{
    CheckpointSettings, Coordinator, CoordinatorHandles, Loaded, NodeInfo, StartFrom,
};
use crate::component::{InstanceInfo, StateRescale};
use crate::error::{Error, Result};
use crate::event_time::WatermarkGenerator;
use crate::graph::{NodeKind, Plan};
use crate::message::Message;
use crate::partition::Partitioning;

/// How the runtime asks tasks to stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signals {
    /// Stop reading sources; let what was read flow to the sinks.
    pub(crate) drain: tokio_util::sync::CancellationToken,
    /// Stop now: something failed or the user insisted.
    pub(crate) abort: tokio_util::sync::CancellationToken,
    /// Take a checkpoint now rather than at the next interval.
    pub(crate) checkpoint_now: Arc<tokio::sync::Notify>,
    /// Take a checkpoint now and keep it as a savepoint.
    pub(crate) savepoint_now: Arc<tokio::sync::Notify>,
    /// Take a checkpoint, commit it, and stop without ending the streams:
    /// open windows and the rest of the state stay in that checkpoint,
    /// for whichever process runs the pipeline next.
    pub(crate) suspend: Arc<tokio::sync::Notify>,
    /// The suspending checkpoint's commits are on their way to the sinks:
    /// the stop that follows is not a failure.
    pub(crate) suspended: tokio_util::sync::CancellationToken,
}

/// How a pipeline runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Batches each channel holds before its sender waits.
    pub channel_capacity: usize,
    /// Drain on the first SIGINT (Ctrl-C) or SIGTERM and stop at once on the
    /// second. Turn off when the embedding program handles signals itself
    /// and uses [`ShutdownHandle`].
    pub handle_signals: bool,
    /// Take checkpoints, and start from one. `None`: no checkpoints; sinks
    /// commit once, at the end.
    pub checkpoints: Option<CheckpointSettings>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            channel_capacity: 8,
            handle_signals: true,
            checkpoints: None,
        }
    }
}

/// Stops a running pipeline from elsewhere in the program.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    signals: Signals,
}

impl ShutdownHandle {
    /// Stops reading the sources and lets what was read flow through to the
    /// sinks; `run` then returns normally.
    pub fn drain(&self) {
        self.signals.drain.cancel();
    }

    /// Stops every task now; `run` returns [`Error::Interrupted`].
    pub fn abort(&self) {
        self.signals.abort.cancel();
    }

    /// Takes a checkpoint now, if the run takes checkpoints and none is in
    /// progress (then the request waits for it to finish).
    pub fn checkpoint(&self) {
        self.signals.checkpoint_now.notify_one();
    }

    /// Takes a checkpoint now and keeps it as savepoint
    /// `savepoint-<id>` of the checkpoint store, which retention leaves
    /// alone (see [`CheckpointStore::save`](crate::checkpoint::CheckpointStore::save)).
    pub fn savepoint(&self) {
        self.signals.savepoint_now.notify_one();
    }

    /// Takes a checkpoint now and stops once its sinks have committed it,
    /// without ending the streams: windows still open are neither emitted
    /// nor lost, but kept in the checkpoint for the next run. `run` then
    /// returns with [`RunReport::suspended`] set. A run without
    /// checkpoints, or whose sources have all ended, finishes instead.
    pub fn suspend(&self) {
        self.signals.suspend.notify_one();
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Wall-clock time of the run.
    pub duration: Duration,
    /// Per node, in topological order.
    pub nodes: Vec<NodeReport>,
    /// Whether the run was asked to stop early (an interrupt, or
    /// [`ShutdownHandle::drain`]) and drained rather than finished.
    pub drained: bool,
    /// Whether the run stopped at a checkpoint with its state kept there
    /// ([`ShutdownHandle::suspend`]).
    pub suspended: bool,
    /// The checkpoint the run started from, if it restored one.
    pub restored: Option<RestoredCheckpoint>,
}

/// The checkpoint a run restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredCheckpoint {
    /// Its number.
    pub id: u64,
    /// Whether it was the final checkpoint of an earlier run: that run's
    /// sources had all reached their end (or were drained).
    pub finished: bool,
}

impl RunReport {
    /// Records the nodes could not handle: sent to the dead-letter sink,
    /// or dropped by an `on_error: drop` policy.
    pub fn rejected(&self) -> u64 {
        self.nodes.iter().map(|n| n.rejected).sum()
    }
}

/// Counters of one node at the end of a run.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub kind: &'static str,
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Rows (keys, groups) the node retained at the end: zero for an
    /// operator that emitted everything it held.
    pub state_rows: u64,
    /// Records it could not handle (dead-lettered or dropped).
    pub rejected: u64,
}

impl RunReport {
    /// The report of the node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeReport> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A checked, planned graph, ready to [`run`](Pipeline::run), with the
/// live counters and the stop signals of its run. Reads as its [`Plan`].
#[derive(Debug)]
pub struct Pipeline {
    plan: Plan,
    pub(crate) stats: Arc<[Arc<NodeStats>]>,
    /// The run's state, checkpoints and dead letters, for the console.
    pub(crate) status: Arc<RunStatus>,
    pub(crate) signals: Signals,
    /// In a pipeline run as tasks: the task this run is.
    pub(crate) task: Option<u32>,
    /// In a pipeline cut by a repartition: 0 for the stage before the
    /// cut, 1 for the one after.
    pub(crate) stage: usize,
}

impl std::ops::Deref for Pipeline {
    type Target = Plan;

    fn deref(&self) -> &Plan {
        &self.plan
    }
}

impl Pipeline {
    pub(crate) fn new(plan: Plan) -> Pipeline {
        Pipeline {
            stats: plan.nodes.iter().map(|_| Arc::default()).collect(),
            status: Arc::default(),
            signals: Signals::default(),
            task: None,
            stage: 0,
            plan,
        }
    }

    /// The run of task `task` of this pipeline: the same plan, with
    /// counters and stop signals of its own.
    pub(crate) fn for_task(&self, task: u32) -> Pipeline {
        Pipeline {
            task: Some(task),
            stage: self.stage,
            ..Pipeline::new(self.plan.clone())
        }
    }

    /// A handle to stop the pipeline once it runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            signals: self.signals.clone(),
        }
    }

    /// Live counters of every node, in the order of [`Pipeline::nodes`].
    pub fn stats(&self) -> Arc<[Arc<NodeStats>]> {
        self.stats.clone()
    }

    /// The run's state, its recent checkpoints and dead letters.
    pub fn status(&self) -> Arc<RunStatus> {
        self.status.clone()
    }

    /// Runs until every sink has finished, with default [`RunOptions`]
    /// (which drain on SIGINT/SIGTERM).
    ///
    /// Returns the first error any node raised, with the node's name; the
    /// other nodes are stopped.
    pub async fn run(self) -> Result<RunReport> {
        self.run_with(RunOptions::default()).await
    }

    /// Runs with the given options. See [`Pipeline::run`].
    pub async fn run_with(self, options: RunOptions) -> Result<RunReport> {
        if let Some(cut) = self.cut()? {
            return stages::run(self, cut, options).await;
        }
        if let Some((source, group)) = self.task_group(&options)? {
            return task_group::run(self, source, group, options).await;
        }
        self.run_whole(options).await
    }

    /// Runs every node (of one task, in a pipeline run as tasks).
    pub(crate) async fn run_whole(self, options: RunOptions) -> Result<RunReport> {
        let started = Instant::now();
        let capacity = options.channel_capacity.max(1);
        let signals = self.signals.clone();
        let interrupted = Arc::new(AtomicBool::new(false));
        let signal_task = options.handle_signals.then(|| {
            // Registered before the run starts: a checkpoint request that
            // comes early must not meet SIGUSR1's default action (exit).
            listen_for_checkpoint_requests(&signals);
            tokio::spawn(handle_os_signals(signals.clone(), interrupted.clone()))
        });

        self.status.set_state(RunState::Running);
        let (inputs, outputs) = self.wire(capacity);
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        let (coordinator, handles, restored) = match &options.checkpoints {
            Some(settings) => {
                let (coordinator, handles, restored) = self.checkpointing(settings).await?;
                (Some(coordinator), Some(handles), restored)
            }
            None => (None, None, None),
        };
        let mut coordinator = coordinator;
        let (dead_letter_tx, dead_letter_task) = match &self.dead_letter {
            Some(sink) => {
                let (tx, rx) = mpsc::channel(capacity);
                // Checkpoints wait for the dead letters rejected before them.
                let flushes = coordinator.as_mut().map(|coordinator| {
                    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
                    coordinator.flush_dead_letters_with(flush_tx);
                    flush_rx
                });
                let task = dead_letter::run(
                    sink.0.clone(),
                    rx,
                    self.status.clone(),
                    flushes,
                    signals.clone(),
                    self.task,
                    self.stage,
                );
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let restored_checkpoint = restored.as_ref().map(|loaded| RestoredCheckpoint {
            id: loaded.manifest.id,
            finished: loaded.manifest.finished,
        });
        let instances =
            self.create_instances(inputs, outputs, capacity, handles, restored, dead_letter_tx)?;
        let mut sinks = std::collections::HashSet::new();
        for (node, task) in instances {
            let is_sink = self
                .node(&node)
                .is_some_and(|n| matches!(n.kind, NodeKind::Sink(_)));
            // In a pipeline run as tasks, the task's span names it in
            // every line its nodes log.
            let id = tasks.spawn(task.in_current_span()).id();
            if is_sink {
                sinks.insert(id);
            }
            names.insert(id, node);
        }
        if let Some(task) = dead_letter_task {
            let id = tasks.spawn(task).id();
            names.insert(id, Arc::from("dead_letter"));
        }
        if let Some(coordinator) = coordinator {
            let id = tasks.spawn(coordinator.run().in_current_span()).id();
            names.insert(id, Arc::from("checkpoints"));
        }

        let mut failure: Option<Error> = None;
        let mut suspended = false;
        while let Some(joined) = tasks.join_next_with_id().await {
            if let Ok((id, _)) = &joined {
                sinks.remove(id);
            }
            if signals.suspended.is_cancelled() && sinks.is_empty() && !suspended {
                // Every sink has committed the suspending checkpoint:
                // what the other tasks do from here is never committed.
                suspended = true;
                signals.abort.cancel();
            }
            if suspended {
                continue;
            }
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(error))) => error,
                Err(join_error) => {
                    let node = names.get(&join_error.id()).map_or("?", |n: &Arc<str>| n);
                    let what = match join_error.try_into_panic() {
                        Ok(panic) => panic_message(&*panic),
                        Err(_) => "task was cancelled".to_string(),
                    };
                    Error::internal(format!("node panicked: {what}")).in_node(node)
                }
            };
            if failure.is_none() && !error.is_shutting_down() {
                failure = Some(error);
            }
            if signals.suspended.is_cancelled() && failure.is_none() {
                // A sink that stopped after its last commit closes its
                // input; the others must still be let finish theirs.
                continue;
            }
            signals.abort.cancel();
        }
        if let Some(task) = signal_task {
            task.abort();
        }

        if let Some(error) = failure {
            self.status.set_state(RunState::Failed);
            return Err(error);
        }
        if signals.abort.is_cancelled() && !suspended {
            self.status.set_state(RunState::Failed);
            return Err(Error::Interrupted);
        }
        self.status.set_state(RunState::Finished);
        if interrupted.load(Ordering::Relaxed) {
            tracing::info!("drained after interrupt");
        }
        Ok(RunReport {
            drained: signals.drain.is_cancelled(),
            suspended,
            restored: restored_checkpoint,
            duration: started.elapsed(),
            nodes: self
                .nodes
                .iter()
                .zip(self.stats.iter())
                .map(|(node, stats)| NodeReport {
                    name: node.name.clone(),
                    kind: node.kind.label(),
                    rows_in: stats.rows_in(),
                    rows_out: stats.rows_out(),
                    state_rows: stats.state_rows(),
                    rejected: stats.rejected(),
                })
                .collect(),
        })
    }

    /// Finds the checkpoint to start from, checks that it fits this
    /// pipeline, and sets up the coordinator.
    async fn checkpointing(
        &self,
        settings: &CheckpointSettings,
    ) -> Result<(Coordinator, CoordinatorHandles, Option<Loaded>)> {
        let store = &settings.store;
        let mut restored = match &settings.start {
            StartFrom::Fresh => None,
            StartFrom::Latest => {
                store
                    .latest_accepted(|loaded| self.reported_upstream(loaded))
                    .await?
            }
            StartFrom::Checkpoint(id) => Some(store.load(*id).await?),
            StartFrom::Savepoint(name) => {
                let savepoint = store.savepoint(name)?;
                let loaded = savepoint.latest().await?.ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "there is no savepoint `{name}` in `{}`",
                        store.display()
                    ))
                })?;
                Some(loaded)
            }
        };
        if let Some(loaded) = &mut restored {
            self.fit(loaded, settings.allow_non_restored_state)?;
            tracing::info!(
                checkpoint = loaded.manifest.id,
                store = store.display(),
                state_bytes = loaded.manifest.state_bytes(),
                "restoring from checkpoint"
            );
        } else {
            tracing::info!(store = store.display(), "starting without a checkpoint");
        }
        for node in &self.nodes {
            if let NodeKind::Sink(factory) = &node.kind
                && !factory.exactly_once()
            {
                tracing::info!(
                    sink = %node.name,
                    "this sink delivers at least once: a crash can repeat rows written after the last checkpoint"
                );
            }
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                kind: n.kind.label(),
                parallelism: n.parallelism,
                state_keys: n.state_keys.clone(),
                state_version: match &n.kind {
                    NodeKind::Operator(factory) => Some(factory.state_version()),
                    _ => None,
                },
                state: self.state_description(n),
            })
            .collect();
        // New checkpoints are numbered after every one the store holds,
        // and after the one restored (a savepoint may come from a later
        // run than the store's checkpoints): sinks tell transactions
        // apart by these numbers.
        let restored_id = restored.as_ref().map_or(0, |l| l.manifest.id);
        let after = store.last_id().await?.max(restored_id);
        let (coordinator, mut handles) = Coordinator::new(
            store.clone(),
            settings.interval,
            settings.keep,
            nodes,
            self.key_groups,
            after,
            self.signals.clone(),
        );
        let coordinator = coordinator.reporting_to(self.status.clone(), self.stats.clone());
        handles.restored = restored_id;
        Ok((coordinator, handles, restored))
    }

    /// Splits the state of `node`'s `instances` earlier instances by key
    /// group between its instances now.
    fn hand_key_groups_over(
        &self,
        loaded: &mut Loaded,
        node: &crate::graph::Node,
        instances: usize,
    ) -> Result<()> {
        let earlier = (0..instances)
            .map(|i| {
                loaded
                    .snapshots
                    .remove(&(node.name.clone(), i))
                    .and_then(|mut s| s.pop())
                    .unwrap_or_default()
            })
            .collect();
        let parts = crate::checkpoint::redistribute(
            &loaded.manifest.nodes[&node.name],
            loaded.manifest.max_parallelism,
            earlier,
            node.parallelism,
            &node.state_keys,
            self.key_groups,
        )
        .map_err(|e| e.in_node(&node.name))?;
        for (j, parts) in parts.into_iter().enumerate() {
            loaded.snapshots.insert((node.name.clone(), j), parts);
        }
        tracing::info!(
            checkpoint = loaded.manifest.id,
            component = %node.name,
            "state of {instances} instances handed by key group to {}",
            node.parallelism
        );
        Ok(())
    }

    /// What an operator node's state is made of, as it says.
    fn state_description(&self, node: &crate::graph::Node) -> Option<String> {
        let NodeKind::Operator(factory) = &node.kind else {
            return None;
        };
        let inputs: Vec<_> = node
            .input_schemas(&self.nodes)
            .into_iter()
            .cloned()
            .collect();
        factory.state_description(&inputs)
    }

    /// Whether every source reported `loaded` upstream before the run that
    /// took it stopped (see [`crate::component::SourceFactory::reported_upstream`]).
    fn reported_upstream(&self, loaded: &Loaded) -> Result<bool> {
        let id = loaded.manifest.id;
        for node in &self.nodes {
            let NodeKind::Source(factory) = &node.kind else {
                continue;
            };
            let Some(record) = loaded.manifest.nodes.get(&node.name) else {
                continue;
            };
            let positions: Vec<_> = record.instances.iter().map(|i| i.values.clone()).collect();
            if !factory.reported_upstream(id, &positions)? {
                tracing::warn!(
                    checkpoint = id,
                    source = %node.name,
                    "the run stopped before it reported this checkpoint to the source, which may have handed its input to another consumer since: restoring the checkpoint before it"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a checkpoint restores into this pipeline, and how. State is
    /// matched by component name: a component the checkpoint does not hold
    /// starts empty (a sink, source or operator added since), and one that
    /// kept nothing (a stateless transform, changed or not) restores at
    /// any parallelism. A keyed operator whose parallelism changed gets
    /// its key groups from the instances that held them. State that cannot
    /// be restored (a removed component's, one whose kind or state format
    /// changed, or one kept per instance at another parallelism) stops the
    /// run before anything runs, naming the component, unless
    /// `allow_non_restored`, which starts those components without it.
    fn fit(&self, loaded: &mut Loaded, allow_non_restored: bool) -> Result<()> {
        let id = loaded.manifest.id;
        let recorded_groups = loaded.manifest.max_parallelism;
        let mut unfit: Vec<(String, String)> = Vec::new();
        for node in &self.nodes {
            let Some(record) = loaded.manifest.nodes.get(&node.name) else {
                tracing::info!(
                    checkpoint = id,
                    component = %node.name,
                    "the checkpoint holds nothing of this component: it starts empty"
                );
                continue;
            };
            if !record.holds_state() {
                continue;
            }
            if record.kind != node.kind.label() {
                unfit.push((
                    node.name.clone(),
                    format!(
                        "`{}` was a {} and is now a {}",
                        node.name,
                        record.kind,
                        node.kind.label()
                    ),
                ));
                continue;
            }
            if let NodeKind::Operator(factory) = &node.kind {
                let (was, is) = (record.state_version.unwrap_or(1), factory.state_version());
                if was != is {
                    unfit.push((
                        node.name.clone(),
                        format!(
                            "`{}` keeps its state in format version {is}, and the checkpoint holds version {was}",
                            node.name
                        ),
                    ));
                    continue;
                }
                if let (Some(was), Some(is)) = (&record.state, self.state_description(node))
                    && *was != is
                {
                    unfit.push((
                        node.name.clone(),
                        format!(
                            "`{}` keeps other state now: it held {was}, and now holds {is}",
                            node.name
                        ),
                    ));
                    continue;
                }
            }
            let instances = record.instances.len();
            // Sources and sinks keep nothing by key; an operator's keys go
            // where they went if the groups and hash keys are the same.
            let same_placement = instances == node.parallelism
                && (node.parallelism == 1
                    || !matches!(node.kind, NodeKind::Operator(_))
                    || (recorded_groups == Some(self.key_groups.count())
                        && record.state_keys == node.state_keys));
            if same_placement {
                continue;
            }
            if let NodeKind::Source(factory) = &node.kind
                && factory.positions_merge()
                && instances != node.parallelism
            {
                hand_positions_over(loaded, node, instances);
                continue;
            }
            let by_key_group = matches!(&node.kind, NodeKind::Operator(f) if f.state_rescale() == StateRescale::ByKeyGroup);
            if by_key_group && recorded_groups.is_some() {
                self.hand_key_groups_over(loaded, node, instances)?;
                continue;
            }
            let why = if instances == node.parallelism {
                // Same parallelism, other placement: keys now go elsewhere.
                match recorded_groups {
                    None => "its state was checkpointed before key groups, and keys are now placed by key group".to_string(),
                    Some(_) => "its keys are now placed differently (another `max_parallelism` or hash key), and its state is kept per instance".to_string(),
                }
            } else {
                let kept = match &node.kind {
                    NodeKind::Source(_) => "a source's read positions are kept per instance",
                    NodeKind::Sink(_) => "a sink's transactions are kept per instance",
                    NodeKind::Operator(_) if recorded_groups.is_none() => {
                        "its state was checkpointed before key groups"
                    }
                    NodeKind::Operator(_) => "its state is kept per instance",
                };
                format!(
                    "ran {instances} instances and now has parallelism {}, and {kept}",
                    node.parallelism
                )
            };
            unfit.push((node.name.clone(), format!("`{}` {why}", node.name)));
        }
        for (name, record) in &loaded.manifest.nodes {
            if record.holds_state() && !self.nodes.iter().any(|n| &n.name == name) {
                unfit.push((
                    name.clone(),
                    format!("component `{name}` is no longer in the pipeline"),
                ));
            }
        }
        if unfit.is_empty() {
            return Ok(());
        }
        if !allow_non_restored {
            let reasons: Vec<&str> = unfit.iter().map(|(_, why)| why.as_str()).collect();
            return Err(Error::Checkpoint(format!(
                "checkpoint {id} does not fit this pipeline: {}; its state there cannot be restored. Give --allow-non-restored-state to start without it, start with --fresh, or restore into the pipeline it was taken from",
                reasons.join("; ")
            )));
        }
        for (name, why) in unfit {
            tracing::warn!(
                checkpoint = id,
                component = %name,
                "{why}: starting it without its state (--allow-non-restored-state)"
            );
            loaded.snapshots.retain(|(node, _), _| *node != name);
            loaded.manifest.nodes.remove(&name);
        }
        Ok(())
    }

    /// Creates every channel: per edge, one per (producer instance,
    /// consumer instance) pair that exchanges data. Returns each instance's
    /// receiving and sending ends, indexed `[node][instance]`.
    fn wire(&self, capacity: usize) -> (Vec<Vec<Vec<InputChannel>>>, Vec<Vec<Outputs>>) {
        let mut inputs: Vec<Vec<Vec<InputChannel>>> = self
            .nodes
            .iter()
            .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
            .collect();
        let mut outputs: Vec<Vec<Outputs>> = self
            .nodes
            .iter()
            .map(|n| {
                (0..n.parallelism)
                    .map(|_| Outputs::new(n.outputs.len()))
                    .collect()
            })
            .collect();

        for (consumer, node) in self.nodes.iter().enumerate() {
            for (input, edge) in node.inputs.iter().enumerate() {
                for (producer, producer_outputs) in outputs[edge.from].iter_mut().enumerate() {
                    let mut channel = |instance: usize| {
                        let (tx, rx) = mpsc::channel::<Message>(capacity);
                        inputs[consumer][instance].push(InputChannel { rx, input });
                        tx
                    };
                    let sender = match &edge.partitioning {
                        Partitioning::Forward => EdgeSender::forward(channel(producer)),
                        other => {
                            let senders = (0..node.parallelism).map(&mut channel).collect();
                            match other {
                                Partitioning::Broadcast => EdgeSender::broadcast(senders),
                                Partitioning::Hash(_) => EdgeSender::hash(
                                    senders,
                                    edge.key_columns.clone(),
                                    self.key_groups,
                                ),
                                _ => EdgeSender::round_robin(senders, producer),
                            }
                        }
                    };
                    producer_outputs.add_edge(edge.port, sender);
                }
            }
        }
        (inputs, outputs)
    }

    /// Creates every instance before any task starts, so that a component
    /// that fails to create stops the run before anything was read.
    #[allow(clippy::type_complexity)]
    fn create_instances(
        &self,
        mut inputs: Vec<Vec<Vec<InputChannel>>>,
        mut outputs: Vec<Vec<Outputs>>,
        channel_capacity: usize,
        mut handles: Option<CoordinatorHandles>,
        mut restored: Option<Loaded>,
        dead_letter: Option<mpsc::Sender<arrow::record_batch::RecordBatch>>,
    ) -> Result<Vec<(Arc<str>, futures::future::BoxFuture<'static, Result<()>>)>> {
        use futures::FutureExt;

        let mut tasks = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let name: Arc<str> = node.name.as_str().into();
            let node_inputs = std::mem::take(&mut inputs[n]);
            let node_outputs = std::mem::take(&mut outputs[n]);
            for (index, (channels, outputs)) in
                node_inputs.into_iter().zip(node_outputs).enumerate()
            {
                let instance = InstanceInfo {
                    index,
                    parallelism: node.parallelism,
                    task: self.task,
                };
                let kind = match node.kind {
                    NodeKind::Source(_) => MetricsKind::Source,
                    NodeKind::Operator(_) => MetricsKind::Operator,
                    NodeKind::Sink(_) => MetricsKind::Sink,
                };
                let side_outputs: Vec<String> = node
                    .outputs
                    .iter()
                    .skip(1)
                    .filter_map(|p| p.name.clone())
                    .collect();
                let labels = MetricsLabels {
                    kind,
                    component: &node.name,
                    instance: index,
                    side_outputs: &side_outputs,
                };
                let metrics = NodeMetrics::new(labels, channel_capacity, self.stats[n].clone());
                let errors = metrics.error_counter();
                let env = TaskEnv {
                    node: name.clone(),
                    instance,
                    metrics,
                    signals: self.signals.clone(),
                    dead_letters: DeadLetters {
                        policy: node.on_error,
                        sender: dead_letter.clone(),
                        counter: ::metrics::counter!(
                            metrics::DEAD_LETTERED_TOTAL,
                            "component" => node.name.clone()
                        ),
                        logged: Default::default(),
                    },
                    checkpoint: handles.as_ref().map(|h| TaskCheckpoint {
                        node: n,
                        acks: h.acks.clone(),
                        restored: h.restored,
                    }),
                };
                let mut snapshots = restored
                    .as_mut()
                    .and_then(|l| l.snapshots.remove(&(node.name.clone(), index)))
                    .unwrap_or_default();
                let in_node = |e: Error| e.in_node(&node.name);
                let task = match &node.kind {
                    NodeKind::Source(factory) => {
                        let source = factory.create(instance).map_err(in_node)?;
                        let watermarks = node
                            .event_time
                            .as_ref()
                            .map(|(config, column)| WatermarkGenerator::new(config, *column));
                        let positions = snapshots.into_iter().map(|s| s.values).collect();
                        let checkpoints = handles.as_ref().map(|h| tasks::SourceCheckpoints {
                            trigger: h.trigger.clone(),
                            completed: h.completed.clone(),
                        });
                        tasks::run_source(env, source, outputs, watermarks, positions, checkpoints)
                            .boxed()
                    }
                    NodeKind::Operator(factory) => {
                        let schemas: Vec<_> = node
                            .input_schemas(&self.nodes)
                            .into_iter()
                            .cloned()
                            .collect();
                        let operator = factory.create(instance, &schemas).map_err(in_node)?;
                        let completed = handles.as_ref().map(|h| h.completed.clone());
                        tasks::run_operator(
                            env,
                            operator,
                            Inputs::new(channels),
                            outputs,
                            snapshots,
                            completed,
                        )
                        .boxed()
                    }
                    NodeKind::Sink(factory) => {
                        let schema = node.input_schemas(&self.nodes)[0].clone();
                        let sink = factory.create(instance, schema).map_err(in_node)?;
                        let transaction = snapshots.pop().map(|s| s.values);
                        let commits = handles.as_mut().and_then(|h| h.commits[n][index].take());
                        tasks::run_sink(env, sink, Inputs::new(channels), transaction, commits)
                            .boxed()
                    }
                };
                let node_name = node.name.clone();
                let task = task.map(move |result| {
                    result.map_err(|e| {
                        if !e.is_shutting_down() {
                            errors.increment(1);
                        }
                        e.in_node(&node_name)
                    })
                });
                tasks.push((name.clone(), task.boxed()));
            }
        }
        Ok(tasks)
    }
}

/// Hands the positions of a source's `instances` earlier instances (of a
/// shared consumer) to its instances now: instance *i* takes those of the
/// earlier instances *i*, *i* + *n*, ...
fn hand_positions_over(loaded: &mut Loaded, node: &crate::graph::Node, instances: usize) {
    for earlier in 0..instances {
        if let Some(parts) = loaded.snapshots.remove(&(node.name.clone(), earlier)) {
            let target = (node.name.clone(), earlier % node.parallelism);
            loaded.snapshots.entry(target).or_default().extend(parts);
        }
    }
    tracing::info!(
        checkpoint = loaded.manifest.id,
        component = %node.name,
        "positions of {instances} instances handed to {}",
        node.parallelism
    );
}

/// SIGUSR1: a checkpoint now. SIGUSR2: a savepoint now.
fn listen_for_checkpoint_requests(signals: &Signals) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let requests = [
            (
                SignalKind::user_defined1(),
                signals.checkpoint_now.clone(),
                "SIGUSR1: taking a checkpoint",
            ),
            (
                SignalKind::user_defined2(),
                signals.savepoint_now.clone(),
                "SIGUSR2: taking a savepoint",
            ),
        ];
        for (kind, now, message) in requests {
            if let Ok(mut requests) = signal(kind) {
                tokio::spawn(async move {
                    while requests.recv().await.is_some() {
                        tracing::info!("{message}");
                        now.notify_one();
                    }
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = signals;
}

/// First signal: drain. Second: abort.
async fn handle_os_signals(signals: Signals, interrupted: Arc<AtomicBool>) {
    if wait_for_signal().await.is_err() {
        return;
    }
    interrupted.store(true, Ordering::Relaxed);
    tracing::info!("interrupt received: draining (interrupt again to stop at once)");
    signals.drain.cancel();
    if wait_for_signal().await.is_ok() {
        tracing::warn!("second interrupt: stopping without draining");
        signals.abort.cancel();
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
