//! The Kinesis source and its instances.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use aws_sdk_kinesis::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use flumen_core::component::SplitChange;
use flumen_core::event_time::EventTimeConfig;
use flumen_core::prelude::*;

use super::aggregated::deaggregate;
use super::config::{KinesisSourceConfig, StartFrom};
use super::leases::{LeaseBook, LeaseTable, LeaseWrite, WriteError, recorded_in, sequence_order};
use super::reader::{RawRecord, ReadSettings, ShardEvent, StartAt, read_shard};
use super::shards::ShardGraph;
use super::tasks::{KinesisTasks, shard_of};
use super::{StreamId, list_shards};
use crate::payload::{Format, Payloads, ValueDecoder, shown};

/// A source reading a Kinesis stream. Built from a [`KinesisSourceConfig`].
#[derive(Clone)]
pub struct KinesisSource {
    config: Arc<KinesisSourceConfig>,
    stream: StreamId,
    format: Format,
    /// Columns decoded from record data.
    values: SchemaRef,
    /// Those plus the metadata columns.
    schema: SchemaRef,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KinesisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisSource")
            .field("stream", &self.config.stream)
            .finish()
    }
}

/// What the instances of one run share: the stream's shards, which
/// instance reads which, and what the restored checkpoint recorded.
#[derive(Debug, Default)]
struct Shared {
    /// Instances past restore: shards are given out only once all are,
    /// so that every restored position is known.
    opened: AtomicUsize,
    state: Mutex<SharedState>,
    /// Held while the lease table is read and written, so that a scan
    /// never sees a checkpoint's hand-over half applied.
    lease_writes: tokio::sync::Mutex<()>,
    /// Keeps the leases (heartbeats, taking, handing over).
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.lock().expect("not poisoned").take() {
            keeper.abort();
        }
    }
}

#[derive(Debug, Default)]
struct SharedState {
    graph: ShardGraph,
    /// Restored positions, over all instances: a shard may go to another
    /// instance than before.
    restored: HashMap<String, String>,
    restored_any: bool,
    /// Which instance reads each shard being read.
    owners: HashMap<String, usize>,
    /// Shards read to their end whose end is not yet in a completed
    /// checkpoint: neither read again nor their children read yet.
    finishing: HashSet<String>,
    /// Closed shards passed over by `start_from: latest`: their children
    /// start where `start_from` says, not at their beginning.
    skipped: HashSet<String>,
    /// Shards read up to the present, with `stop_at: latest`.
    caught_up: HashSet<String>,
    /// The first listing has been made.
    listed: bool,
    /// When the shards are to be listed next.
    next_listing: Option<Instant>,
    /// Who this process is in the lease table, as restored.
    member: Option<String>,
    /// With `leases`: the table, and what this process holds of it.
    lease_table: Option<LeaseTable>,
    leases: Option<LeaseBook>,
    /// Shards this process started reading since it last handed them
    /// over (or ever).
    started: HashSet<String>,
    /// Per checkpoint being recorded in the lease table: the positions of
    /// the instances that reported it so far. The last one writes.
    deposits: BTreeMap<u64, Vec<Position>>,
}

/// What an instance records in a checkpoint.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Position {
    /// With `leases`: who this process is in the lease table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member: Option<String>,
    /// Per shard being read: the sequence number of the last record
    /// emitted.
    #[serde(default)]
    shards: BTreeMap<String, String>,
    /// Shards read to their end.
    #[serde(default)]
    pub(crate) finished: BTreeSet<String>,
    /// With `leases`: shards no longer read, to hand over to the process
    /// that asked for them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    released: BTreeSet<String>,
    /// With `stop_at: latest`: shards read up to the present.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    caught_up: BTreeSet<String>,
}

