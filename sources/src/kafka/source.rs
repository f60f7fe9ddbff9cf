//! The Kafka source and its instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use flumen_core::component::SplitChange;
use flumen_core::event_time::EventTimeConfig;
use flumen_core::prelude::*;

use super::config::{KafkaSourceConfig, StartFrom};
use super::consumer::{Chunk, Event, GroupContext, PollSettings, TopicPartition, poll_loop};
use super::position::{end_offsets, position_from_json, position_to_json};
use super::repartition::Producers;
use crate::payload::{Format, ValueDecoder, shown};
use flumen_clients::kafka::{BrokerWait, client_config, kafka_error};

/// A source reading Kafka topics as a consumer group member. Built from a
/// [`KafkaSourceConfig`].
#[derive(Clone)]
pub struct KafkaSource {
    config: Arc<KafkaSourceConfig>,
    format: Format,
    /// Columns decoded from values.
    values: SchemaRef,
    /// Those plus the metadata columns.
    schema: SchemaRef,
    shared: Arc<Shared>,
    /// Reads a repartition topic (see [`super::repartition`]) rather than
    /// values in `format`.
    repartition: bool,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.config.topics)
            .field("group", &self.config.group)
            .finish()
    }
}

/// What the instances of one run share.
#[derive(Debug, Default)]
struct Shared {
    /// Offsets of the restored checkpoint, over all instances: the group
    /// may give a partition to a different instance than before.
    restored: Arc<Mutex<HashMap<TopicPartition, i64>>>,
    /// Instances past restore: consumers join the group only once all
    /// are, so that every restored offset is known at the first assignment.
    opened: AtomicUsize,
    /// Names this process's line of checkpoints in the offsets it commits
    /// (kept across restores), so that a restart can tell its own commits
    /// from another member's.
    member: Arc<Mutex<String>>,
}

impl KafkaSource {
    pub(super) fn new(
        config: KafkaSourceConfig,
        format: Format,
        values: SchemaRef,
    ) -> Result<Self> {
        let metadata = &config.metadata;
        let extra = [
            (&metadata.key, DataType::Utf8),
            (&metadata.topic, DataType::Utf8),
            (&metadata.partition, DataType::Int32),
            (&metadata.offset, DataType::Int64),
            (
                &metadata.timestamp,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
        ];
        let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (name, data_type) in extra {
            if let Some(name) = name {
                if values.column_with_name(name).is_some() {
                    return Err(Error::config(
                        "metadata",
                        format!("column `{name}` is already a column of the values"),
                    ));
                }
                fields.push(Field::new(name, data_type, true));
            }
        }
        Ok(KafkaSource {
            config: Arc::new(config),
            format,
            values,
            schema: Arc::new(Schema::new(fields)),
            shared: Arc::new(Shared {
                member: Arc::new(Mutex::new(new_member_id())),
                ..Shared::default()
            }),
            repartition: false,
        })
    }

    /// The reader of the repartition topic `config.topics[0]`, whose rows
    /// are in `schema`: run as tasks, one per partition, each row once
    /// (see [`super::repartition`]), ending once every writer has.
    pub fn repartition_reader(config: KafkaSourceConfig, schema: SchemaRef) -> Result<Self> {
        let mut config = config;
        config.tasks = true;
        config.stop_at = None;
        config.metadata = super::MetadataColumns::default();
        flumen_clients::kafka::client_config(
            &config.brokers,
            &config.security,
            &config.properties,
        )?;
        let mut source = KafkaSource::new(config, Format::Bytes, schema.clone())?;
        source.schema = schema;
        source.repartition = true;
        Ok(source)
    }
}

/// A fresh member id: unique enough to tell processes apart.
fn new_member_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}", nanos ^ (u64::from(std::process::id()) << 40))
}

