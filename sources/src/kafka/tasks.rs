//! The task group of a Kafka source with `tasks: true`: a consumer that
//! joins the group only to be handed partitions, never to read them. Each
//! partition it holds is a task, which the runtime runs as a pipeline of
//! its own (reading that partition alone, see `read_task_partition`).
//!
//! Rebalances are cooperative (`cooperative-sticky`), so a member joining
//! or leaving moves only the partitions that must move. A partition being
//! taken away waits, inside librdkafka's callback, until its task has
//! stopped at a checkpoint: its next owner starts from that checkpoint.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use flumen_clients::kafka::{client_config, kafka_error};
use flumen_core::prelude::*;

use super::config::KafkaSourceConfig;

/// This process's place in the group that shares a topic's partitions as
/// tasks.
pub(crate) struct KafkaTasks {
    tasks: u32,
    changes: mpsc::Receiver<TaskChange>,
    leaving: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaTasks {
    /// Joins `config.group` for `config.topics[0]`, whose partitions are
    /// the tasks.
    pub(crate) fn join(config: &KafkaSourceConfig) -> Result<Self> {
        let topic = config.topics[0].clone();
        let mut client = client_config(&config.brokers, &config.security, &config.properties)?;
        client
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("client.id", format!("flumen-tasks-{}", config.group));
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let (changes_tx, changes) = mpsc::channel(16);
        let leaving = Arc::new(AtomicBool::new(false));
        let context = TaskContext {
            changes: changes_tx,
            leaving: leaving.clone(),
            topic: topic.clone(),
        };
        let consumer: BaseConsumer<TaskContext> =
            client.create_with_context(context).map_err(kafka_error)?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), config.connect_timeout)
            .map_err(|e| {
                Error::connector(
                    "kafka",
                    true,
                    format!(
                        "cannot reach the brokers at `{}` to join group `{}` within {:?} ({e}): is Kafka running there? (`brokers`, `connect_timeout`)",
                        config.brokers, config.group, config.connect_timeout
                    ),
                )
            })?;
        let tasks = metadata
            .topics()
            .iter()
            .map(|t| t.partitions().len())
            .sum::<usize>() as u32;
        if tasks == 0 {
            return Err(Error::connector(
                "kafka",
                false,
                format!("topic `{topic}` does not exist or has no partitions"),
            ));
        }
        consumer.subscribe(&[&topic]).map_err(kafka_error)?;
        tracing::info!(
            group = %config.group,
            topic = %topic,
            tasks,
            "joining the consumer group: each partition this process is given runs as a task"
        );
        let thread_leaving = leaving.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-tasks".into())
            .spawn(move || {
                // Polling serves the group's callbacks; messages never come,
                // as every assigned partition is paused.
                while !thread_leaving.load(Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                // Dropping the consumer leaves the group (its partitions
                // revoked, answered at once as `leaving` is set).
                drop(consumer);
            })
            .map_err(|e| Error::internal(format!("cannot start the task group thread: {e}")))?;
        Ok(KafkaTasks {
            tasks,
            changes,
            leaving,
            thread: Some(thread),
        })
    }
}

#[async_trait]
impl TaskGroup for KafkaTasks {
    fn tasks(&self) -> Vec<u32> {
        (0..self.tasks).collect()
    }

    async fn next(&mut self) -> Result<Option<TaskChange>> {
        Ok(self.changes.recv().await)
    }

    async fn leave(&mut self) -> Result<()> {
        self.leaving.store(true, Ordering::Relaxed);
        self.changes.close();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::internal(e.to_string()))?
                .map_err(|_| Error::internal("the task group thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for KafkaTasks {
    fn drop(&mut self) {
        self.leaving.store(true, Ordering::Relaxed);
        self.changes.close();
    }
}

struct TaskContext {
    changes: mpsc::Sender<TaskChange>,
    leaving: Arc<AtomicBool>,
    /// The topic whose partitions are the tasks, for the log.
    topic: String,
}

impl TaskContext {
    fn tell(&self, change: TaskChange) -> bool {
        !self.leaving.load(Ordering::Relaxed) && self.changes.blocking_send(change).is_ok()
    }
}

fn tasks_of(tpl: &TopicPartitionList) -> Vec<u32> {
    let tasks: BTreeSet<u32> = tpl
        .elements()
        .iter()
        .map(|e| e.partition() as u32)
        .collect();
    tasks.into_iter().collect()
}

impl ClientContext for TaskContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        flumen_clients::kafka::log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(target: "flumen::kafka", %error, reason, "kafka task group error");
    }
}

impl ConsumerContext for TaskContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let result = match cooperative {
                    true => consumer.incremental_assign(tpl),
                    false => consumer.assign(tpl),
                };
                if let Err(error) = result.and_then(|()| consumer.pause(tpl)) {
                    tracing::warn!(%error, "could not take the assigned partitions");
                    return;
                }
                let tasks = tasks_of(tpl);
                if !tasks.is_empty() {
                    tracing::info!(tasks = ?tasks, topic = %self.topic, "tasks assigned");
                    self.tell(TaskChange::Assigned(tasks));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let tasks = tasks_of(tpl);
                if self.leaving.load(Ordering::Relaxed) {
                    tracing::info!(tasks = ?tasks, topic = %self.topic, "tasks released: leaving the group");
                } else if consumer.assignment_lost() {
                    tracing::warn!(tasks = ?tasks, topic = %self.topic, "tasks lost: this process left the group without handing them over");
                    self.tell(TaskChange::Lost(tasks));
                } else if !tasks.is_empty() {
                    tracing::info!(tasks = ?tasks, topic = %self.topic, "tasks revoked; stopping them at a checkpoint");
                    let (done, wait) = std_mpsc::channel();
                    if self.tell(TaskChange::Revoked { tasks, done }) {
                        let _ = wait.recv();
                    }
                }
                let result = match cooperative {
                    true => consumer.incremental_unassign(tpl),
                    false => consumer.unassign(),
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "could not release the revoked partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; leaving the current assignment");
                let _ = consumer.unassign();
            }
        }
    }
}