impl KinesisSource {
    pub(super) fn new(
        config: KinesisSourceConfig,
        format: Format,
        values: SchemaRef,
    ) -> Result<Self> {
        let metadata = &config.metadata;
        let text = DataType::Utf8;
        let extra = [
            (&metadata.shard_id, text.clone()),
            (&metadata.sequence_number, text.clone()),
            (&metadata.partition_key, text),
            (
                &metadata.approximate_arrival_timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
        ];
        let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (name, data_type) in extra {
            if let Some(name) = name {
                if fields.iter().any(|f| f.name() == name) {
                    return Err(Error::config(
                        "metadata",
                        format!("column `{name}` is already a column of the records"),
                    ));
                }
                fields.push(Field::new(name, data_type, true));
            }
        }
        Ok(KinesisSource {
            stream: StreamId::new(&config.stream),
            config: Arc::new(config),
            format,
            values,
            schema: Arc::new(Schema::new(fields)),
            shared: Arc::default(),
        })
    }
}

impl SourceFactory for KinesisSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>> {
        let (events_tx, events) = mpsc::channel(16);
        let source = match instance.task {
            // Each task (a shard) reads on its own: it shares nothing with
            // the other tasks of this process.
            Some(_) => KinesisSource {
                shared: Arc::default(),
                ..self.clone()
            },
            None => self.clone(),
        };
        Ok(Box::new(KinesisInstance {
            source,
            decoder: ValueDecoder::new(self.format.clone(), self.values.clone()),
            instance,
            node: "kinesis".into(),
            checkpointing: false,
            client: None,
            events_tx,
            events,
            reading: HashMap::new(),
            positions: BTreeMap::new(),
            finished_here: BTreeSet::new(),
            released: BTreeSet::new(),
            splits: HashMap::new(),
            split_changes: Vec::new(),
            last_split: None,
            rejected: Vec::new(),
            wants_checkpoint: false,
        }))
    }

    fn runs_as_tasks(&self) -> bool {
        self.config.tasks
    }

    fn task_group(&self) -> Result<Option<Box<dyn TaskGroup>>> {
        if !self.config.tasks {
            return Ok(None);
        }
        Ok(Some(Box::new(KinesisTasks::join(
            self.config.clone(),
            self.stream.clone(),
        )?)))
    }

    fn default_event_time(&self) -> Option<EventTimeConfig> {
        self.config
            .metadata
            .approximate_arrival_timestamp
            .as_ref()
            .map(EventTimeConfig::new)
    }

    /// With `leases`: whether the lease table shows the checkpoint
    /// recorded ([`recorded_in`]). If the process stopped in between,
    /// another may have taken its shards from the checkpoint before. A
    /// task's position is in its checkpoints alone.
    fn reported_upstream(&self, checkpoint: u64, positions: &[serde_json::Value]) -> Result<bool> {
        let Some(settings) = self.config.leases.as_ref().filter(|_| !self.config.tasks) else {
            return Ok(true);
        };
        let mut member = None;
        let mut shards = HashMap::new();
        let mut finished = HashSet::new();
        for position in positions {
            let position: Position = serde_json::from_value(position.clone())
                .map_err(|e| Error::Checkpoint(format!("not a Kinesis read position: {e}")))?;
            member = member.or(position.member);
            shards.extend(position.shards);
            finished.extend(position.finished);
        }
        let Some(member) = member else {
            return Ok(true);
        };
        let aws = settings
            .aws
            .clone()
            .unwrap_or_else(|| self.config.aws.clone());
        let table = settings.table.clone().expect("named when built");
        // Called outside the runtime's tasks: scan on a runtime of its own.
        let rows = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::internal(e.to_string()))?;
                    runtime.block_on(async {
                        LeaseTable::new(aws.dynamodb_client().await, table)
                            .scan()
                            .await
                    })
                })
                .join()
                .map_err(|_| Error::internal("reading the lease table panicked"))?
        })?;
        match recorded_in(&rows, &member, checkpoint, &shards, &finished) {
            Ok(()) => Ok(true),
            Err(why) => {
                tracing::info!(checkpoint, %why, "the lease table does not show this checkpoint recorded");
                Ok(false)
            }
        }
    }
}

struct KinesisInstance {
    source: KinesisSource,
    decoder: ValueDecoder,
    instance: InstanceInfo,
    node: Arc<str>,
    checkpointing: bool,
    client: Option<Client>,
    events_tx: mpsc::Sender<ShardEvent>,
    events: mpsc::Receiver<ShardEvent>,
    /// The shards this instance reads, each by a task of its own.
    reading: HashMap<String, JoinHandle<()>>,
    /// Per shard this instance has read from: the last record emitted.
    positions: BTreeMap<String, String>,
    /// Shards this instance read to their end, not yet in a completed
    /// checkpoint.
    finished_here: BTreeSet<String>,
    /// With `leases`: shards this instance stopped reading because another
    /// process asked for them, until they are handed over.
    released: BTreeSet<String>,
    splits: HashMap<String, u64>,
    split_changes: Vec<SplitChange>,
    last_split: Option<u64>,
    rejected: Vec<Rejected>,
    wants_checkpoint: bool,
}

impl Drop for KinesisInstance {
    fn drop(&mut self) {
        for task in self.reading.values() {
            task.abort();
        }
    }
}

