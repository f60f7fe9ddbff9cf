//! The task group of a Kinesis source with `tasks: true`: this process's
//! part of the lease table, where each shard it holds is a task, which the
//! runtime runs as a pipeline of its own (reading that shard alone).
//!
//! The leases are kept as without tasks (see [`super::leases`]): renewed
//! every third of `failover_time`, free and expired ones taken up to a
//! fair share, one asked for when the load is uneven. What differs is
//! where a shard's read position lives: in its task's checkpoints, with
//! the task's state, not in the lease table. So a lease changes hands
//! whole:
//! - asked for by another process, its task is suspended at a checkpoint
//!   before the hand-over is written;
//! - expired (its process died), the next owner's task starts from the
//!   task's latest complete checkpoint;
//! - taken away without either (this process did not renew it in time),
//!   its task is stopped at once.
//!
//! A task is named by its shard's number (`shardId-000000000007` is task
//! 7), the same in every process. A task that read its shard to the end
//! (a reshard closed it) records `SHARD_END` in the lease, which lets the
//! shard's children be taken.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use flumen_core::prelude::*;

use super::config::{KinesisSourceConfig, StartFrom};
use super::leases::{LeaseBook, LeaseTable, LeaseWrite, WriteError};
use super::shards::Shard;
use super::source::{Position, new_member};
use super::{StreamId, list_shards};

/// The prefix of every shard id, followed by the shard's number.
const SHARD_PREFIX: &str = "shardId-";

/// The task that reads `shard`: its number.
pub(crate) fn task_of(shard: &str) -> Result<u32> {
    shard
        .strip_prefix(SHARD_PREFIX)
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| {
            Error::connector(
                "kinesis",
                false,
                format!(
                    "shard `{shard}` is not named `{SHARD_PREFIX}<number>`, so it cannot be \
                     a task (`tasks`)"
                ),
            )
        })
}

/// The shard task `task` reads.
pub(crate) fn shard_of(task: u32) -> String {
    format!("{SHARD_PREFIX}{task:012}")
}

/// This process's place among those sharing a stream's shards as tasks.
pub(crate) struct KinesisTasks {
    /// Every shard listed or found in the table, as tasks.
    known: Arc<Mutex<Vec<u32>>>,
    changes: mpsc::Receiver<Result<TaskChange>>,
    control: mpsc::UnboundedSender<Control>,
    keeper: JoinHandle<()>,
}

/// What the runtime tells the keeper.
enum Control {
    /// The task ran to its end, its source recording these positions.
    Finished(u32, Vec<serde_json::Value>),
    /// The task asked for by another process has been suspended.
    Suspended(String),
    /// Release every lease and stop.
    Leave(oneshot::Sender<()>),
}

impl KinesisTasks {
    /// Starts keeping leases in the table `config.leases` names. Called
    /// inside the run's tokio runtime.
    pub(crate) fn join(config: Arc<KinesisSourceConfig>, stream: StreamId) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("the Kinesis task group starts inside a run"))?;
        let (changes_tx, changes) = mpsc::channel(16);
        let (control, control_rx) = mpsc::unbounded_channel();
        let known = Arc::new(Mutex::new(Vec::new()));
        let keeper = runtime.spawn(
            Keeper::start(config, stream, changes_tx, control.clone(), known.clone())
                .run(control_rx),
        );
        Ok(KinesisTasks {
            known,
            changes,
            control,
            keeper,
        })
    }
}

#[async_trait]
impl TaskGroup for KinesisTasks {
    fn tasks(&self) -> Vec<u32> {
        self.known.lock().expect("not poisoned").clone()
    }

    async fn next(&mut self) -> Result<Option<TaskChange>> {
        self.changes.recv().await.transpose()
    }

    async fn finished(&mut self, task: u32, positions: &[serde_json::Value]) -> Result<()> {
        let _ = self
            .control
            .send(Control::Finished(task, positions.to_vec()));
        Ok(())
    }

    async fn leave(&mut self) -> Result<()> {
        let (done, released) = oneshot::channel();
        if self.control.send(Control::Leave(done)).is_ok() {
            let _ = released.await;
        }
        self.changes.close();
        Ok(())
    }
}

