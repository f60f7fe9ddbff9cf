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

use flumen_clients::kafka::{BrokerWait, kafka_error};
use flumen_core::prelude::*;

use super::config::{Delivery, KafkaSinkConfig};
use crate::message::RowEncoder;

/// How long a flush or a transaction step may take before the checkpoint
/// fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A sink producing one message per row. Built from a [`KafkaSinkConfig`].
#[derive(Debug, Clone)]
pub struct KafkaSink {
    config: Arc<KafkaSinkConfig>,
}

impl KafkaSink {
    pub(super) fn new(config: KafkaSinkConfig) -> Result<Self> {
        Ok(KafkaSink {
            config: Arc::new(config),
        })
    }
}

impl SinkFactory for KafkaSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        RowEncoder::new(&self.config.message_settings(), schema).map(|_| ())
    }

    fn create(&self, instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let encoder = RowEncoder::new(&self.config.message_settings(), &schema)?;
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
            encoder,
            mode,
            rejected: Vec::new(),
        }))
    }

    fn exactly_once(&self) -> bool {
        self.config.delivery == Delivery::ExactlyOnce
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

struct KafkaSinkInstance {
    config: Arc<KafkaSinkConfig>,
    encoder: RowEncoder,
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

async fn flush(producer: &Arc<KafkaProducer>) -> Result<()> {
    let flushing = producer.clone();
    blocking(move || flushing.flush(TIMEOUT)).await?;
    delivery_failure(producer)
}

#[async_trait]
impl Sink for KafkaSinkInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let (messages, rejected) = self.encoder.encode(batch)?;
        self.rejected = rejected;
        let producer = self.current().await?;
        delivery_failure(&producer)?;
        let topic = self.config.topic.as_str();
        for row in 0..messages.len() {
            loop {
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
                match producer.send(record) {
                    Ok(()) => break,
                    // The local queue is full: wait for the broker to
                    // catch up (backpressure), then send again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((error, _)) => return Err(kafka_error(error)),
                }
            }
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
        match &mut self.mode {
            Mode::AtLeastOnce(None) => Ok(serde_json::Value::Null),
            Mode::AtLeastOnce(Some(producer)) => {
                flush(producer).await?;
                Ok(serde_json::Value::Null)
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