impl KinesisInstance {
    /// Whether this instance shares the stream's shards with other
    /// processes itself. A task's shard is leased by its task group.
    fn follows_leases(&self) -> bool {
        self.source.config.leases.is_some() && self.instance.task.is_none()
    }

    fn settings(&self) -> ReadSettings {
        let config = &self.source.config;
        ReadSettings {
            stream: self.source.stream.clone(),
            limit: i32::from(config.batch_size),
            poll_interval: config.poll_interval,
            idle_poll_interval: config.idle_poll_interval,
            stall_timeout: config.stall_timeout,
        }
    }

    fn split(&mut self, shard: &str) -> u64 {
        let next = self.splits.len() as u64;
        *self.splits.entry(shard.to_string()).or_insert(next)
    }

    /// Lists the shards when it is time (one instance does it for all),
    /// gives out the shards that are ready, and starts reading those given
    /// to this instance.
    async fn refresh(&mut self, client: &Client) -> Result<()> {
        let now = Instant::now();
        let due = {
            let mut state = self.source.shared.state.lock().expect("not poisoned");
            let due = state.next_listing.is_none_or(|t| t <= now);
            if due {
                // Taken: the other instances wait for this one's listing.
                state.next_listing = Some(now + self.source.config.shard_discovery_interval);
            }
            due
        };
        if due {
            let listed = match list_shards(client, &self.source.stream).await {
                Ok(listed) => listed,
                // Once the shards are known, a failed listing only delays
                // finding new ones: the shards being read go on.
                Err(error)
                    if self
                        .source
                        .shared
                        .state
                        .lock()
                        .expect("not poisoned")
                        .listed =>
                {
                    tracing::warn!(node = %self.node, %error, "could not list the stream's shards; listing again later");
                    return self.assign_and_start(client);
                }
                Err(error) => return Err(error),
            };
            let mut state = self.source.shared.state.lock().expect("not poisoned");
            let first = !state.listed;
            state.graph.update(listed);
            if first {
                state.listed = true;
                let fresh = !state.restored_any;
                if fresh && self.source.config.start_from == StartFrom::Latest {
                    let skipped = state.graph.skip_closed();
                    state.skipped.extend(skipped);
                }
                tracing::info!(
                    node = %self.node,
                    stream = %self.source.stream,
                    shards = state.graph.len(),
                    "listed the stream's shards"
                );
            }
        }
        self.assign_and_start(client)
    }