impl Drop for KinesisTasks {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps this process's leases, and tells the runtime which tasks to run.
struct Keeper {
    config: Arc<KinesisSourceConfig>,
    stream: StreamId,
    failover_time: Duration,
    changes: mpsc::Sender<Result<TaskChange>>,
    /// For the waits on suspended tasks to report back.
    control: mpsc::UnboundedSender<Control>,
    known: Arc<Mutex<Vec<u32>>>,
    book: LeaseBook,
    /// The stream's shards as last listed, and when to list them next.
    listed: HashMap<String, Shard>,
    next_listing: Instant,
    /// Held shards whose tasks the runtime was told to run.
    running: HashSet<String>,
    /// Held shards whose tasks are being suspended for a hand-over.
    revoking: HashSet<String>,
    /// Held shards whose tasks ran to their end here without the shard
    /// ending (read up to the present, with `stop_at: latest`).
    done: HashSet<String>,
    /// Numbers this process's lease table transactions.
    writes: u64,
}

impl Keeper {
    fn start(
        config: Arc<KinesisSourceConfig>,
        stream: StreamId,
        changes: mpsc::Sender<Result<TaskChange>>,
        control: mpsc::UnboundedSender<Control>,
        known: Arc<Mutex<Vec<u32>>>,
    ) -> Self {
        let failover_time = config.leases.as_ref().expect("checked").failover_time;
        Keeper {
            book: LeaseBook::new(new_member(), failover_time),
            config,
            stream,
            failover_time,
            changes,
            control,
            known,
            listed: HashMap::new(),
            next_listing: Instant::now(),
            running: HashSet::new(),
            revoking: HashSet::new(),
            done: HashSet::new(),
            writes: 0,
        }
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let leases = self.config.leases.clone().expect("checked");
        let aws = leases
            .aws
            .clone()
            .unwrap_or_else(|| self.config.aws.clone());
        let table = LeaseTable::new(
            aws.dynamodb_client().await,
            leases.table.clone().expect("named when built"),
        );
        let kinesis = self.config.aws.kinesis_client().await;
        if let Err(error) = table.ensure().await {
            let _ = self.changes.send(Err(error)).await;
            return;
        }
        tracing::info!(
            table = %table.name,
            member = %self.book.member,
            stream = %self.stream,
            "sharing the stream's shards as tasks through the lease table"
        );
        let mut heartbeat = tokio::time::interval(self.failover_time / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                message = control.recv() => match message {
                    Some(Control::Finished(task, positions)) => {
                        self.finished(&table, &kinesis, task, &positions).await
                    }
                    Some(Control::Suspended(shard)) => self.hand_over(&table, shard).await,
                    Some(Control::Leave(done)) => {
                        self.release_all(&table).await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = heartbeat.tick() => match self.round(&table, &kinesis).await {
                    // New rows: take them at once, not a heartbeat later.
                    Ok(true) => {
                        heartbeat.reset_immediately();
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(error) => Err(error),
                },
            };
            match result {
                Ok(()) => {}
                Err(error) if !error.is_retryable() => {
                    let _ = self.changes.send(Err(error)).await;
                    return;
                }
                // Heartbeats missed for `failover_time` lose the leases,
                // and the next scan stops their tasks.
                Err(error) => {
                    tracing::warn!(%error, "could not reach the lease table; trying again");
                }
            }
        }
    }

    async fn tell(&self, change: TaskChange) {
        let _ = self.changes.send(Ok(change)).await;
    }

    /// Lists the shards when it is time: every task there is, and where
    /// new leases start.
    async fn list(&mut self, kinesis: &Client) -> Result<()> {
        let listed = match list_shards(kinesis, &self.stream).await {
            Ok(listed) => listed,
            // Once the shards are known, a failed listing only delays
            // finding new ones.
            Err(error) if !self.listed.is_empty() => {
                tracing::warn!(%error, "could not list the stream's shards; listing again later");
                return Ok(());
            }
            // Before any is known, the stream may not exist: a failure
            // ends the run.
            Err(Error::Connector {
                connector, source, ..
            }) => {
                return Err(Error::Connector {
                    connector,
                    retryable: false,
                    source,
                });
            }
            Err(error) => return Err(error),
        };
        for shard in &listed {
            task_of(&shard.id)?;
        }
        let first = self.listed.is_empty();
        self.listed = listed.into_iter().map(|s| (s.id.clone(), s)).collect();
        self.next_listing = Instant::now() + self.config.shard_discovery_interval;
        if first {
            tracing::info!(stream = %self.stream, shards = self.listed.len(), "listed the stream's shards");
        }
        Ok(())
    }

    /// One heartbeat: reads the table, adds rows for new shards, stops the
    /// tasks whose leases were taken away, renews the others, takes free
    /// and expired leases, asks for one when the load is uneven, and
    /// suspends the tasks another process asked for. Returns whether it
    /// added rows.
    async fn round(&mut self, table: &LeaseTable, kinesis: &Client) -> Result<bool> {
        if Instant::now() >= self.next_listing {
            self.list(kinesis).await?;
        }
        let rows = table.scan().await?;
        let mut known: Vec<u32> = self
            .listed
            .keys()
            .chain(rows.iter().map(|row| &row.shard))
            .filter_map(|shard| task_of(shard).ok())
            .collect();
        known.sort_unstable();
        known.dedup();
        *self.known.lock().expect("not poisoned") = known;

        let owners: HashMap<&str, Option<&str>> = rows
            .iter()
            .map(|row| (row.shard.as_str(), row.owner.as_deref()))
            .collect();
        let lost: Vec<String> = self
            .book
            .held
            .keys()
            .filter(|shard| {
                owners.get(shard.as_str()).copied().flatten() != Some(&self.book.member)
            })
            .cloned()
            .collect();
        for shard in lost {
            self.lose(shard).await;
        }

        let shards: Vec<(String, Vec<String>, String)> = self
            .listed
            .values()
            .map(|shard| (shard.id.clone(), shard.parents.clone(), self.initial(shard)))
            .collect();
        let listed = &self.listed;
        // A parent no longer listed has aged out: nothing is left in it.
        let plan = self.book.plan(
            rows,
            &shards,
            |parent| !listed.contains_key(parent),
            Instant::now(),
        );
        let mut created = false;
        for (shard, parents, start) in &plan.create {
            match table.create_lease(shard, parents, start).await {
                Ok(()) => created = true,
                Err(WriteError::Conflict) => {}
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
        let renewals: Vec<(String, u64)> = self
            .book
            .held
            .iter()
            .map(|(shard, lease)| (shard.clone(), lease.counter))
            .collect();
        for (shard, counter) in renewals {
            match table.renew(&shard, &self.book.member, counter).await {
                Ok(()) => {
                    if let Some(lease) = self.book.held.get_mut(&shard) {
                        lease.counter = counter + 1;
                    }
                }
                Err(WriteError::Conflict) => self.lose(shard).await,
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
        for lease in plan.take {
            match table.take(&lease, &self.book.member).await {
                Ok(()) => {
                    tracing::info!(
                        shard = %lease.shard,
                        previous_owner = lease.owner.as_deref().unwrap_or("none"),
                        "lease taken"
                    );
                    self.book.took(lease);
                }
                Err(WriteError::Conflict) => {}
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
        if let Some(lease) = plan.ask {
            match table.ask_for(&lease, &self.book.member).await {
                Ok(()) => tracing::info!(
                    shard = %lease.shard,
                    owner = lease.owner.as_deref().unwrap_or("none"),
                    "asked for a lease"
                ),
                Err(WriteError::Conflict) => {}
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
        self.start_new().await;
        self.suspend_asked_for().await?;
        Ok(created)
    }

    /// Where a new lease's shard starts, for the record (each task works
    /// out its own start): at its beginning if its parents are listed,
    /// else where `start_from` says.
    fn initial(&self, shard: &Shard) -> String {
        let has_parent = shard.parents.iter().any(|p| self.listed.contains_key(p));
        match &self.config.start_from {
            _ if has_parent => "TRIM_HORIZON",
            StartFrom::TrimHorizon => "TRIM_HORIZON",
            StartFrom::Latest => "LATEST",
            StartFrom::AtTimestamp(_) => "AT_TIMESTAMP",
        }
        .to_string()
    }

    /// Tells the runtime to run the tasks of leases taken or received.
    async fn start_new(&mut self) {
        let mut starting: Vec<String> = self
            .book
            .held
            .keys()
            .filter(|shard| !self.running.contains(*shard) && !self.done.contains(*shard))
            .cloned()
            .collect();
        if starting.is_empty() {
            return;
        }
        starting.sort();
        let tasks: Vec<u32> = starting.iter().filter_map(|s| task_of(s).ok()).collect();
        tracing::info!(tasks = ?tasks, stream = %self.stream, "tasks assigned");
        self.running.extend(starting);
        self.tell(TaskChange::Assigned(tasks)).await;
    }

    /// Suspends the tasks of leases another process asked for; each is
    /// handed over once its task has stopped at a checkpoint.
    async fn suspend_asked_for(&mut self) -> Result<()> {
        let asked: Vec<String> = self
            .book
            .handing_over
            .keys()
            .filter(|shard| !self.revoking.contains(*shard))
            .cloned()
            .collect();
        for shard in asked {
            self.revoking.insert(shard.clone());
            let task = task_of(&shard)?;
            tracing::info!(task, %shard, "task asked for by another process; stopping it at a checkpoint");
            let (done, wait) = std::sync::mpsc::channel();
            self.tell(TaskChange::Revoked {
                tasks: vec![task],
                done,
            })
            .await;
            let control = self.control.clone();
            tokio::task::spawn_blocking(move || {
                let _ = wait.recv();
                let _ = control.send(Control::Suspended(shard));
            });
        }
        Ok(())
    }

    /// Hands a lease over to the process that asked for it, its task
    /// suspended.
    async fn hand_over(&mut self, table: &LeaseTable, shard: String) -> Result<()> {
        self.revoking.remove(&shard);
        self.running.remove(&shard);
        self.done.remove(&shard);
        let (Some(lease), Some(to)) = (
            self.book.held.get(&shard),
            self.book.handing_over.get(&shard),
        ) else {
            return Ok(());
        };
        let writes = [LeaseWrite::HandOver {
            shard: shard.clone(),
            checkpoint: lease.checkpoint.clone(),
            to: to.clone(),
        }];
        self.writes += 1;
        match table.record(&self.book.member, self.writes, &writes).await {
            Ok(()) => self.book.recorded(&writes, &HashSet::new()),
            // Taken meanwhile: its task has stopped already.
            Err(WriteError::Conflict) => {
                self.book.held.remove(&shard);
                self.book.handing_over.remove(&shard);
            }
            // Asked for again at the next heartbeat.
            Err(WriteError::Failed(error)) => {
                self.book.handing_over.remove(&shard);
                return Err(error);
            }
        }
        Ok(())
    }

    /// A lease taken away without a hand-over: its task stops at once.
    async fn lose(&mut self, shard: String) {
        self.book.held.remove(&shard);
        self.book.handing_over.remove(&shard);
        self.done.remove(&shard);
        if self.running.remove(&shard)
            && let Ok(task) = task_of(&shard)
        {
            tracing::warn!(task, %shard, "lease taken by another process, as this one did not renew it in time: stopping its task");
            self.tell(TaskChange::Lost(vec![task])).await;
        }
    }

    /// A task ran to its end. If its source read the shard to its end, the
    /// lease records it and is released for good, so that the shard's
    /// children can be taken; else (read up to the present) it is kept,
    /// for the task not to run again here.
    async fn finished(
        &mut self,
        table: &LeaseTable,
        kinesis: &Client,
        task: u32,
        positions: &[serde_json::Value],
    ) -> Result<()> {
        let shard = shard_of(task);
        self.running.remove(&shard);
        let ended = positions.iter().any(|position| {
            serde_json::from_value::<Position>(position.clone())
                .is_ok_and(|p| p.finished.contains(&shard))
        });
        if !ended || !self.book.held.contains_key(&shard) {
            self.done.insert(shard);
            return Ok(());
        }
        let writes = [LeaseWrite::Finished {
            shard: shard.clone(),
        }];
        self.writes += 1;
        match table.record(&self.book.member, self.writes, &writes).await {
            Ok(()) => {
                tracing::info!(task, %shard, "shard read to its end: its children can be read");
                self.book.recorded(&writes, &HashSet::new());
                // Its children are listed now: take them without waiting.
                self.list(kinesis).await
            }
            // Taken meanwhile; its next owner's task finds it finished.
            Err(WriteError::Conflict) => {
                self.book.held.remove(&shard);
                Ok(())
            }
            Err(WriteError::Failed(error)) => {
                self.done.insert(shard);
                Err(error)
            }
        }
    }

    /// Releases every lease held, for the other processes to take at once
    /// (their tasks are suspended).
    async fn release_all(&mut self, table: &LeaseTable) {
        for shard in self.book.held.keys() {
            match table.release(shard, &self.book.member).await {
                Ok(()) | Err(WriteError::Conflict) => {}
                Err(WriteError::Failed(error)) => {
                    tracing::warn!(%shard, %error, "could not release the lease; it expires after `failover_time`");
                }
            }
        }
        if !self.book.held.is_empty() {
            tracing::info!(leases = self.book.held.len(), "leases released: leaving");
        }
        self.book.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_its_shards_number() {
        assert_eq!(task_of("shardId-000000000007").unwrap(), 7);
        assert_eq!(shard_of(7), "shardId-000000000007");
        assert_eq!(task_of(&shard_of(123_456)).unwrap(), 123_456);
        let error = task_of("shard-7").unwrap_err().to_string();
        assert!(error.contains("is not named `shardId-<number>`"), "{error}");
    }
}
