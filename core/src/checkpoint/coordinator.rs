//! The checkpoint coordinator: triggers barriers at the sources, gathers
//! what every instance recorded, writes the checkpoint, lets the sources
//! report it upstream, and then tells the sinks to commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::store::{InstanceRecord, Manifest, NodeRecord};
use super::{CheckpointStore, Snapshot};
use crate::error::{Error, Result};
use crate::partition::KeyGroups;
use crate::runtime::{NodeStats, RunStatus, Signals};

/// What an instance tells the coordinator.
#[derive(Debug)]
pub(crate) struct Ack {
    /// The checkpoint answered (unused for [`AckKind::Ended`]).
    pub(crate) checkpoint: u64,
    pub(crate) node: usize,
    pub(crate) instance: usize,
    pub(crate) kind: AckKind,
}

#[derive(Debug)]
pub(crate) enum AckKind {
    /// A source emitted the barrier at this read position.
    Position(serde_json::Value),
    /// An operator's state at the barrier.
    State(Snapshot),
    /// A sink pre-committed this transaction at the barrier.
    Transaction(serde_json::Value),
    /// The instance has ended: a source at this final position, a sink
    /// with this final pre-committed transaction (it then waits for its
    /// commit), an operator with nothing held.
    Ended(serde_json::Value),
    /// An operator has ended holding this state (a running aggregate's
    /// keys), which later checkpoints keep: a run restored from one goes
    /// on from it.
    EndedWithState(Snapshot),
    /// A source has reported the completed checkpoint upstream (committed
    /// a Kafka group's offsets, say).
    Reported,
}

/// A sink instance is told to make a pre-committed transaction visible.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub(crate) transaction: serde_json::Value,
    /// The last commit the sink will get: it may finish.
    pub(crate) last: bool,
}

/// What the runtime hands each task to take part.
pub(crate) struct CoordinatorHandles {
    pub(crate) acks: mpsc::UnboundedSender<Ack>,
    pub(crate) trigger: watch::Receiver<u64>,
    /// The last checkpoint completed, and whether it was the final one.
    pub(crate) completed: watch::Receiver<(u64, bool)>,
    /// Per node, per instance: the commit channel of a sink instance.
    pub(crate) commits: Vec<Vec<Option<mpsc::UnboundedReceiver<Commit>>>>,
    /// The checkpoint the run restored, or 0.
    pub(crate) restored: u64,
}

/// A node as the coordinator sees it.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) parallelism: usize,
    /// Per input, the columns that place its state in key groups.
    pub(crate) state_keys: Vec<Option<Vec<String>>>,
    /// An operator's state format version.
    pub(crate) state_version: Option<u32>,
    /// What an operator's state is made of.
    pub(crate) state: Option<String>,
}

/// What each (node, instance) answered for one checkpoint.
type Answers = HashMap<(usize, usize), AckKind>;

/// A written checkpoint waiting for its sources to report it upstream.
struct Reporting {
    checkpoint: u64,
    waiting: HashSet<(usize, usize)>,
    /// What each sink is then told to commit.
    commits: Vec<(usize, usize, serde_json::Value)>,
}

pub(crate) struct Coordinator {
    store: CheckpointStore,
    interval: Duration,
    keep: usize,
    nodes: Vec<NodeInfo>,
    key_groups: KeyGroups,
    next_id: u64,
    trigger: watch::Sender<u64>,
    completed: watch::Sender<(u64, bool)>,
    acks: mpsc::UnboundedReceiver<Ack>,
    commits: Vec<Vec<Option<mpsc::UnboundedSender<Commit>>>>,
    /// The checkpoint being taken, and what has come in for it.
    in_flight: Option<(u64, Answers)>,
    /// A checkpoint written whose sinks wait to commit until every source
    /// has reported it upstream.
    reporting: Option<Reporting>,
    ended: HashMap<(usize, usize), serde_json::Value>,
    /// The state of operators that ended holding some.
    ended_states: HashMap<(usize, usize), Snapshot>,
    /// The checkpoint in progress that is to be kept as a savepoint.
    saving: Option<u64>,
    /// The checkpoint in progress that the run stops at.
    suspending: Option<u64>,
    signals: Signals,
    /// Asks the dead-letter task to commit what it has been sent, before
    /// a checkpoint is written (see [`Coordinator::flush_dead_letters`]).
    dead_letters: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
    /// Where each checkpoint is reported as it starts and completes (the
    /// console), with the instances whose barrier alignment it reports.
    status: Option<(Arc<RunStatus>, NodeStatsList)>,
}