    /// Gives each ready shard nobody reads to the instance reading the
    /// fewest, and starts reading those given to this one.
    fn assign_and_start(&mut self, client: &Client) -> Result<()> {
        let mut starting = Vec::new();
        {
            let mut state = self.source.shared.state.lock().expect("not poisoned");
            if !state.listed {
                return Ok(());
            }
            let parallelism = self.instance.parallelism;
            // A task reads its shard alone, once its group has leased it
            // (after its parents ended).
            let task_shard = self.instance.task.map(shard_of);
            let candidates: Vec<&super::shards::Shard> = match &task_shard {
                Some(shard) => state.graph.get(shard).into_iter().collect(),
                None => state.graph.ready().collect(),
            };
            let ready: Vec<String> = candidates
                .into_iter()
                .filter(|shard| !state.graph.is_finished(&shard.id))
                .filter(|shard| !state.owners.contains_key(&shard.id))
                .filter(|shard| !state.finishing.contains(&shard.id))
                .filter(|shard| !state.caught_up.contains(&shard.id))
                .filter(|shard| {
                    state.leases.as_ref().is_none_or(|book| {
                        book.held.contains_key(&shard.id)
                            && !book.handing_over.contains_key(&shard.id)
                    })
                })
                .map(|shard| shard.id.clone())
                .collect();
            for id in ready {
                let mut load = vec![0usize; parallelism];
                for owner in state.owners.values() {
                    load[*owner] += 1;
                }
                let (least, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, n)| **n)
                    .expect("at least one instance");
                state.owners.insert(id, least);
            }
            for (id, owner) in &state.owners {
                if *owner == self.instance.index && !self.reading.contains_key(id) {
                    let start = self.start_of(&state, id)?;
                    starting.push((id.clone(), start));
                }
            }
            for (id, _) in &starting {
                state.started.insert(id.clone());
            }
        }
        for (shard, start) in starting {
            tracing::info!(node = %self.node, instance = self.instance.index, %shard, from = ?start, "reading shard");
            // A restored position is this instance's to record from now
            // on, read from or not.
            if let StartAt::After(sequence) = &start {
                self.positions.insert(shard.clone(), sequence.clone());
            }
            let split = self.split(&shard);
            self.split_changes.push(SplitChange::Added(split));
            self.released.remove(&shard);
            let task = tokio::spawn(read_shard(
                client.clone(),
                self.settings(),
                shard.clone(),
                start,
                self.events_tx.clone(),
            ));
            self.reading.insert(shard, task);
        }
        Ok(())
    }

    /// Where `shard` starts: after its recorded record; at its beginning if
    /// it is the child of a shard this pipeline reads or read; else where
    /// `start_from` says.
    fn start_of(&self, state: &SharedState, shard: &str) -> Result<StartAt> {
        let ours = self
            .positions
            .get(shard)
            .or_else(|| state.restored.get(shard));
        if let Some(book) = &state.leases
            && let Some(lease) = book.held.get(shard)
            && let Some(recorded) = lease.sequence()
        {
            // The lease's checkpoint, unless this process recorded it and
            // restored an earlier checkpoint since (whose later output
            // was discarded), or is ahead of another process's.
            let recorded_here = lease
                .recorded_by
                .as_ref()
                .is_some_and(|(by, _)| *by == book.member);
            let start = match ours {
                Some(ours) if recorded_here => ours,
                Some(ours) if sequence_order(ours, recorded).is_gt() => ours,
                _ => recorded,
            };
            return Ok(StartAt::After(start.to_string()));
        }
        if let Some(sequence) = ours {
            return Ok(StartAt::After(sequence.clone()));
        }
        let parents = state.graph.get(shard).map_or(&[][..], |s| &s.parents[..]);
        let has_parent = parents.iter().any(|p| {
            !state.skipped.contains(p)
                && (state.graph.get(p).is_some() || state.graph.is_finished(p))
        });
        let config = &self.source.config;
        Ok(match &config.start_from {
            _ if has_parent => StartAt::TrimHorizon,
            StartFrom::TrimHorizon => StartAt::TrimHorizon,
            StartFrom::Latest => StartAt::Latest,
            StartFrom::AtTimestamp(_) => {
                StartAt::Timestamp(config.start_millis()?.expect("at_timestamp"))
            }
        })
    }

    /// Whether, with `stop_at: latest`, every shard of the stream has been
    /// read up to the present (by this instance or another) and this
    /// instance reads nothing more.
    fn reached_end(&self) -> bool {
        if let Some(task) = self.instance.task {
            return self.task_ended(&shard_of(task));
        }
        if self.source.config.stop_at.is_none() {
            return false;
        }
        let state = self.source.shared.state.lock().expect("not poisoned");
        // With leases, other processes' shards count when their rows say
        // they were read up to the present.
        let elsewhere = |id: &str| {
            state
                .leases
                .as_ref()
                .is_some_and(|book| book.caught_up.contains(id) && !book.held.contains_key(id))
        };
        state.listed
            && state
                .graph
                .unfinished()
                .all(|shard| state.caught_up.contains(&shard.id) || elsewhere(&shard.id))
            && self.reading.keys().all(|id| state.caught_up.contains(id))
    }

    /// Whether a task's shard is read: to its end, or (with `stop_at:
    /// latest`, and open when last listed) up to the present. A shard the
    /// stream no longer lists has aged out: nothing is left to read.
    fn task_ended(&self, shard: &str) -> bool {
        let state = self.source.shared.state.lock().expect("not poisoned");
        if !state.listed {
            return false;
        }
        let Some(listed) = state.graph.get(shard) else {
            tracing::warn!(node = %self.node, %shard, "the task's shard is no longer listed: it aged out of the stream");
            return true;
        };
        state.graph.is_finished(shard)
            || self.finished_here.contains(shard)
            || (self.source.config.stop_at.is_some()
                && state.caught_up.contains(shard)
                && !listed.closed)
    }

    /// `shard` was read to its end: its children become readable once
    /// that is recorded (at once without checkpoints).
    fn finished(&mut self, shard: String, children: Vec<super::shards::Shard>) {
        self.reading.remove(&shard);
        self.positions.remove(&shard);
        if let Some(split) = self.splits.get(&shard) {
            self.split_changes.push(SplitChange::Finished(*split));
        }
        let mut state = self.source.shared.state.lock().expect("not poisoned");
        state.owners.remove(&shard);
        for child in children {
            state.graph.add(child);
        }
        tracing::info!(node = %self.node, %shard, "shard read to its end");
        if self.checkpointing {
            state.finishing.insert(shard.clone());
            self.finished_here.insert(shard);
            self.wants_checkpoint = true;
        } else {
            state.graph.finish(&shard);
        }
    }

    /// With `leases`: starts the keeper (once per process), fails if the
    /// leases can no longer be trusted, stops reading shards another
    /// process asked for, and forgets those handed over.
    async fn follow_leases(&mut self) -> Result<()> {
        self.start_keeper().await;
        let stopping: Vec<String> = {
            let mut state = self.source.shared.state.lock().expect("not poisoned");
            let Some(book) = state.leases.as_mut() else {
                return Ok(());
            };
            if let Some(failure) = &book.failure {
                return Err(Error::connector("kinesis", false, failure.clone()));
            }
            let handed: Vec<String> = self
                .released
                .iter()
                .filter(|shard| book.handed_over.remove(*shard))
                .cloned()
                .collect();
            for shard in handed {
                self.released.remove(&shard);
                self.positions.remove(&shard);
            }
            let stopping: Vec<String> = self
                .reading
                .keys()
                .filter(|shard| book.handing_over.contains_key(*shard))
                .cloned()
                .collect();
            for shard in &stopping {
                state.owners.remove(shard);
            }
            stopping
        };
        for shard in stopping {
            if let Some(task) = self.reading.remove(&shard) {
                task.abort();
            }
            if let Some(split) = self.splits.get(&shard) {
                self.split_changes.push(SplitChange::Released(*split));
            }
            tracing::info!(node = %self.node, instance = self.instance.index, %shard, "stopped reading shard, to hand it over");
            self.released.insert(shard);
            // The hand-over waits for a checkpoint past this point.
            self.wants_checkpoint = true;
        }
        Ok(())
    }

    /// Starts keeping the leases, unless another instance did: the first
    /// instance here, past every restore, knows who this process is.
    async fn start_keeper(&self) {
        let shared = &self.source.shared;
        if shared.keeper.lock().expect("not poisoned").is_some() {
            return;
        }
        let settings = self.source.config.leases.clone().expect("leases");
        let aws = settings
            .aws
            .clone()
            .unwrap_or_else(|| self.source.config.aws.clone());
        let client = aws.dynamodb_client().await;
        let mut keeper = shared.keeper.lock().expect("not poisoned");
        if keeper.is_some() {
            return;
        }
        let table = LeaseTable::new(client, settings.table.clone().expect("named when built"));
        {
            let mut state = shared.state.lock().expect("not poisoned");
            let member = state.member.clone().unwrap_or_else(new_member);
            tracing::info!(node = %self.node, table = %table.name, %member, "sharing the stream's shards through the lease table");
            state.leases = Some(LeaseBook::new(member, settings.failover_time));
            state.lease_table = Some(table.clone());
        }
        *keeper = Some(tokio::spawn(keep_leases(
            shared.clone(),
            table,
            self.source.config.clone(),
            self.node.clone(),
        )));
    }

    /// Records checkpoint `checkpoint` in the lease table once every
    /// instance has reported it: one transaction for the whole process,
    /// conditional on every lease still being its own. If that fails, the
    /// checkpoint is not reported, and its sinks do not publish.
    async fn record_in_leases(
        &mut self,
        checkpoint: u64,
        position: Position,
        finished_here: &HashSet<String>,
    ) -> Result<()> {
        let shared = self.source.shared.clone();
        let deposited = {
            let mut state = shared.state.lock().expect("not poisoned");
            let mut position = position;
            // What the shared finished set adds was recorded by others.
            position.finished = finished_here.iter().cloned().collect();
            state.deposits.entry(checkpoint).or_default().push(position);
            if state.deposits[&checkpoint].len() < self.instance.parallelism {
                return Ok(());
            }
            let deposited = state.deposits.remove(&checkpoint).expect("just added");
            state.deposits.retain(|id, _| *id > checkpoint);
            deposited
        };
        let _writing = shared.lease_writes.lock().await;
        let mut released = HashSet::new();
        let (table, member, writes) = {
            let state = shared.state.lock().expect("not poisoned");
            let (Some(table), Some(book)) = (&state.lease_table, &state.leases) else {
                // Nothing read yet: the keeper has not started.
                return Ok(());
            };
            let mut positions = HashMap::new();
            let mut caught_up = HashSet::new();
            let mut finished = HashSet::new();
            for position in deposited {
                positions.extend(position.shards);
                caught_up.extend(position.caught_up);
                finished.extend(position.finished);
                released.extend(position.released);
            }
            let writes = book.writes(&positions, &caught_up, &finished, &released, &state.started);
            (table.clone(), book.member.clone(), writes)
        };
        if writes.is_empty() {
            return Ok(());
        }
        match table.record(&member, checkpoint, &writes).await {
            Ok(()) => {}
            Err(WriteError::Conflict) => {
                return Err(Error::connector(
                    "kinesis",
                    false,
                    format!(
                        "checkpoint {checkpoint} could not be recorded in lease table `{}`: a \
                         lease of this process was taken by another, so its sinks do not \
                         publish it; a restart resumes from the lease table",
                        table.name
                    ),
                ));
            }
            Err(WriteError::Failed(error)) => return Err(error),
        }
        let mut state = shared.state.lock().expect("not poisoned");
        for write in &writes {
            if let LeaseWrite::HandOver { shard, .. } = write {
                state.started.remove(shard);
            }
        }
        state
            .leases
            .as_mut()
            .expect("leases")
            .recorded(&writes, &released);
        Ok(())
    }

    /// Turns records into a batch: aggregated records are split into their
    /// user records, data is decoded, metadata columns added, and records
    /// that do not decode set aside for the dead letters.
    fn decode(&mut self, shard: &str, records: &[RawRecord]) -> Result<Option<RecordBatch>> {
        let mut payloads = Payloads::default();
        // Per payload: the record it came from and its partition key.
        let mut origins: Vec<(usize, Option<usize>)> = Vec::with_capacity(records.len());
        let mut keys: Vec<&str> = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match deaggregate(&record.data) {
                Some(users) => {
                    for (sub, user) in users.into_iter().enumerate() {
                        payloads.push(user.data);
                        origins.push((index, Some(sub)));
                        keys.push(user.partition_key);
                    }
                }
                None => {
                    payloads.push(&record.data);
                    origins.push((index, None));
                    keys.push(&record.partition_key);
                }
            }
        }
        let decoded = self.decoder.decode(&payloads)?;
        for (index, error) in decoded.failed {
            let (record, sub) = origins[index];
            let sequence = &records[record].sequence_number;
            let position = match sub {
                Some(sub) => format!(
                    "kinesis {} {shard} {sequence} subsequence {sub}",
                    self.source.stream
                ),
                None => format!("kinesis {} {shard} {sequence}", self.source.stream),
            };
            self.rejected.push(Rejected {
                error,
                record: shown(payloads.get(index)),
                position: Some(position),
            });
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(None);
        }
        let rows: Vec<usize> = match decoded.kept {
            Some(kept) => kept,
            None => (0..payloads.len()).collect(),
        };
        let metadata = &self.source.config.metadata;
        let mut columns = decoded.batch.columns().to_vec();
        if metadata.shard_id.is_some() {
            columns.push(Arc::new(StringArray::from(vec![shard; rows.len()])));
        }
        if metadata.sequence_number.is_some() {
            columns.push(Arc::new(StringArray::from_iter_values(
                rows.iter()
                    .map(|i| records[origins[*i].0].sequence_number.as_str()),
            )));
        }
        if metadata.partition_key.is_some() {
            columns.push(Arc::new(StringArray::from_iter_values(
                rows.iter().map(|i| keys[*i]),
            )));
        }
        if metadata.approximate_arrival_timestamp.is_some() {
            let times = TimestampMillisecondArray::from_iter(
                rows.iter().map(|i| records[origins[*i].0].arrival),
            );
            columns.push(Arc::new(times.with_timezone("UTC")) as ArrayRef);
        }
        Ok(Some(RecordBatch::try_new(
            self.source.schema.clone(),
            columns,
        )?))
    }
}

