//! The consumer thread of a source instance: polls librdkafka in a loop
//! (many messages per wake-up, no await per message), groups messages into
//! per-partition chunks, and takes part in group rebalances.
//!
//! A rebalance that takes partitions away waits, inside librdkafka's
//! callback, until the instance has checkpointed and committed everything
//! it read from them: the next owner then starts exactly where this one
//! stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::payload::Payloads;

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// Messages of one partition, in offset order.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) partition: TopicPartition,
    pub(crate) payloads: Payloads,
    pub(crate) offsets: Vec<i64>,
    pub(crate) timestamps: Vec<Option<i64>>,
    /// Keys, when a key column is wanted.
    pub(crate) keys: Option<Vec<Option<String>>>,
}

/// What the consumer thread tells its instance.
#[derive(Debug)]
pub(crate) enum Event {
    Messages(Chunk),
    /// Partitions now owned, and where reading starts in each (`None`:
    /// where `start_from` says, as the group has no offset).
    Assigned(Vec<(TopicPartition, Option<i64>)>),
    /// Partitions being taken away. Reply on `done` once everything read
    /// from them is committed; the rebalance waits for it.
    Revoking {
        partitions: Vec<TopicPartition>,
        done: std_mpsc::Sender<()>,
    },
    /// The consumer cannot go on.
    Failed(KafkaError),
}

/// Shared between the consumer thread, librdkafka's callbacks and the
/// instance.
pub(crate) struct GroupContext {
    events: mpsc::Sender<Event>,
    /// Offsets from the checkpoint the run restored, for whichever
    /// instance the group gives each partition to.
    restored: Arc<Mutex<HashMap<TopicPartition, i64>>>,
    /// This process's member id in commit notes.
    member: Arc<Mutex<String>>,
    topics: Mutex<HashMap<String, Arc<str>>>,
}

impl GroupContext {
    /// Tells the instance, unless it has gone (the consumer is closing).
    fn tell(&self, event: Event) -> bool {
        !self.events.is_closed() && self.events.blocking_send(event).is_ok()
    }

    pub(crate) fn new(
        events: mpsc::Sender<Event>,
        restored: Arc<Mutex<HashMap<TopicPartition, i64>>>,
        member: Arc<Mutex<String>>,
    ) -> Self {
        GroupContext {
            events,
            restored,
            member,
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// The shared name of topic `name`. Called for every message, so it
    /// allocates only the first time a topic is seen.
    pub(crate) fn topic(&self, name: &str) -> Arc<str> {
        let mut topics = self.topics.lock().expect("not poisoned");
        if let Some(topic) = topics.get(name) {
            return topic.clone();
        }
        let topic: Arc<str> = name.into();
        topics.insert(name.to_string(), topic.clone());
        topic
    }

    /// Where each newly assigned partition starts. The restored
    /// checkpoint's offset, if the group's offset was committed by this
    /// process (it may be ahead, from a checkpoint the restart rolled
    /// back); the later of the two if another member committed it (it
    /// may have moved on since); else the group's.
    fn starting_offsets(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        assigned: &TopicPartitionList,
    ) -> (TopicPartitionList, Vec<(TopicPartition, Option<i64>)>) {
        let committed = consumer
            .committed_offsets(assigned.clone(), Duration::from_secs(30))
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "could not read the group's committed offsets");
                assigned.clone()
            });
        let restored = self.restored.lock().expect("not poisoned").clone();
        let member = self.member.lock().expect("not poisoned").clone();
        let mut start = TopicPartitionList::new();
        let mut announced = Vec::new();
        for element in committed.elements() {
            let partition = (self.topic(element.topic()), element.partition());
            let group = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let checkpoint = restored.get(&partition).copied();
            let ours = super::source::CommitNote::parse(element.metadata())
                .is_some_and(|note| note.member == member);
            let offset = match (checkpoint, group) {
                (Some(c), Some(_)) if ours => Some(c),
                (Some(c), Some(g)) => Some(c.max(g)),
                (c, g) => c.or(g),
            };
            let _ = start.add_partition_offset(
                element.topic(),
                element.partition(),
                offset.map_or(Offset::Invalid, Offset::Offset),
            );
            announced.push((partition, offset));
        }
        (start, announced)
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        flumen_clients::kafka::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "flumen::kafka", %error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let (start, announced) = self.starting_offsets(consumer, tpl);
                tracing::info!(partitions = %describe(&start), "partitions assigned");
                self.tell(Event::Assigned(announced));
                let result = if cooperative {
                    consumer.incremental_assign(&start)
                } else {
                    consumer.assign(&start)
                };
                if let Err(error) = result {
                    self.tell(Event::Failed(error));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = tpl
                    .elements()
                    .iter()
                    .map(|e| (self.topic(e.topic()), e.partition()))
                    .collect();
                tracing::info!(partitions = %describe(tpl), "partitions revoked; committing what was read from them");
                let (done, wait) = std_mpsc::channel();
                // If the instance has gone, there is nothing to wait for.
                if self.tell(Event::Revoking { partitions, done }) {
                    let _ = wait.recv();
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                match result {
                    Ok(()) => tracing::info!(partitions = %describe(tpl), "partitions released"),
                    Err(error) => tracing::warn!(%error, "could not unassign revoked partitions"),
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; leaving the current assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the consumer thread groups messages.
pub(crate) struct PollSettings {
    pub(crate) batch_size: usize,
    pub(crate) max_wait: Duration,
    pub(crate) with_keys: bool,
}

/// Polls until `stop` is set or the instance goes away.
pub(crate) fn poll_loop(
    consumer: Arc<BaseConsumer<GroupContext>>,
    settings: PollSettings,
    stop: Arc<AtomicBool>,
) {
    let context = consumer.context().clone();
    let mut chunks: HashMap<TopicPartition, Chunk> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut count = 0;
        while count < settings.batch_size {
            let waited = started.elapsed();
            let timeout = if count == 0 {
                Duration::from_millis(100)
            } else if waited >= settings.max_wait {
                break;
            } else {
                settings.max_wait - waited
            };
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    let partition = (context.topic(message.topic()), message.partition());
                    let chunk = chunks.entry(partition.clone()).or_insert_with(|| Chunk {
                        partition,
                        payloads: Payloads::default(),
                        offsets: Vec::new(),
                        timestamps: Vec::new(),
                        keys: settings.with_keys.then(Vec::new),
                    });
                    chunk.payloads.push(message.payload().unwrap_or_default());
                    chunk.offsets.push(message.offset());
                    chunk.timestamps.push(message.timestamp().to_millis());
                    if let Some(keys) = &mut chunk.keys {
                        keys.push(
                            message
                                .key()
                                .map(|k| String::from_utf8_lossy(k).into_owned()),
                        );
                    }
                    count += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => {
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        context.tell(Event::Failed(error));
                        return;
                    }
                    tracing::warn!(target: "flumen::kafka", %error, "consume error; retrying");
                }
                // Nothing more for now: emit what arrived, check `stop`.
                None => break,
            }
        }
        for (_, chunk) in chunks.drain() {
            if !context.tell(Event::Messages(chunk)) {
                return;
            }
        }
    }
}
