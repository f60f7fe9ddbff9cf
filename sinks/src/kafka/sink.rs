//! The Kafka sink and its instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;

use flumen_clients::kafka::repartition::{Framing, encode_rows};
use flumen_clients::kafka::{BrokerWait, kafka_error};
use flumen_core::partition::{HashPartitioner, KeyGroups};
use flumen_core::prelude::*;

use super::config::{Delivery, KafkaSinkConfig};
use crate::message::RowEncoder;

/// How long a flush or a transaction step may take before the checkpoint
/// fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A sink producing one message per row, or the writer of a repartition
/// topic. Built from a [`KafkaSinkConfig`].
#[derive(Debug, Clone)]
pub struct KafkaSink {
    config: Arc<KafkaSinkConfig>,
    repartition: Option<RepartitionWrite>,
}

/// How the writer of a repartition topic places rows.
#[derive(Debug, Clone)]
struct RepartitionWrite {
    /// Column indices whose hash picks the partition.
    keys: Vec<usize>,
    partitions: u32,
    /// Writer instances over all tasks.
    producers: u32,
}

impl KafkaSink {
    pub(super) fn new(config: KafkaSinkConfig) -> Result<Self> {
        Ok(KafkaSink {
            config: Arc::new(config),
            repartition: None,
        })
    }

    /// The writer of the repartition topic `config.topic`, which has
    /// `partitions` partitions: each batch's rows go to the partitions
    /// their `keys` (column indices) hash to, one message per partition
    /// (see [`flumen_clients::kafka::repartition`]). `producers` is how
    /// many instances write, over all tasks.
    ///
    /// Writes are at least once (an idempotent producer, flushed at every
    /// checkpoint), and numbered: each checkpoint records the number of
    /// the next row per partition, so a writer restarted from it numbers
    /// the rows it writes again as it did the first time, and the reader
    /// drops them. Kafka transactions are not needed, and a crash between
    /// a checkpoint and a commit loses nothing.
    pub fn repartition_writer(
        config: KafkaSinkConfig,
        keys: Vec<usize>,
        partitions: u32,
        producers: u32,
    ) -> Result<Self> {
        let mut config = config;
        config.delivery = Delivery::AtLeastOnce;
        // Each message already carries many rows: one message per record
        // batch lets a reader resume at any offset exactly there.
        config
            .properties
            .entry("batch.num.messages".into())
            .or_insert_with(|| "1".into());
        config.client_config()?;
        Ok(KafkaSink {
            config: Arc::new(config),
            repartition: Some(RepartitionWrite {
                keys,
                partitions,
                producers,
            }),
        })
    }
}

impl SinkFactory for KafkaSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        if self.repartition.is_some() {
            return Ok(());
        }
        RowEncoder::new(&self.config.message_settings(), schema).map(|_| ())
    }

    fn create(&self, instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let encoding = match &self.repartition {
            None => Encoding::Rows(RowEncoder::new(&self.config.message_settings(), &schema)?),
            Some(write) => {
                let task = instance.task.unwrap_or(0);
                let producer = task * instance.parallelism as u32 + instance.index as u32;
                let partitions = write.partitions as usize;
                Encoding::Repartition {
                    partitioner: HashPartitioner::new(
                        write.keys.clone(),
                        partitions,
                        KeyGroups::new(partitions),
                    ),
                    producer,
                    producers: write.producers,
                    next: vec![0; partitions],
                }
            }
        };
        let mode = match self.config.delivery {
            Delivery::AtLeastOnce => Mode::AtLeastOnce(None),
            Delivery::ExactlyOnce => Mode::ExactlyOnce(Transactions {
                prefix: format!(
                    "{}-{}",
                    self.config
                        .transactional_id
                        .clone()
                        .unwrap_or_else(|| format!("flumen-{}", self.config.topic)),
                    instance.label()
                ),
                open: None,
                pending: BTreeMap::new(),
                idle: Vec::new(),
                slots: 0,
            }),
        };
        Ok(Box::new(KafkaSinkInstance {
            config: self.config.clone(),
            brokers_answered: false,
            encoding,
            mode,
            rejected: Vec::new(),
        }))
    }

    /// A repartition topic's rows may be written twice, but its reader
    /// drops the second copy by its number: each counts once.
    fn exactly_once(&self) -> bool {
        self.repartition.is_some() || self.config.delivery == Delivery::ExactlyOnce
    }
}