#[async_trait]
impl Source for KinesisInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        let shared = self.source.shared.clone();
        if shared.opened.load(Ordering::Acquire) < self.instance.parallelism {
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(SourceStep::Idle);
        }
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = self.source.config.aws.kinesis_client().await;
                self.client = Some(client.clone());
                client
            }
        };
        if self.follows_leases() {
            self.follow_leases().await?;
        }
        self.refresh(&client).await?;
        if self.reached_end() {
            return Ok(SourceStep::Finished);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(SourceStep::Idle),
                Ok(None) => unreachable!("the instance holds a sender"),
                Ok(Some(event)) => event,
            };
            match event {
                ShardEvent::Records { shard, records } => {
                    if !self.reading.contains_key(&shard) {
                        continue;
                    }
                    let last = records.last().expect("not empty").sequence_number.clone();
                    let batch = self.decode(&shard, &records)?;
                    self.positions.insert(shard.clone(), last);
                    self.last_split = Some(self.split(&shard));
                    if let Some(batch) = batch {
                        return Ok(SourceStep::Batch(batch));
                    }
                    if !self.rejected.is_empty() {
                        return Ok(SourceStep::Idle);
                    }
                }
                ShardEvent::CaughtUp { shard } => {
                    if self.source.config.stop_at.is_some() {
                        shared
                            .state
                            .lock()
                            .expect("not poisoned")
                            .caught_up
                            .insert(shard);
                        return Ok(SourceStep::Idle);
                    }
                }
                ShardEvent::Ended { shard, children } => {
                    self.finished(shard, children);
                    self.assign_and_start(&client)?;
                    return Ok(SourceStep::Idle);
                }
                ShardEvent::Failed(error) => return Err(error),
            }
        }
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    fn position(&self) -> Result<serde_json::Value> {
        let state = self.source.shared.state.lock().expect("not poisoned");
        // Shards finished and recorded already (restored ones among them)
        // are recorded again by every instance: the union is what counts.
        let mut finished: BTreeSet<String> = self.finished_here.clone();
        finished.extend(state.graph.finished().map(str::to_string));
        let position = Position {
            member: state.leases.as_ref().map(|book| book.member.clone()),
            shards: self.positions.clone(),
            finished,
            released: self.released.clone(),
            caught_up: self
                .positions
                .keys()
                .filter(|shard| state.caught_up.contains(*shard))
                .cloned()
                .collect(),
        };
        serde_json::to_value(position).map_err(|e| Error::internal(e.to_string()))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        let position: Position = serde_json::from_value(position)
            .map_err(|e| Error::Checkpoint(format!("not a Kinesis read position: {e}")))?;
        let mut state = self.source.shared.state.lock().expect("not poisoned");
        state.restored_any = true;
        if position.member.is_some() {
            state.member = position.member;
        }
        state.restored.extend(position.shards);
        state.graph.restore_finished(position.finished);
        Ok(())
    }

    fn open(&mut self, ctx: &SourceContext) -> Result<()> {
        if self.source.config.leases.is_some() && !ctx.checkpointing {
            return Err(Error::config(
                "leases",
                "needs the pipeline's `checkpoint` section: a shard changes hands at a checkpoint",
            ));
        }
        self.checkpointing = ctx.checkpointing;
        self.node = ctx.node.clone();
        self.source.shared.opened.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn checkpoint_complete(
        &mut self,
        checkpoint: u64,
        position: &serde_json::Value,
    ) -> Result<()> {
        let Ok(position) = serde_json::from_value::<Position>(position.clone()) else {
            return Ok(());
        };
        let finished_here: HashSet<String> = position
            .finished
            .iter()
            .filter(|shard| self.finished_here.contains(*shard))
            .cloned()
            .collect();
        if self.follows_leases() {
            self.record_in_leases(checkpoint, position, &finished_here)
                .await?;
        }
        // What this instance finished and that checkpoint recorded is
        // durable now: the children may be read.
        let mut state = self.source.shared.state.lock().expect("not poisoned");
        for shard in &finished_here {
            self.finished_here.remove(shard);
            state.finishing.remove(shard);
            state.graph.finish(shard);
        }
        Ok(())
    }

    fn wants_checkpoint(&mut self) -> bool {
        std::mem::take(&mut self.wants_checkpoint)
    }

    fn batch_split(&self) -> Option<u64> {
        self.last_split
    }

    fn take_split_changes(&mut self) -> Vec<SplitChange> {
        std::mem::take(&mut self.split_changes)
    }
}