/// Every node's live counters, in node order.
type NodeStatsList = Arc<[Arc<NodeStats>]>;

impl Coordinator {
    /// A coordinator for checkpoints `after + 1, ...` of these nodes, and
    /// the handles the tasks use to talk to it.
    pub(crate) fn new(
        store: CheckpointStore,
        interval: Duration,
        keep: usize,
        nodes: Vec<NodeInfo>,
        key_groups: KeyGroups,
        after: u64,
        signals: Signals,
    ) -> (Self, CoordinatorHandles) {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (trigger_tx, trigger_rx) = watch::channel(0);
        let (completed_tx, completed_rx) = watch::channel((0, false));
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for node in &nodes {
            let (mut s, mut r) = (Vec::new(), Vec::new());
            for _ in 0..node.parallelism {
                if node.kind == "sink" {
                    let (tx, rx) = mpsc::unbounded_channel();
                    s.push(Some(tx));
                    r.push(Some(rx));
                } else {
                    s.push(None);
                    r.push(None);
                }
            }
            senders.push(s);
            receivers.push(r);
        }
        let coordinator = Coordinator {
            store,
            interval,
            keep,
            nodes,
            key_groups,
            next_id: after + 1,
            trigger: trigger_tx,
            completed: completed_tx,
            acks: ack_rx,
            commits: senders,
            in_flight: None,
            reporting: None,
            ended: HashMap::new(),
            ended_states: HashMap::new(),
            saving: None,
            suspending: None,
            signals,
            dead_letters: None,
            status: None,
        };
        let handles = CoordinatorHandles {
            acks: ack_tx,
            trigger: trigger_rx,
            completed: completed_rx,
            commits: receivers,
            restored: 0,
        };
        (coordinator, handles)
    }

    /// Has the dead letters flushed before each checkpoint is written.
    pub(crate) fn flush_dead_letters_with(
        &mut self,
        flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    ) {
        self.dead_letters = Some(flushes);
    }

    /// Commits the dead letters sent so far. Every instance has answered
    /// the checkpoint, and each sent what it rejected before its barrier
    /// ahead of its answer: so every record rejected before the checkpoint
    /// is committed before the checkpoint is, and a restore from it, which
    /// does not read those records again, loses none of them. (Records
    /// rejected after the barrier and committed here are rejected again
    /// after such a restore: dead letters are at least once.)
    async fn flush_dead_letters(&self) {
        let Some(flushes) = &self.dead_letters else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if flushes.send(done).is_err() {
            return;
        }
        tokio::select! {
            _ = self.signals.abort.cancelled() => {}
            // A dead-letter task that failed has failed the run.
            _ = flushed => {}
        }
    }