/// Remembers the first failed delivery, reported at the next write or
/// flush.
#[derive(Default)]
struct DeliveryReports {
    failed: Mutex<Option<KafkaError>>,
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        flumen_clients::kafka::log(level, fac, log_message);
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failed = self.failed.lock().expect("not poisoned");
            failed.get_or_insert_with(|| error.clone());
        }
    }
}

type KafkaProducer = ThreadedProducer<DeliveryReports>;

/// One transactional producer: `<prefix>-<slot>`.
struct Slot {
    index: usize,
    producer: Arc<KafkaProducer>,
}

/// Exactly-once: a transaction per checkpoint. Once pre-committed, a
/// transaction waits for its commit on its own producer while writing
/// goes on in another, so rows after a barrier never join the
/// transaction before it.
struct Transactions {
    prefix: String,
    open: Option<Slot>,
    pending: BTreeMap<u64, Slot>,
    idle: Vec<Slot>,
    /// Producers (transactional ids) created so far.
    slots: usize,
}

enum Mode {
    AtLeastOnce(Option<Arc<KafkaProducer>>),
    ExactlyOnce(Transactions),
}

/// How rows become messages.
enum Encoding {
    /// One message per row.
    Rows(RowEncoder),
    /// A repartition topic's: one message per partition per batch.
    Repartition {
        partitioner: HashPartitioner,
        /// This writer's number, and how many there are.
        producer: u32,
        producers: u32,
        /// Per partition, the number of the next row written to it.
        next: Vec<u64>,
    },
}

struct KafkaSinkInstance {
    config: Arc<KafkaSinkConfig>,
    encoding: Encoding,
    mode: Mode,
    /// Rows of the last batch that could not be made messages.
    rejected: Vec<Rejected>,
    /// Whether a broker has answered since the instance started.
    brokers_answered: bool,
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(kafka_error)
}

impl KafkaSinkInstance {
    fn producer(&self, transactional_id: Option<&str>) -> Result<KafkaProducer> {
        let mut client = self.config.client_config()?;
        if let Some(id) = transactional_id {
            client.set("transactional.id", id);
        }
        client
            .create_with_context(DeliveryReports::default())
            .map_err(kafka_error)
    }

    /// A transactional producer with no transaction of an earlier run
    /// left open: `init_transactions` fences older producers of the same
    /// id and aborts what they left.
    async fn init_slot(&self, prefix: &str, index: usize) -> Result<Slot> {
        let producer = Arc::new(self.producer(Some(&format!("{prefix}-{index}")))?);
        let init = producer.clone();
        blocking(move || init.init_transactions(TIMEOUT)).await?;
        Ok(Slot { index, producer })
    }

    /// The producer rows are written with now.
    async fn current(&mut self) -> Result<Arc<KafkaProducer>> {
        if !self.brokers_answered {
            let client = self.config.client_config()?;
            let (brokers, within) = (self.config.brokers.clone(), self.config.connect_timeout);
            tokio::task::spawn_blocking(move || {
                BrokerWait::new(&client, &brokers, within, "connect_timeout")?.wait()
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
            self.brokers_answered = true;
        }
        if let Mode::AtLeastOnce(producer) = &self.mode {
            if let Some(producer) = producer {
                return Ok(producer.clone());
            }
            let producer = Arc::new(self.producer(None)?);
            self.mode = Mode::AtLeastOnce(Some(producer.clone()));
            return Ok(producer);
        }
        let Mode::ExactlyOnce(transactions) = &mut self.mode else {
            unreachable!("handled above")
        };
        if let Some(open) = &transactions.open {
            return Ok(open.producer.clone());
        }
        let slot = match transactions.idle.pop() {
            Some(slot) => slot,
            None => {
                let (prefix, index) = (transactions.prefix.clone(), transactions.slots);
                transactions.slots += 1;
                self.init_slot(&prefix, index).await?
            }
        };
        slot.producer.begin_transaction().map_err(kafka_error)?;
        let producer = slot.producer.clone();
        let Mode::ExactlyOnce(transactions) = &mut self.mode else {
            unreachable!("exactly once")
        };
        transactions.open = Some(slot);
        Ok(producer)
    }
}

/// A failed delivery reported since the last check.
fn delivery_failure(producer: &KafkaProducer) -> Result<()> {
    match producer
        .context()
        .failed
        .lock()
        .expect("not poisoned")
        .take()
    {
        Some(error) => Err(Error::connector(
            "kafka",
            true,
            format!("a message could not be delivered: {error}"),
        )),
        None => Ok(()),
    }
}

/// Sends a message, waiting while the local queue is full (the broker
/// catching up: backpressure).
async fn send(producer: &KafkaProducer, record: BaseRecord<'_, str, [u8]>) -> Result<()> {
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((error, _)) => return Err(kafka_error(error)),
        }
    }
}