impl SourceFactory for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(KafkaInstance {
            source: self.clone(),
            decoder: ValueDecoder::new(self.format.clone(), self.values.clone()),
            instance,
            checkpointing: false,
            node: "kafka".into(),
            running: None,
            owned: BTreeMap::new(),
            releasing: None,
            committed: HashMap::new(),
            splits: HashMap::new(),
            split_changes: Vec::new(),
            last_split: None,
            rejected: Vec::new(),
            ends: None,
            last_end_check: None,
            last_commit: Instant::now(),
            wants_checkpoint: false,
            waiting: None,
            task_restored: HashMap::new(),
            producers: self.repartition.then(Producers::default),
            leftover: None,
        }))
    }

    fn runs_as_tasks(&self) -> bool {
        self.config.tasks
    }

    fn task_group(&self) -> Result<Option<Box<dyn TaskGroup>>> {
        if !self.config.tasks {
            return Ok(None);
        }
        Ok(Some(Box::new(super::tasks::KafkaTasks::join(
            &self.config,
        )?)))
    }

    /// The restored offsets are pooled over all instances (each takes
    /// whichever partitions the group assigns it), so any instance may
    /// restore any earlier one's.
    fn positions_merge(&self) -> bool {
        true
    }

    fn default_event_time(&self) -> Option<EventTimeConfig> {
        self.config
            .metadata
            .timestamp
            .as_ref()
            .map(EventTimeConfig::new)
    }

    /// Asks the group: the checkpoint was reported if, for every
    /// partition it recorded, the committed offset is ours from this
    /// checkpoint or a later one, or another member's that took the
    /// partition over at or after the recorded offset.
    fn reported_upstream(&self, checkpoint: u64, positions: &[serde_json::Value]) -> Result<bool> {
        let mut recorded = Vec::new();
        let mut member = None;
        for position in positions {
            let (m, offsets) = position_from_json(position)?;
            member = member.or(m);
            recorded.extend(offsets);
        }
        let Some(member) = member else {
            return Ok(true);
        };
        if recorded.is_empty() {
            return Ok(true);
        }
        let config = &self.config;
        let mut client = client_config(&config.brokers, &config.security, &config.properties)?;
        client.set("group.id", &config.group);
        let consumer: BaseConsumer = client.create().map_err(kafka_error)?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), _) in &recorded {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .map_err(kafka_error)?;
        for ((topic, partition), offset) in &recorded {
            let Some(element) = committed.find_partition(topic, *partition) else {
                tracing::info!(checkpoint, partition = %format!("{topic}[{partition}]"), "the group has no offset for this partition");
                return Ok(false);
            };
            let reported = match (element.offset(), CommitNote::parse(element.metadata())) {
                (Offset::Offset(_), Some(note)) if note.member == member => {
                    note.checkpoint >= checkpoint
                }
                (Offset::Offset(_), Some(note)) => note.from >= *offset,
                // A broker that does not keep commit metadata: the offset
                // alone tells a missed report when nobody moved it on, but
                // not a takeover that has passed the recorded offset.
                (Offset::Offset(group), None) => group >= *offset,
                _ => false,
            };
            if !reported {
                tracing::info!(
                    checkpoint,
                    partition = %format!("{topic}[{partition}]"),
                    recorded = offset,
                    group = ?element.offset(),
                    note = element.metadata(),
                    "the group's offset does not show this checkpoint reported"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What each offset commit says about itself (Kafka keeps a metadata
/// string with every committed offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommitNote {
    /// Whose line of checkpoints committed it.
    pub(super) member: String,
    /// The checkpoint it belongs to.
    pub(super) checkpoint: u64,
    /// Where the member started reading the partition.
    pub(super) from: i64,
}

impl CommitNote {
    pub(super) fn parse(text: &str) -> Option<CommitNote> {
        let mut parts = text.strip_prefix("flumen;")?.split(';');
        let member = parts.next()?.strip_prefix("member=")?.to_string();
        let checkpoint = parts.next()?.strip_prefix("checkpoint=")?.parse().ok()?;
        let from = parts.next()?.strip_prefix("from=")?.parse().ok()?;
        Some(CommitNote {
            member,
            checkpoint,
            from,
        })
    }

    pub(super) fn render(&self) -> String {
        format!(
            "flumen;member={};checkpoint={};from={}",
            self.member, self.checkpoint, self.from
        )
    }
}

/// A partition this instance reads.
#[derive(Debug, Clone, Copy)]
struct Owned {
    /// The offset after the last message emitted (or where reading
    /// starts); `None` until known.
    next: Option<i64>,
    /// Where this instance started reading the partition.
    from: Option<i64>,
}

/// Partitions a rebalance is taking away, waiting for a checkpoint.
struct Releasing {
    offsets: BTreeMap<TopicPartition, Owned>,
    done: std_mpsc::Sender<()>,
}

struct Running {
    /// Taken when closing, so that the consumer thread holds the last
    /// handle and leaves the group from there.
    consumer: Option<Arc<BaseConsumer<GroupContext>>>,
    events: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The consumer thread sees `stop` within one poll; closing the
        // channel frees it if it waits to send. Once it has let go of the
        // consumer, dropping the last handle leaves the group at once, so
        // the partitions move to other members without waiting for a
        // session to time out.
        self.stop.store(true, Ordering::Relaxed);
        self.consumer = None;
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Without checkpoints, offsets of emitted messages are committed this
/// often (and when partitions are revoked, and at the end).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

struct KafkaInstance {
    source: KafkaSource,
    decoder: ValueDecoder,
    instance: InstanceInfo,
    checkpointing: bool,
    node: Arc<str>,
    running: Option<Running>,
    owned: BTreeMap<TopicPartition, Owned>,
    releasing: Option<Releasing>,
    /// What this instance last committed to the group, per partition.
    committed: HashMap<TopicPartition, i64>,
    splits: HashMap<TopicPartition, u64>,
    split_changes: Vec<SplitChange>,
    last_split: Option<u64>,
    rejected: Vec<Rejected>,
    /// With `stop_at: latest`: where each partition of the topics ended.
    ends: Option<BTreeMap<TopicPartition, i64>>,
    last_end_check: Option<Instant>,
    last_commit: Instant,
    wants_checkpoint: bool,
    /// Waiting for a broker to answer, before joining the group.
    waiting: Option<BrokerWait>,
    /// As a task: the offsets its checkpoint recorded.
    task_restored: HashMap<TopicPartition, i64>,
    /// As the reader of a repartition topic: what it knows of the writers.
    producers: Option<Producers>,
    /// The rest of a chunk whose messages come from several writers: a
    /// batch holds one writer's rows.
    leftover: Option<Chunk>,
}

impl KafkaInstance {
    /// Whether a broker has answered yet: asked in short attempts, so
    /// that `next` stays quick (and an interrupt is heard) while the
    /// brokers are away, until `connect_timeout` has passed.
    async fn brokers_answered(&mut self) -> Result<bool> {
        let wait = match self.waiting.take() {
            Some(wait) => wait,
            None => {
                let config = &self.source.config;
                let client = client_config(&config.brokers, &config.security, &config.properties)?;
                let setting = format!("sources.{}.connect_timeout", self.node);
                BrokerWait::new(&client, &config.brokers, config.connect_timeout, setting)?
            }
        };
        let asked = Instant::now();
        let (wait, answered) = tokio::task::spawn_blocking(move || {
            let mut wait = wait;
            let answered = wait.attempt(Duration::from_millis(500));
            (wait, answered)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        if !answered? {
            self.waiting = Some(wait);
            // A refused connection fails at once: do not spin.
            let pause = Duration::from_millis(100).saturating_sub(asked.elapsed());
            tokio::time::sleep(pause).await;
            return Ok(false);
        }
        Ok(true)
    }

    async fn start(&mut self) -> Result<()> {
        let source = self.source.clone();
        let config = &source.config;
        let mut client = client_config(&config.brokers, &config.security, &config.properties)?;
        client
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match config.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set(
                "client.id",
                format!("flumen-{}-{}", self.node, self.instance.label()),
            );
        // The user's properties win.
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let (events_tx, events) = mpsc::channel(4);
        let context = GroupContext::new(
            events_tx,
            self.source.shared.restored.clone(),
            self.source.shared.member.clone(),
        );
        let consumer: BaseConsumer<GroupContext> =
            client.create_with_context(context).map_err(kafka_error)?;
        let consumer = Arc::new(consumer);
        if config.stop_at.is_some() {
            let consumer = consumer.clone();
            let topics = config.topics.clone();
            let ends = tokio::task::spawn_blocking(move || end_offsets(&consumer, &topics))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            self.ends = Some(ends);
        }
        match self.instance.task {
            Some(task) => self.read_task_partition(&consumer, task).await?,
            None => {
                let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics).map_err(kafka_error)?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let settings = PollSettings {
            batch_size: config.batch_size,
            max_wait: config.max_wait,
            with_keys: config.metadata.key.is_some() || self.producers.is_some(),
        };
        let thread_consumer = consumer.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}-{}", self.node, self.instance.index))
            .spawn(move || poll_loop(thread_consumer, settings, thread_stop))
            .map_err(|e| Error::internal(format!("cannot start the consumer thread: {e}")))?;
        if self.instance.task.is_none() {
            tracing::info!(
                node = %self.node,
                instance = self.instance.index,
                group = %config.group,
                topics = %config.topics.join(", "),
                "joining the consumer group"
            );
        }
        self.running = Some(Running {
            consumer: Some(consumer),
            events,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// As task `task`: reads partition `task` of the topic alone, outside
    /// the group's assignment (the task group has made this process its
    /// owner), from the offset its checkpoint recorded; without one, from
    /// the group's committed offset (a pipeline that ran whole before),
    /// else where `start_from` says.
    async fn read_task_partition(
        &mut self,
        consumer: &Arc<BaseConsumer<GroupContext>>,
        task: u32,
    ) -> Result<()> {
        let topic = self.source.config.topics[0].clone();
        let partition: TopicPartition = (Arc::from(topic.as_str()), task as i32);
        let recorded = self.task_restored.get(&partition).copied();
        let group = match recorded {
            Some(_) => None,
            None => {
                let consumer = consumer.clone();
                let (topic, number) = (topic.clone(), partition.1);
                tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, number);
                    consumer
                        .committed_offsets(tpl, Duration::from_secs(30))
                        .ok()
                        .and_then(|c| match c.elements().first().map(|e| e.offset()) {
                            Some(Offset::Offset(offset)) => Some(offset),
                            _ => None,
                        })
                })
                .await
                .map_err(|e| Error::internal(e.to_string()))?
            }
        };
        let start = recorded.or(group);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &topic,
            partition.1,
            start.map_or(Offset::Invalid, Offset::Offset),
        )
        .map_err(kafka_error)?;
        consumer.assign(&tpl).map_err(kafka_error)?;
        if let Some(ends) = &mut self.ends {
            ends.retain(|p, _| *p == partition);
        }
        let from = match (recorded, group) {
            (Some(_), _) => "its checkpoint",
            (None, Some(_)) => "the group's committed offset",
            (None, None) => "`start_from`",
        };
        tracing::info!(
            node = %self.node,
            task,
            partition = %format!("{topic}[{}]", partition.1),
            offset = ?start,
            "reading the task's partition from {from}"
        );
        self.assigned(vec![(partition, start)]);
        Ok(())
    }

    fn split(&mut self, partition: &TopicPartition) -> u64 {
        let next = self.splits.len() as u64;
        *self.splits.entry(partition.clone()).or_insert(next)
    }

    /// Emits a chunk's messages this instance has not emitted yet (a
    /// chunk fetched before a rebalance can repeat what was read since).
    fn accept(&mut self, chunk: Chunk) -> Result<Option<RecordBatch>> {
        let Some(owned) = self.owned.get(&chunk.partition).copied() else {
            // Read before the partition was taken away: the next owner
            // reads it again from the committed offset.
            return Ok(None);
        };
        let skip = match owned.next {
            Some(next) => chunk.offsets.partition_point(|offset| *offset < next),
            None => 0,
        };
        if skip == chunk.offsets.len() {
            return Ok(None);
        }
        if let Some(producers) = &mut self.producers {
            let read = producers.read(&chunk, skip, &self.source.schema)?;
            self.rejected.extend(read.rejected);
            self.split_changes.extend(read.changes);
            self.owned.insert(
                chunk.partition.clone(),
                Owned {
                    next: Some(chunk.offsets[read.next - 1] + 1),
                    from: owned.from.or(Some(chunk.offsets[skip])),
                },
            );
            if read.next < chunk.offsets.len() {
                self.leftover = Some(chunk);
            }
            self.last_split = read.producer.map(u64::from);
            return Ok(read.batch);
        }
        let last = *chunk.offsets.last().expect("not empty");
        let batch = self.decode(&chunk, skip)?;
        self.owned.insert(
            chunk.partition.clone(),
            Owned {
                next: Some(last + 1),
                from: owned.from.or(Some(chunk.offsets[skip])),
            },
        );
        self.last_split = Some(self.split(&chunk.partition));
        Ok(batch)
    }

    fn decode(&mut self, chunk: &Chunk, skip: usize) -> Result<Option<RecordBatch>> {
        let payloads = if skip == 0 {
            std::borrow::Cow::Borrowed(&chunk.payloads)
        } else {
            let mut rest = crate::payload::Payloads::default();
            for index in skip..chunk.payloads.len() {
                rest.push(chunk.payloads.get(index));
            }
            std::borrow::Cow::Owned(rest)
        };
        let decoded = self.decoder.decode(&payloads)?;
        let (topic, partition) = &chunk.partition;
        for (index, error) in decoded.failed {
            self.rejected.push(Rejected {
                error,
                record: shown(payloads.get(index)),
                position: Some(format!(
                    "kafka {topic}[{partition}] offset {}",
                    chunk.offsets[skip + index]
                )),
            });
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(None);
        }
        let rows: Vec<usize> = match decoded.kept {
            Some(kept) => kept.into_iter().map(|i| i + skip).collect(),
            None => (skip..chunk.offsets.len()).collect(),
        };
        let metadata = &self.source.config.metadata;
        let mut columns = decoded.batch.columns().to_vec();
        if metadata.key.is_some() {
            let keys = chunk
                .keys
                .as_ref()
                .expect("keys are read when a key column is wanted");
            columns.push(Arc::new(StringArray::from_iter(
                rows.iter().map(|i| keys[*i].as_deref()),
            )));
        }
        if metadata.topic.is_some() {
            columns.push(Arc::new(StringArray::from(vec![
                topic.as_ref();
                rows.len()
            ])));
        }
        if metadata.partition.is_some() {
            columns.push(Arc::new(Int32Array::from(vec![*partition; rows.len()])));
        }
        if metadata.offset.is_some() {
            columns.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|i| chunk.offsets[*i]),
            )));
        }
        if metadata.timestamp.is_some() {
            let times =
                TimestampMillisecondArray::from_iter(rows.iter().map(|i| chunk.timestamps[*i]));
            columns.push(Arc::new(times.with_timezone("UTC")) as ArrayRef);
        }
        Ok(Some(RecordBatch::try_new(
            self.source.schema.clone(),
            columns,
        )?))
    }

    fn assigned(&mut self, partitions: Vec<(TopicPartition, Option<i64>)>) {
        for (partition, next) in partitions {
            // A repartition topic's splits are its writers, not its
            // partitions.
            if self.producers.is_none() {
                let split = self.split(&partition);
                self.split_changes.push(SplitChange::Added(split));
            }
            self.owned.insert(partition, Owned { next, from: next });
        }
    }

    async fn revoking(
        &mut self,
        partitions: Vec<TopicPartition>,
        done: std_mpsc::Sender<()>,
    ) -> Result<()> {
        let mut offsets = BTreeMap::new();
        for partition in partitions {
            if let Some(owned) = self.owned.remove(&partition) {
                offsets.insert(partition.clone(), owned);
            }
            if let Some(split) = self.splits.get(&partition) {
                self.split_changes.push(SplitChange::Released(*split));
            }
        }
        let unchanged = offsets.iter().all(|(partition, owned)| {
            owned.next.is_none() || self.committed.get(partition) == owned.next.as_ref()
        });
        if unchanged {
            let _ = done.send(());
        } else if self.checkpointing {
            // Hand over only once a checkpoint covering everything read
            // from them is complete and committed.
            self.releasing = Some(Releasing { offsets, done });
            self.wants_checkpoint = true;
        } else {
            let commit: Vec<_> = offsets
                .iter()
                .filter_map(|(p, owned)| owned.next.map(|n| (p.clone(), n)))
                .collect();
            self.releasing = Some(Releasing { offsets, done });
            self.commit(commit, 0).await;
            // Committed or not, without checkpoints there is nothing
            // better to wait for: hand the partitions over.
            if let Some(releasing) = self.releasing.take() {
                let _ = releasing.done.send(());
            }
        }
        Ok(())
    }

    /// Commits offsets to the group, only for partitions this instance
    /// owns or is handing over. Returns whether the broker took them.
    ///
    /// A failed commit is not fatal: the checkpoint, not the group, is
    /// what a restart resumes from, and the next checkpoint's commit
    /// carries the offsets on. Only another member taking over a
    /// partition reads the group's offset.
    async fn commit(&mut self, offsets: Vec<(TopicPartition, i64)>, checkpoint: u64) -> bool {
        if self.instance.task.is_some() {
            // A task's offsets live in its checkpoints, where its next
            // owner reads them; the group only hands out partitions.
            return true;
        }
        let releasing = self.releasing.as_ref().map(|r| &r.offsets);
        let member = self
            .source
            .shared
            .member
            .lock()
            .expect("not poisoned")
            .clone();
        let mut tpl = TopicPartitionList::new();
        let mut committing = Vec::new();
        for (partition, offset) in offsets {
            let Some(owned) = self
                .owned
                .get(&partition)
                .or_else(|| releasing.and_then(|r| r.get(&partition)))
            else {
                continue;
            };
            let note = CommitNote {
                member: member.clone(),
                checkpoint,
                from: owned.from.unwrap_or(offset),
            };
            let mut element = tpl.add_partition(&partition.0, partition.1);
            if element.set_offset(Offset::Offset(offset)).is_ok() {
                element.set_metadata(note.render());
                committing.push((partition, offset));
            }
        }
        if committing.is_empty() {
            return true;
        }
        let Some(running) = &self.running else {
            return false;
        };
        let Some(consumer) = running.consumer.clone() else {
            return false;
        };
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(error) = committed {
            tracing::warn!(node = %self.node, %error, "could not commit offsets to the group; the next checkpoint will");
            return false;
        }
        tracing::debug!(
            node = %self.node,
            partitions = %committing
                .iter()
                .map(|((topic, partition), offset)| format!("{topic}[{partition}]@{offset}"))
                .collect::<Vec<_>>()
                .join(", "),
            "offsets committed"
        );
        self.committed.extend(committing);
        self.last_commit = Instant::now();
        true
    }

    fn emitted_offsets(&self) -> Vec<(TopicPartition, i64)> {
        self.owned
            .iter()
            .filter_map(|(p, o)| o.next.map(|n| (p.clone(), n)))
            .collect()
    }

    /// With `stop_at: latest`: whether every partition of the topics has
    /// been read to its end, here or (committed) by another member.
    async fn reached_end(&mut self) -> Result<bool> {
        if let Some(producers) = &self.producers {
            return Ok(self.leftover.is_none() && producers.all_ended());
        }
        let Some(ends) = &self.ends else {
            return Ok(false);
        };
        if self.releasing.is_some() {
            return Ok(false);
        }
        let mut elsewhere = TopicPartitionList::new();
        for (partition, end) in ends {
            match self.owned.get(partition) {
                Some(owned) if owned.next.unwrap_or(0) < *end => return Ok(false),
                Some(_) => {}
                None if *end == 0 => {}
                None => {
                    elsewhere.add_partition(&partition.0, partition.1);
                }
            }
        }
        if elsewhere.count() == 0 {
            return Ok(true);
        }
        // Ask the group at most once a second.
        if self
            .last_end_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(false);
        }
        self.last_end_check = Some(Instant::now());
        let Some(consumer) = self.running.as_ref().and_then(|r| r.consumer.clone()) else {
            return Ok(false);
        };
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(elsewhere, Duration::from_secs(10))
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        let committed = match committed {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(node = %self.node, %error, "could not read the group's offsets; asking again");
                return Ok(false);
            }
        };
        let done = committed.elements().iter().all(|e| {
            let end = ends
                .get(&(Arc::from(e.topic()), e.partition()))
                .copied()
                .unwrap_or(0);
            matches!(e.offset(), Offset::Offset(o) if o >= end)
        });
        tracing::debug!(
            node = %self.node,
            done,
            ends = ?ends,
            committed = ?committed.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(),
            "read to the end elsewhere in the group?"
        );
        Ok(done)
    }
}

