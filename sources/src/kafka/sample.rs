//! Columns of JSON values inferred from a sample of the topics.

use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use flumen_core::prelude::*;

use super::config::KafkaSourceConfig;
use flumen_clients::kafka::{BrokerWait, client_config, kafka_error};

/// Infers the columns of JSON values from a sample read from the start of
/// every partition of the topics (outside the group: nothing is committed).
pub(super) fn infer_schema(config: &KafkaSourceConfig) -> Result<SchemaRef> {
    if config.topics.iter().any(|t| t.starts_with('^')) {
        return Err(Error::config(
            "schema",
            "cannot be inferred for topic patterns; declare it",
        ));
    }
    let mut client = client_config(&config.brokers, &config.security, &config.properties)?;
    client
        .set("group.id", format!("{}-schema-sample", config.group))
        .set("enable.auto.commit", "false");
    BrokerWait::new(
        &client,
        &config.brokers,
        config.connect_timeout,
        "connect_timeout",
    )?
    .wait()?;
    let consumer: BaseConsumer = client.create().map_err(kafka_error)?;
    let timeout = Duration::from_secs(10);
    let mut assignment = TopicPartitionList::new();
    for topic in &config.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(kafka_error)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .map_err(kafka_error)?;
        }
    }
    consumer.assign(&assignment).map_err(kafka_error)?;
    let mut sample = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut taken = 0;
    while taken < config.sample_size && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some(payload) = message.payload() {
                    sample.extend_from_slice(payload);
                    sample.push(b'\n');
                    taken += 1;
                }
            }
            Some(Err(error)) => return Err(kafka_error(error)),
            None if taken > 0 => break,
            None => {}
        }
    }
    crate::payload::infer_json(&sample, taken, &config.topics.join(", "))
}