async fn flush(producer: &Arc<KafkaProducer>) -> Result<()> {
    let flushing = producer.clone();
    blocking(move || flushing.flush(TIMEOUT)).await?;
    delivery_failure(producer)
}

#[async_trait]
impl Sink for KafkaSinkInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        if let Encoding::Repartition {
            partitioner,
            producer: writer,
            producers,
            next,
        } = &mut self.encoding
        {
            let (writer, producers) = (*writer, *producers);
            let parts = partitioner.split(&batch)?;
            let mut messages = Vec::new();
            for (partition, part) in parts.into_iter().enumerate() {
                let Some(part) = part else { continue };
                let first = next[partition];
                next[partition] += part.num_rows() as u64;
                let key = Framing::Rows {
                    producer: writer,
                    producers,
                    first,
                }
                .key();
                messages.push((partition as i32, key, encode_rows(&part)?));
            }
            let producer = self.current().await?;
            delivery_failure(&producer)?;
            for (partition, key, value) in &messages {
                let record = BaseRecord::to(&self.config.topic)
                    .partition(*partition)
                    .key(key.as_str())
                    .payload(value.as_slice());
                send(&producer, record).await?;
            }
            return Ok(());
        }
        let Encoding::Rows(encoder) = &mut self.encoding else {
            unreachable!("handled above")
        };
        let (messages, rejected) = encoder.encode(batch)?;
        self.rejected = rejected;
        let producer = self.current().await?;
        delivery_failure(&producer)?;
        let topic = self.config.topic.as_str();
        for row in 0..messages.len() {
            let mut record: BaseRecord<'_, str, [u8]> =
                BaseRecord::to(topic).payload(messages.value(row));
            let keyed = usize::from(self.config.key.is_some());
            if keyed == 1
                && let Some(key) = messages.text(0, row)
            {
                record = record.key(key);
            }
            let mut headers = OwnedHeaders::new();
            let mut any = false;
            for (index, name) in self.config.headers.keys().enumerate() {
                let value = messages.text(keyed + index, row);
                headers = headers.insert(Header { key: name, value });
                any = true;
            }
            if any {
                record = record.headers(headers);
            }
            send(&producer, record).await?;
        }
        Ok(())
    }

    /// A repartition topic's writer tells every partition's reader that
    /// it has written everything, in the final checkpoint's transaction.
    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        let Encoding::Repartition {
            partitioner,
            producer,
            producers,
            ..
        } = &self.encoding
        else {
            return Ok(());
        };
        let key = Framing::End {
            producer: *producer,
            producers: *producers,
        }
        .key();
        let partitions = partitioner.partitions();
        let producer = self.current().await?;
        for partition in 0..partitions {
            let record = BaseRecord::<'_, str, [u8]>::to(&self.config.topic)
                .partition(partition as i32)
                .key(key.as_str())
                .payload(&[][..]);
            send(&producer, record).await?;
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn pre_commit(
        &mut self,
        checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        // A repartition topic's writer records where its row numbers are.
        let numbered = match &self.encoding {
            Encoding::Repartition { next, .. } => json!({ "next_rows": next }),
            Encoding::Rows(_) => serde_json::Value::Null,
        };
        match &mut self.mode {
            Mode::AtLeastOnce(None) => Ok(numbered),
            Mode::AtLeastOnce(Some(producer)) => {
                flush(producer).await?;
                Ok(numbered)
            }
            Mode::ExactlyOnce(transactions) => {
                let slots = transactions.slots;
                let Some(slot) = transactions.open.take() else {
                    return Ok(json!({ "checkpoint": checkpoint, "slots": slots }));
                };
                let index = slot.index;
                let result = flush(&slot.producer).await;
                let Mode::ExactlyOnce(transactions) = &mut self.mode else {
                    unreachable!("exactly once")
                };
                transactions.pending.insert(checkpoint, slot);
                result?;
                Ok(json!({
                    "checkpoint": checkpoint,
                    "transactional_id": format!("{}-{index}", transactions.prefix),
                    "slots": slots,
                }))
            }
        }
    }

    async fn commit(&mut self, transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        let Mode::ExactlyOnce(transactions) = &mut self.mode else {
            return Ok(());
        };
        let Some(checkpoint) = transaction.get("checkpoint").and_then(|c| c.as_u64()) else {
            return Ok(());
        };
        // Committed already (or recovered): nothing to do.
        let Some(slot) = transactions.pending.remove(&checkpoint) else {
            return Ok(());
        };
        let producer = slot.producer.clone();
        blocking(move || producer.commit_transaction(TIMEOUT)).await?;
        let Mode::ExactlyOnce(transactions) = &mut self.mode else {
            unreachable!("exactly once")
        };
        transactions.idle.push(slot);
        Ok(())
    }

    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        if let Mode::ExactlyOnce(transactions) = &mut self.mode
            && let Some(slot) = transactions.open.take()
        {
            let producer = slot.producer.clone();
            blocking(move || producer.abort_transaction(TIMEOUT)).await?;
            // The aborted messages are reported as purged: not a failure.
            slot.producer
                .context()
                .failed
                .lock()
                .expect("not poisoned")
                .take();
            if let Mode::ExactlyOnce(transactions) = &mut self.mode {
                transactions.idle.push(slot);
            }
        }
        Ok(())
    }

    async fn recover(
        &mut self,
        from: Option<(u64, serde_json::Value)>,
        _ctx: &mut Context,
    ) -> Result<()> {
        if let Encoding::Repartition { next, .. } = &mut self.encoding
            && let Some(recorded) = from.as_ref().and_then(|(_, t)| t.get("next_rows"))
        {
            let recorded: Vec<u64> = serde_json::from_value(recorded.clone())
                .map_err(|e| Error::internal(format!("a repartition writer's row numbers: {e}")))?;
            if recorded.len() != next.len() {
                return Err(Error::Checkpoint(format!(
                    "the repartition topic had {} partitions when the checkpoint was taken and has {} now",
                    recorded.len(),
                    next.len()
                )));
            }
            *next = recorded;
        }
        let Mode::ExactlyOnce(transactions) = &self.mode else {
            return Ok(());
        };
        // Every transactional id an earlier run may have used: one more
        // than it had when it last pre-committed, and at least two.
        let recorded = from
            .as_ref()
            .and_then(|(_, t)| t.get("slots").and_then(|s| s.as_u64()))
            .unwrap_or(0) as usize;
        let prefix = transactions.prefix.clone();
        let mut slots = Vec::new();
        for index in 0..(recorded + 1).max(2) {
            slots.push(self.init_slot(&prefix, index).await?);
        }
        if let Some((checkpoint, transaction)) = &from
            && transaction.get("transactional_id").is_some()
        {
            tracing::info!(
                checkpoint,
                "Kafka transactions of the earlier run are settled: committed ones stay, open ones are aborted"
            );
        }
        let Mode::ExactlyOnce(transactions) = &mut self.mode else {
            unreachable!("exactly once")
        };
        transactions.slots = slots.len();
        slots.reverse();
        transactions.idle = slots;
        Ok(())
    }
}
