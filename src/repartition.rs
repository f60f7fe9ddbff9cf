//! Repartitioning through Kafka: the edge of a pipeline run as tasks that
//! groups by a key other than its source's partitioning goes through a
//! topic, as in Kafka Streams. The Kafka sink writes the rows keyed, and
//! the Kafka source reads them back as tasks, in the consumer group
//! `<group>-<topic>` (see [`Repartition`]).

use flumen_core::prelude::*;
use flumen_sinks::{KafkaSink, KafkaSinkConfig};
use flumen_sources::kafka::{KafkaSource, KafkaSourceConfig, StartFrom};

/// A repartition topic in the cluster of a pipeline's task source.
#[derive(Debug, Clone)]
pub struct KafkaRepartition {
    /// The task source's settings: its brokers, security, group and
    /// consumer properties serve the repartition too.
    source: KafkaSourceConfig,
    topic: String,
    partitions: u32,
    replication: i32,
}

impl KafkaRepartition {
    /// Topic `topic` with `partitions` partitions, in the cluster and
    /// group of the task source `source`; created with the broker's
    /// default replication if missing.
    pub fn new(source: &KafkaSourceConfig, topic: impl Into<String>, partitions: u32) -> Self {
        KafkaRepartition {
            source: source.clone(),
            topic: topic.into(),
            partitions,
            replication: -1,
        }
    }

    /// Creates the topic with `replication` replicas if it is missing.
    pub fn with_replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }
}

#[async_trait]
impl Repartition for KafkaRepartition {
    fn describe(&self) -> String {
        format!(
            "kafka topic {} ({} partitions)",
            self.topic, self.partitions
        )
    }

    fn folder(&self) -> String {
        format!("repartition-{}", self.topic)
    }

    async fn prepare(&self) -> Result<()> {
        let source = &self.source;
        let client = flumen_clients::kafka::client_config(
            &source.brokers,
            &source.security,
            &Default::default(),
        )?;
        flumen_clients::kafka::repartition::ensure_topic(
            &client,
            &self.topic,
            self.partitions,
            self.replication,
        )
        .await
    }

    fn writer(
        &self,
        _schema: &SchemaRef,
        keys: &[usize],
        producers: u32,
    ) -> Result<Arc<dyn SinkFactory>> {
        let source = &self.source;
        let mut config = KafkaSinkConfig::new(&source.brokers, &self.topic);
        config.connect_timeout = source.connect_timeout;
        config.security = source.security.clone();
        let sink =
            KafkaSink::repartition_writer(config, keys.to_vec(), self.partitions, producers)?;
        Ok(Arc::new(sink))
    }

    fn reader(&self, schema: &SchemaRef) -> Result<Arc<dyn SourceFactory>> {
        let mut config = self.source.clone();
        config.topics = vec![self.topic.clone()];
        // A group of its own: members of one group that subscribe to
        // different topics get partitions assigned to two members at
        // once by librdkafka's cooperative-sticky assignor.
        config.group = format!("{}-{}", self.source.group, self.topic);
        config.start_from = StartFrom::Earliest;
        let source = KafkaSource::repartition_reader(config, schema.clone())?;
        Ok(Arc::new(source))
    }
}