#[async_trait]
impl Source for KafkaInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        if self.running.is_none() {
            if self.instance.task.is_none()
                && self.source.shared.opened.load(Ordering::Acquire) < self.instance.parallelism
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Ok(SourceStep::Idle);
            }
            if !self.brokers_answered().await? {
                return Ok(SourceStep::Idle);
            }
            self.start().await?;
        }
        if self.reached_end().await? {
            if !self.checkpointing {
                let offsets = self.emitted_offsets();
                self.commit(offsets, 0).await;
            }
            return Ok(SourceStep::Finished);
        }
        if !self.checkpointing && self.last_commit.elapsed() >= COMMIT_INTERVAL {
            let offsets = self.emitted_offsets();
            self.commit(offsets, 0).await;
        }
        if let Some(chunk) = self.leftover.take()
            && let Some(batch) = self.accept(chunk)?
        {
            return Ok(SourceStep::Batch(batch));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        loop {
            let events = &mut self.running.as_mut().expect("started").events;
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Ok(SourceStep::Idle),
                Ok(None) => {
                    return Err(Error::connector(
                        "kafka",
                        false,
                        "the consumer thread stopped",
                    ));
                }
                Ok(Some(event)) => event,
            };
            match event {
                Event::Messages(chunk) => {
                    let rejected_before = self.rejected.len();
                    if let Some(batch) = self.accept(chunk)? {
                        return Ok(SourceStep::Batch(batch));
                    }
                    if self.rejected.len() > rejected_before {
                        return Ok(SourceStep::Idle);
                    }
                }
                Event::Assigned(partitions) => self.assigned(partitions),
                Event::Revoking { partitions, done } => {
                    self.revoking(partitions, done).await?;
                    return Ok(SourceStep::Idle);
                }
                Event::Failed(error) => return Err(kafka_error(error)),
            }
        }
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    fn position(&self) -> Result<serde_json::Value> {
        let mut offsets = self.emitted_offsets();
        if let Some(releasing) = &self.releasing {
            offsets.extend(
                releasing
                    .offsets
                    .iter()
                    .filter_map(|(p, owned)| owned.next.map(|n| (p.clone(), n))),
            );
        }
        if self.instance.task.is_some() {
            let mut position = position_to_json(None, &offsets);
            if let Some(producers) = &self.producers {
                position["producers"] = producers.to_json();
            }
            return Ok(position);
        }
        let member = self
            .source
            .shared
            .member
            .lock()
            .expect("not poisoned")
            .clone();
        Ok(position_to_json(Some(&member), &offsets))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        let (member, offsets) = position_from_json(&position)?;
        if self.instance.task.is_some() {
            self.task_restored.extend(offsets);
            if let (Some(producers), Some(recorded)) =
                (&mut self.producers, position.get("producers"))
            {
                *producers = Producers::from_json(recorded)?;
            }
            return Ok(());
        }
        if let Some(member) = member {
            *self.source.shared.member.lock().expect("not poisoned") = member;
        }
        let mut restored = self.source.shared.restored.lock().expect("not poisoned");
        restored.extend(offsets);
        Ok(())
    }

    fn open(&mut self, ctx: &SourceContext) -> Result<()> {
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
        let (_, offsets) = position_from_json(position)?;
        if !self.commit(offsets.clone(), checkpoint).await {
            if self.releasing.is_some() {
                // The rebalance still waits: try again with the next one.
                self.wants_checkpoint = true;
            }
            return Ok(());
        }
        if let Some(releasing) = &self.releasing {
            let recorded: HashMap<_, _> = offsets.into_iter().collect();
            let covered = releasing
                .offsets
                .iter()
                .all(|(p, owned)| owned.next.is_none() || recorded.get(p) == owned.next.as_ref());
            if covered {
                let releasing = self.releasing.take().expect("checked above");
                let _ = releasing.done.send(());
            }
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
