//! The messages of a repartition topic, which the Kafka sink writes and
//! the Kafka source reads back when a pipeline's edge goes through Kafka
//! (see `flumen_core::component::Repartition`).
//!
//! - A **rows** message holds the rows of one batch that hash to its
//!   partition, as an Arrow IPC stream (schema, then one batch): the
//!   reader gets back exactly the columns and types written.
//! - Its **key** names the writer (the producer), how many there are, and
//!   the number of its first row among the rows that writer sent to the
//!   partition: `3/8/1200`. The reader keeps a watermark per writer, so
//!   one writer running ahead makes no other's rows late; and it drops
//!   rows numbered below the next it expects, which a writer restarted
//!   from a checkpoint writes again.
//! - At its end, each producer writes an **end** message to every
//!   partition (key `3/8/end`, no value): a reader ends once all have.

use std::time::Duration;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use flumen_core::prelude::*;

use super::kafka_error;

/// What a repartition message's key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Rows from a writer.
    Rows {
        /// The writer's number, from 0.
        producer: u32,
        /// How many writers there are.
        producers: u32,
        /// The number of the first row among those the writer sent to
        /// this partition, from 0.
        first: u64,
    },
    /// A writer has written everything.
    End {
        /// The writer's number, from 0.
        producer: u32,
        /// How many writers there are.
        producers: u32,
    },
}

impl Framing {
    /// The message key.
    pub fn key(&self) -> String {
        match self {
            Framing::Rows {
                producer,
                producers,
                first,
            } => format!("{producer}/{producers}/{first}"),
            Framing::End {
                producer,
                producers,
            } => format!("{producer}/{producers}/end"),
        }
    }

    /// Reads a message key; `None` if it is not one of a repartition topic.
    pub fn parse(key: &str) -> Option<Framing> {
        let mut parts = key.split('/');
        let producer = parts.next()?.parse().ok()?;
        let producers = parts.next()?.parse().ok()?;
        let framing = match parts.next()? {
            "end" => Framing::End {
                producer,
                producers,
            },
            first => Framing::Rows {
                producer,
                producers,
                first: first.parse().ok()?,
            },
        };
        (parts.next().is_none() && producer < producers).then_some(framing)
    }

    /// The producer the message comes from, and how many there are.
    pub fn producer(&self) -> (u32, u32) {
        match *self {
            Framing::Rows {
                producer,
                producers,
                ..
            }
            | Framing::End {
                producer,
                producers,
            } => (producer, producers),
        }
    }
}

/// A rows message's value.
pub fn encode_rows(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The rows of a rows message's value.
pub fn decode_rows(value: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(value, None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Creates `topic` with `partitions` partitions (replicated `replication`
/// times, -1 for the broker's default) unless it exists; one that exists
/// must have that many partitions, since rows are placed by their key's
/// hash modulo the count.
pub async fn ensure_topic(
    client: &ClientConfig,
    topic: &str,
    partitions: u32,
    replication: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(kafka_error)?;
    let new = NewTopic::new(
        topic,
        partitions as i32,
        TopicReplication::Fixed(replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(kafka_error)?;
    for result in results {
        match result {
            Ok(_) => {
                tracing::info!(topic, partitions, "repartition topic created");
                return Ok(());
            }
            // An earlier run, or another process, created it.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(Error::connector(
                    "kafka",
                    false,
                    format!("cannot create repartition topic `{topic}`: {code}"),
                ));
            }
        }
    }
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(kafka_error)?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as u32);
    if count != partitions {
        return Err(Error::config(
            "repartition.kafka.partitions",
            format!(
                "is {partitions}, but topic `{topic}` exists with {count} partitions; \
                 a repartition topic keeps its count (rows are placed by their key's hash \
                 modulo it): set {count}, or delete the topic"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_producer_and_the_end() {
        for framing in [
            Framing::Rows {
                producer: 3,
                producers: 8,
                first: 1200,
            },
            Framing::End {
                producer: 0,
                producers: 1,
            },
        ] {
            assert_eq!(Framing::parse(&framing.key()), Some(framing));
        }
        for foreign in ["", "user-7", "3", "3/8", "8/8/0", "1/2/begin", "1/2/end/x"] {
            assert_eq!(Framing::parse(foreign), None, "{foreign}");
        }
    }
}
