//! Read positions: the partitions' end offsets, and the position a
//! checkpoint records (the group member and its offsets) to and from JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use flumen_clients::kafka::kafka_error;
use flumen_core::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

use super::consumer::{GroupContext, TopicPartition};

/// The high watermark of every partition of `topics`.
pub(super) fn end_offsets(
    consumer: &BaseConsumer<GroupContext>,
    topics: &[String],
) -> Result<BTreeMap<TopicPartition, i64>> {
    let timeout = Duration::from_secs(30);
    let mut ends = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(kafka_error)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::connector(
                "kafka",
                false,
                format!("topic `{topic}` does not exist or has no partitions"),
            ));
        }
        for partition in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(kafka_error)?;
            ends.insert((Arc::from(topic.as_str()), partition), high);
        }
    }
    Ok(ends)
}

/// Offsets as recorded in a checkpoint, with the member that read them
/// (none for a task, whose checkpoints alone say where it is).
pub(super) fn position_to_json(
    member: Option<&str>,
    offsets: &[(TopicPartition, i64)],
) -> serde_json::Value {
    let list: Vec<_> = offsets
        .iter()
        .map(|((topic, partition), offset)| {
            json!({ "topic": topic.as_ref(), "partition": partition, "offset": offset })
        })
        .collect();
    match member {
        Some(member) => json!({ "member": member, "offsets": list }),
        None => json!({ "offsets": list }),
    }
}

/// A restored position: its member (absent for an empty one) and offsets.
pub(super) type Position = (Option<String>, Vec<(TopicPartition, i64)>);

pub(super) fn position_from_json(position: &serde_json::Value) -> Result<Position> {
    if position.is_null() {
        return Ok((None, Vec::new()));
    }
    let member = position
        .get("member")
        .and_then(|m| m.as_str())
        .map(String::from);
    let invalid = || Error::internal(format!("not a Kafka source position: {position}"));
    let list = position
        .get("offsets")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(invalid)?;
    list.iter()
        .map(|entry| {
            let topic = entry
                .get("topic")
                .and_then(|t| t.as_str())
                .ok_or_else(invalid)?;
            let partition = entry
                .get("partition")
                .and_then(|p| p.as_i64())
                .ok_or_else(invalid)?;
            let offset = entry
                .get("offset")
                .and_then(|o| o.as_i64())
                .ok_or_else(invalid)?;
            Ok(((Arc::from(topic), partition as i32), offset))
        })
        .collect::<Result<Vec<_>>>()
        .map(|offsets| (member, offsets))
}