    fn instances(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| (0..node.parallelism).map(move |i| (n, i)))
    }

    fn all_ended(&self) -> bool {
        self.instances().all(|key| self.ended.contains_key(&key))
    }

    fn sources_all_ended(&self) -> bool {
        self.instances()
            .filter(|(n, _)| self.nodes[*n].kind == "source")
            .all(|key| self.ended.contains_key(&key))
    }

    /// Runs until every instance has ended and the final checkpoint is
    /// written and committed, or the run is aborted.
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = self.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                _ = ticks.tick(), if self.idle() && !self.sources_all_ended() => {
                    self.start();
                }
                _ = self.signals.checkpoint_now.notified(), if self.idle() && !self.sources_all_ended() => {
                    self.start();
                    // The next periodic one is an interval after this one.
                    ticks.reset();
                }
                _ = self.signals.savepoint_now.notified(), if self.idle() && !self.sources_all_ended() => {
                    self.saving = Some(self.next_id);
                    self.start();
                    ticks.reset();
                }
                _ = self.signals.suspend.notified(), if self.idle() && !self.sources_all_ended() => {
                    tracing::info!(checkpoint = self.next_id, "suspending: taking a last checkpoint to stop at");
                    self.suspending = Some(self.next_id);
                    self.start();
                }
                ack = self.acks.recv() => {
                    let Some(ack) = ack else { return Ok(()) };
                    self.receive(ack);
                }
            }
            self.complete_if_ready().await?;
            if self.commit_if_reported() {
                // Suspended: the sinks stop once they have committed.
                self.signals.suspended.cancel();
                return Ok(());
            }
            if self.idle() && self.all_ended() {
                return self.finish().await;
            }
        }
    }

    /// No checkpoint is being taken or committed.
    fn idle(&self) -> bool {
        self.in_flight.is_none() && self.reporting.is_none()
    }

    /// Reports each checkpoint to `status` as it starts and completes,
    /// with the longest barrier alignment among the instances of `stats`.
    pub(crate) fn reporting_to(mut self, status: Arc<RunStatus>, stats: NodeStatsList) -> Self {
        self.status = Some((status, stats));
        self
    }

    /// Sends the next checkpoint's barriers from the sources.
    fn start(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        if let Some((status, _)) = &self.status {
            status.checkpoint_started(id);
        }
        self.in_flight = Some((id, HashMap::new()));
        tracing::debug!(checkpoint = id, "checkpoint triggered");
        self.trigger.send_replace(id);
    }

    fn receive(&mut self, ack: Ack) {
        let key = (ack.node, ack.instance);
        match ack.kind {
            AckKind::Ended(value) => {
                self.ended.insert(key, value);
            }
            AckKind::EndedWithState(snapshot) => {
                self.ended.insert(key, snapshot.values.clone());
                self.ended_states.insert(key, snapshot);
            }
            AckKind::Reported => match &mut self.reporting {
                Some(reporting) if reporting.checkpoint == ack.checkpoint => {
                    reporting.waiting.remove(&key);
                }
                _ => {}
            },
            kind => match &mut self.in_flight {
                Some((id, acks)) if *id == ack.checkpoint => {
                    acks.insert(key, kind);
                }
                _ => tracing::warn!(
                    checkpoint = ack.checkpoint,
                    node = %self.nodes[ack.node].name,
                    "answer for a checkpoint not in progress"
                ),
            },
        }
    }

    /// Writes the checkpoint in flight once every instance has answered
    /// (or ended), then tells the sources it is complete; the sinks commit
    /// once every source has reported it ([`Coordinator::commit_if_reported`]).
    async fn complete_if_ready(&mut self) -> Result<()> {
        let ready = match &self.in_flight {
            Some((_, acks)) => self
                .instances()
                .all(|key| acks.contains_key(&key) || self.ended.contains_key(&key)),
            None => false,
        };
        if !ready {
            return Ok(());
        }
        let (id, mut acks) = self.in_flight.take().expect("checked above");
        let mut manifest = self.manifest(id, false);
        let mut snapshots = Vec::new();
        let mut commits = Vec::new();
        for (n, i) in self.instances().collect::<Vec<_>>() {
            let name = self.nodes[n].name.clone();
            let record = &mut manifest.nodes.get_mut(&name).expect("every node").instances[i];
            match acks.remove(&(n, i)) {
                Some(AckKind::Position(position)) => record.values = position,
                Some(AckKind::Transaction(transaction)) => {
                    record.values = transaction.clone();
                    commits.push((n, i, transaction));
                }
                Some(AckKind::State(snapshot)) => {
                    record.values = snapshot.values.clone();
                    snapshots.push((name, i, snapshot));
                }
                Some(AckKind::Ended(_) | AckKind::EndedWithState(_) | AckKind::Reported) | None => {
                    record.values = self.ended.get(&(n, i)).cloned().unwrap_or_default();
                    if let Some(snapshot) = self.ended_states.get(&(n, i)) {
                        snapshots.push((name, i, snapshot.clone()));
                    }
                }
            }
        }
        self.flush_dead_letters().await;
        self.write(&mut manifest, &snapshots).await?;
        crash_point(id);
        if self.saving.take() == Some(id) {
            self.keep_as_savepoint(id).await;
        }
        // Sources report the checkpoint upstream first, sinks commit after:
        // a process that dies in between has its output staged, published
        // when it restarts, and never read twice by whoever takes over its
        // input.
        self.completed.send_replace((id, false));
        self.reporting = Some(Reporting {
            checkpoint: id,
            waiting: self.source_instances(),
            commits,
        });
        Ok(())
    }

    /// Copies checkpoint `id` to savepoint `savepoint-<id>`. A failure is
    /// logged: the checkpoint itself is complete, and the run goes on.
    async fn keep_as_savepoint(&self, id: u64) {
        let name = format!("savepoint-{id}");
        match self.store.save(id, &name).await {
            Ok(savepoint) => tracing::info!(
                checkpoint = id,
                savepoint = %name,
                "savepoint kept in `{}` until deleted; start from it with --from-savepoint {name}",
                savepoint.display()
            ),
            Err(error) => {
                tracing::error!(checkpoint = id, %error, "the savepoint could not be kept")
            }
        }
    }

    fn source_instances(&self) -> HashSet<(usize, usize)> {
        self.instances()
            .filter(|(n, _)| self.nodes[*n].kind == "source")
            .collect()
    }

    /// Sends the sinks their commits once every source has reported.
    /// Returns whether that was the checkpoint the run stops at: its
    /// commits are then the sinks' last.
    fn commit_if_reported(&mut self) -> bool {
        if !self
            .reporting
            .as_ref()
            .is_some_and(|r| r.waiting.is_empty())
        {
            return false;
        }
        let reporting = self.reporting.take().expect("checked above");
        let last = self.suspending == Some(reporting.checkpoint);
        for (n, i, transaction) in reporting.commits {
            self.send_commit(n, i, transaction, last);
        }
        last
    }

    /// The final checkpoint: every source has ended (or was drained) and
    /// every sink has pre-committed the rest of its output.
    async fn finish(mut self) -> Result<()> {
        let id = self.next_id;
        let mut manifest = self.manifest(id, true);
        let mut snapshots = Vec::new();
        for (n, i) in self.instances().collect::<Vec<_>>() {
            let name = &self.nodes[n].name;
            manifest.nodes.get_mut(name).expect("every node").instances[i].values =
                self.ended.get(&(n, i)).cloned().unwrap_or_default();
            if let Some(snapshot) = self.ended_states.get(&(n, i)) {
                snapshots.push((name.clone(), i, snapshot.clone()));
            }
        }
        self.flush_dead_letters().await;
        self.write(&mut manifest, &snapshots).await?;
        crash_point(id);
        self.completed.send_replace((id, true));
        let mut waiting = self.source_instances();
        while !waiting.is_empty() {
            let ack = tokio::select! {
                _ = self.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                ack = self.acks.recv() => ack,
            };
            match ack {
                Some(Ack {
                    checkpoint,
                    node,
                    instance,
                    kind: AckKind::Reported,
                }) if checkpoint == id => {
                    waiting.remove(&(node, instance));
                }
                Some(_) => {}
                None => break,
            }
        }
        for (n, i) in self.instances().collect::<Vec<_>>() {
            if self.nodes[n].kind == "sink" {
                let transaction = self.ended.get(&(n, i)).cloned().unwrap_or_default();
                self.send_commit(n, i, transaction, true);
            }
        }
        Ok(())
    }

    fn manifest(&self, id: u64, finished: bool) -> Manifest {
        let nodes: BTreeMap<String, NodeRecord> = self
            .nodes
            .iter()
            .map(|node| {
                (
                    node.name.clone(),
                    NodeRecord {
                        kind: node.kind.to_string(),
                        instances: vec![InstanceRecord::default(); node.parallelism],
                        state_keys: node.state_keys.clone(),
                        state_version: node.state_version,
                        state: node.state.clone(),
                    },
                )
            })
            .collect();
        Manifest {
            id,
            created_at_ms: crate::runtime::wall_clock_millis(),
            finished,
            max_parallelism: Some(self.key_groups.count()),
            nodes,
        }
    }

    /// Writes a checkpoint, trying again for a while if the store fails:
    /// a full disk, a process out of file descriptors or an unreachable
    /// bucket often recover, and meanwhile the pipeline goes on (its sinks
    /// hold what they pre-committed). Only a store that stays broken stops
    /// the run.
    async fn write(
        &self,
        manifest: &mut Manifest,
        snapshots: &[(String, usize, Snapshot)],
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        let mut wait = WRITE_RETRY_FIRST;
        loop {
            let error = match self.store.write(manifest, snapshots).await {
                Ok(()) => break,
                Err(error) => error,
            };
            if started.elapsed() >= WRITE_RETRY_FOR {
                return Err(Error::connector(
                    "checkpoint store",
                    false,
                    format!(
                        "checkpoint {} could not be written to {} (tried for {}s): {error}",
                        manifest.id,
                        self.store.display(),
                        WRITE_RETRY_FOR.as_secs()
                    ),
                ));
            }
            tracing::warn!(
                checkpoint = manifest.id,
                %error,
                "checkpoint could not be written; trying again in {wait:?}"
            );
            tokio::select! {
                _ = self.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(WRITE_RETRY_MOST);
        }
        tracing::info!(
            checkpoint = manifest.id,
            state_bytes = manifest.state_bytes(),
            finished = manifest.finished,
            "checkpoint complete"
        );
        if let Some((status, stats)) = &self.status {
            let alignment = stats
                .iter()
                .flat_map(|node| node.instances())
                .map(|instance| instance.last_alignment())
                .max()
                .unwrap_or_default();
            status.checkpoint_completed(
                manifest.id,
                manifest.state_bytes(),
                alignment,
                manifest.finished,
            );
        }
        if let Err(error) = self.store.retain(self.keep).await {
            tracing::warn!(%error, "could not delete old checkpoints");
        }
        Ok(())
    }

    fn send_commit(
        &self,
        node: usize,
        instance: usize,
        transaction: serde_json::Value,
        last: bool,
    ) {
        if let Some(Some(sender)) = self.commits.get(node).and_then(|n| n.get(instance)) {
            // A sink that has gone away failed; its error ends the run.
            let _ = sender.send(Commit { transaction, last });
        }
    }
}

/// How long a failing checkpoint write is tried again before the run
/// stops, and the waits between tries.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(60);
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(100);
const WRITE_RETRY_MOST: Duration = Duration::from_secs(5);

/// Fault injection for crash tests: with `FLUMEN_CRASH_BEFORE_COMMIT=<id>`
/// the process dies once checkpoint `id` is recorded and before any sink
/// commits it, the moment a two-phase commit is most fragile.
fn crash_point(id: u64) {
    let armed = std::env::var("FLUMEN_CRASH_BEFORE_COMMIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if armed == Some(id) {
        tracing::error!(
            checkpoint = id,
            "FLUMEN_CRASH_BEFORE_COMMIT: dying before the commit"
        );
        std::process::abort();
    }
}