/// A name for this process in the lease table, unless a restored
/// checkpoint gives its earlier one.
pub(crate) fn new_member() -> String {
    format!("flumen-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Keeps the leases of one process, every third of `failover_time`:
/// reads the table, adds rows for new shards, renews the leases held,
/// takes free and expired ones, and asks for one when the load is uneven.
async fn keep_leases(
    shared: Arc<Shared>,
    table: LeaseTable,
    config: Arc<KinesisSourceConfig>,
    node: Arc<str>,
) {
    let failover_time = config.leases.as_ref().expect("leases").failover_time;
    if let Err(error) = table.ensure().await {
        let message = match error {
            Error::Connector { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        fail_leases(&shared, message);
        return;
    }
    loop {
        let result = {
            let _writing = shared.lease_writes.lock().await;
            keep_leases_once(&shared, &table, &config, &node).await
        };
        match result {
            // New rows: take them at once rather than a heartbeat later.
            Ok(true) => continue,
            Ok(false) => {}
            // Heartbeats missed for `failover_time` lose the leases: the
            // next write then fails the run, rather than read twice.
            Err(error) => {
                tracing::warn!(%node, %error, "could not reach the lease table; trying again");
            }
        }
        tokio::time::sleep(failover_time / 3).await;
    }
}

fn fail_leases(shared: &Shared, failure: String) {
    let mut state = shared.state.lock().expect("not poisoned");
    if let Some(book) = state.leases.as_mut() {
        book.failure.get_or_insert(failure);
    }
}

/// One round of [`keep_leases`]. Returns whether it added rows.
async fn keep_leases_once(
    shared: &Shared,
    table: &LeaseTable,
    config: &KinesisSourceConfig,
    node: &Arc<str>,
) -> Result<bool> {
    let rows = table.scan().await?;
    let (plan, member, renewals) = {
        let mut state = shared.state.lock().expect("not poisoned");
        let state = &mut *state;
        let shards: Vec<(String, Vec<String>, String)> = if state.listed {
            state
                .graph
                .unfinished()
                .map(|shard| {
                    let start = initial_checkpoint(state, config, &shard.parents);
                    (shard.id.clone(), shard.parents.clone(), start)
                })
                .collect()
        } else {
            Vec::new()
        };
        let graph = &state.graph;
        let read_locally = |parent: &str| graph.is_finished(parent) || graph.get(parent).is_none();
        let book = state.leases.as_mut().expect("leases");
        let plan = book.plan(rows, &shards, read_locally, Instant::now());
        let renewals: Vec<(String, u64)> = book
            .held
            .iter()
            .map(|(shard, lease)| (shard.clone(), lease.counter))
            .collect();
        let member = book.member.clone();
        state.graph.restore_finished(plan.finished.iter().cloned());
        (plan, member, renewals)
    };
    let mut created = false;
    for (shard, parents, start) in &plan.create {
        match table.create_lease(shard, parents, start).await {
            Ok(()) => created = true,
            Err(WriteError::Conflict) => {}
            Err(WriteError::Failed(error)) => return Err(error),
        }
    }
    for (shard, counter) in renewals {
        match table.renew(&shard, &member, counter).await {
            Ok(()) => {
                let mut state = shared.state.lock().expect("not poisoned");
                let book = state.leases.as_mut().expect("leases");
                if let Some(lease) = book.held.get_mut(&shard) {
                    lease.counter = counter + 1;
                }
            }
            Err(WriteError::Conflict) => {
                fail_leases(
                    shared,
                    format!(
                        "lost the lease on shard {shard} to another process: it was not \
                         renewed within `failover_time`"
                    ),
                );
                return Ok(false);
            }
            Err(WriteError::Failed(error)) => return Err(error),
        }
    }
    for lease in plan.take {
        match table.take(&lease, &member).await {
            Ok(()) => {
                tracing::info!(
                    %node,
                    shard = %lease.shard,
                    previous_owner = lease.owner.as_deref().unwrap_or("none"),
                    checkpoint = %lease.checkpoint,
                    "lease taken"
                );
                let mut state = shared.state.lock().expect("not poisoned");
                // A shard this process has not listed yet (a child another
                // process found first) is read without waiting for the
                // next listing.
                state.graph.add(super::shards::Shard {
                    id: lease.shard.clone(),
                    parents: lease.parents.clone(),
                    closed: false,
                });
                state.leases.as_mut().expect("leases").took(lease);
            }
            // Another process moved first.
            Err(WriteError::Conflict) => {}
            Err(WriteError::Failed(error)) => return Err(error),
        }
    }
    if let Some(lease) = plan.ask {
        match table.ask_for(&lease, &member).await {
            Ok(()) => tracing::info!(
                %node,
                shard = %lease.shard,
                owner = lease.owner.as_deref().unwrap_or("none"),
                "asked for a lease"
            ),
            Err(WriteError::Conflict) => {}
            Err(WriteError::Failed(error)) => return Err(error),
        }
    }
    Ok(created)
}

/// Where a shard without a row starts, written into its new row: at its
/// beginning if its parents are read, else where `start_from` says.
fn initial_checkpoint(
    state: &SharedState,
    config: &KinesisSourceConfig,
    parents: &[String],
) -> String {
    let has_parent = parents.iter().any(|p| {
        !state.skipped.contains(p) && (state.graph.get(p).is_some() || state.graph.is_finished(p))
    });
    match &config.start_from {
        _ if has_parent => "TRIM_HORIZON",
        StartFrom::TrimHorizon => "TRIM_HORIZON",
        StartFrom::Latest => "LATEST",
        StartFrom::AtTimestamp(_) => "AT_TIMESTAMP",
    }
    .to_string()
}
