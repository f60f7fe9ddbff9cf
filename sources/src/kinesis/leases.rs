//! Leases in DynamoDB: several processes share a stream's shards, as the
//! Kinesis Client Library's workers do, and hand them over at checkpoints.
//!
//! The table has one row per shard, in KCL's shape: `leaseKey` (the shard
//! id), `leaseOwner`, `leaseCounter` (which the owner increments as a
//! heartbeat), `checkpoint` (a sequence number, `SHARD_END`, or where an
//! unread shard starts), `checkpointSubSequenceNumber`, `parentShardIds`
//! and `ownerSwitchesSinceCheckpoint`. Flumen adds a few of its own:
//! `flumenMember` and `flumenCheckpoint` (which process recorded the
//! checkpoint, at which of its checkpoints), `flumenReleased` (per process
//! that gave the lease up or had it taken, the checkpoint it stopped at),
//! `flumenCaughtUp` (read up to the present, for `stop_at: latest`) and
//! `transferTo` (a process that asked for the lease).
//!
//! Every write is conditional, so two processes never both believe they
//! hold a lease:
//! - a heartbeat increments the counter if the owner and counter are
//!   still the ones this process wrote;
//! - a lease is taken if its counter and checkpoint are still the ones
//!   seen: free, or expired because its counter has not moved for
//!   `failover_time` (as this process's clock measures it: no two clocks
//!   are compared);
//! - a checkpoint is recorded if this process still owns the lease.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use flumen_clients::aws::dynamodb::ensure_table;
use flumen_clients::aws::{ErrorClass, classify, describe, jittered};
use flumen_core::prelude::*;

/// The checkpoint of a shard read to its end.
pub(crate) const SHARD_END: &str = "SHARD_END";

/// Most writes DynamoDB takes in one transaction.
const TRANSACTION_LIMIT: usize = 100;

/// One row of the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) shard: String,
    pub(crate) owner: Option<String>,
    pub(crate) counter: u64,
    pub(crate) checkpoint: String,
    pub(crate) parents: Vec<String>,
    /// The process that recorded `checkpoint`, and at which of its
    /// checkpoints.
    pub(crate) recorded_by: Option<(String, u64)>,
    /// Per process that held the lease before: the checkpoint at which
    /// it gave the lease up or had it taken.
    pub(crate) released: HashMap<String, String>,
    pub(crate) transfer_to: Option<String>,
    pub(crate) caught_up: bool,
}

impl Lease {
    pub(crate) fn is_finished(&self) -> bool {
        self.checkpoint == SHARD_END
    }

    /// The sequence number of the last record recorded, unless the shard
    /// is unread or finished.
    pub(crate) fn sequence(&self) -> Option<&str> {
        is_sequence(&self.checkpoint).then_some(self.checkpoint.as_str())
    }

    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
        let text = |key: &str| item.get(key).and_then(|v| v.as_s().ok()).cloned();
        let number = |key: &str| {
            item.get(key)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let recorded_by = match (text("flumenMember"), number("flumenCheckpoint")) {
            (Some(member), Some(checkpoint)) => Some((member, checkpoint)),
            _ => None,
        };
        Some(Lease {
            shard: text("leaseKey")?,
            owner: text("leaseOwner"),
            counter: number("leaseCounter").unwrap_or(0),
            checkpoint: text("checkpoint").unwrap_or_else(|| "TRIM_HORIZON".into()),
            parents: item
                .get("parentShardIds")
                .and_then(|v| v.as_ss().ok())
                .cloned()
                .unwrap_or_default(),
            recorded_by,
            released: item
                .get("flumenReleased")
                .and_then(|v| v.as_m().ok())
                .map(|released| {
                    released
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_s().ok()?.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            transfer_to: text("transferTo"),
            caught_up: item
                .get("flumenCaughtUp")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
        })
    }
}

/// Whether a checkpoint is a sequence number rather than `SHARD_END` or
/// a starting point (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`).
fn is_sequence(checkpoint: &str) -> bool {
    !checkpoint.is_empty() && checkpoint.bytes().all(|b| b.is_ascii_digit())
}

/// Orders two sequence numbers of a shard (decimal, up to 128 bits).
pub(crate) fn sequence_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A checkpoint to record in a lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseWrite {
    /// Read up to `sequence` (and, if `caught_up`, up to the present).
    Progress {
        shard: String,
        sequence: String,
        caught_up: bool,
    },
    /// Read to its end: the lease is released for good.
    Finished { shard: String },
    /// Given to `to`, which asked for it, at `checkpoint` (its last
    /// recorded position when this process read nothing more of it).
    HandOver {
        shard: String,
        checkpoint: String,
        to: String,
    },
}

impl LeaseWrite {
    pub(crate) fn shard(&self) -> &str {
        match self {
            LeaseWrite::Progress { shard, .. }
            | LeaseWrite::Finished { shard }
            | LeaseWrite::HandOver { shard, .. } => shard,
        }
    }
}

/// A conditional write that found the row changed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The condition failed: the lease is not (or no longer) this
    /// process's, or someone moved first.
    Conflict,
    Failed(Error),
}

/// The lease table of one stream.
#[derive(Debug, Clone)]
pub(crate) struct LeaseTable {
    client: Client,
    pub(crate) name: String,
}

impl LeaseTable {
    pub(crate) fn new(client: Client, name: impl Into<String>) -> Self {
        LeaseTable {
            client,
            name: name.into(),
        }
    }

    fn failed(&self, doing: &str, text: String) -> Error {
        Error::connector(
            "kinesis",
            true,
            format!("{doing} in lease table `{}`: {text}", self.name),
        )
    }

    /// Creates the table (on-demand billing) unless it exists, and waits
    /// until it can be used.
    pub(crate) async fn ensure(&self) -> Result<()> {
        match ensure_table(&self.client, &self.name, "leaseKey").await {
            Ok(true) => {
                tracing::info!(table = %self.name, "created the lease table");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(text) => Err(self.failed("preparing the table", text)),
        }
    }

    /// Every row, read consistently.
    pub(crate) async fn scan(&self) -> Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.failed("reading the leases", describe(&e)))?;
            leases.extend(output.items().iter().filter_map(Lease::from_item));
            start = output.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(leases);
            }
        }
    }

    /// Adds the row of a shard unless it has one.
    pub(crate) async fn create_lease(
        &self,
        shard: &str,
        parents: &[String],
        checkpoint: &str,
    ) -> std::result::Result<(), WriteError> {
        let mut item = HashMap::from([
            ("leaseKey".to_string(), s(shard)),
            ("leaseCounter".to_string(), n(0)),
            ("checkpoint".to_string(), s(checkpoint)),
            ("checkpointSubSequenceNumber".to_string(), n(0)),
            ("ownerSwitchesSinceCheckpoint".to_string(), n(0)),
            (
                "flumenReleased".to_string(),
                AttributeValue::M(HashMap::new()),
            ),
        ]);
        if !parents.is_empty() {
            item.insert(
                "parentShardIds".to_string(),
                AttributeValue::Ss(parents.to_vec()),
            );
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
            .await;
        self.conditional(result, "adding a lease")
    }

    /// Increments the counter of a lease `member` holds at `counter`.
    pub(crate) async fn renew(
        &self,
        shard: &str,
        member: &str,
        counter: u64,
    ) -> std::result::Result<(), WriteError> {
        let result = self
            .update(shard)
            .update_expression("SET leaseCounter = leaseCounter + :one")
            .condition_expression("leaseOwner = :me AND leaseCounter = :counter")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":me", s(member))
            .expression_attribute_values(":counter", n(counter))
            .send()
            .await;
        self.conditional(result, "renewing a lease")
    }

    /// Takes `lease` for `member`, if it is still as seen.
    pub(crate) async fn take(
        &self,
        lease: &Lease,
        member: &str,
    ) -> std::result::Result<(), WriteError> {
        let take = "SET leaseOwner = :me, leaseCounter = leaseCounter + :one, \
                    ownerSwitchesSinceCheckpoint = ownerSwitchesSinceCheckpoint + :one";
        let update = self
            .update(&lease.shard)
            .expression_attribute_values(":me", s(member))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":checkpoint", s(&lease.checkpoint));
        let update = match &lease.owner {
            None => update
                .update_expression(format!("{take} REMOVE transferTo"))
                .condition_expression(
                    "attribute_not_exists(leaseOwner) AND checkpoint = :checkpoint",
                ),
            // The expired owner's reading ends at the checkpoint.
            Some(previous) => update
                .update_expression(format!(
                    "{take}, flumenReleased.#previous = :checkpoint REMOVE transferTo"
                ))
                .expression_attribute_names("#previous", previous)
                .condition_expression("leaseCounter = :counter AND checkpoint = :checkpoint")
                .expression_attribute_values(":counter", n(lease.counter)),
        };
        self.conditional(update.send().await, "taking a lease")
    }

    /// Gives up a lease `member` holds, for any process to take at once.
    pub(crate) async fn release(
        &self,
        shard: &str,
        member: &str,
    ) -> std::result::Result<(), WriteError> {
        let result = self
            .update(shard)
            .update_expression("REMOVE leaseOwner, transferTo")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(member))
            .send()
            .await;
        self.conditional(result, "releasing a lease")
    }

    /// Asks `lease`'s owner to hand it to `member` at its next checkpoint.
    pub(crate) async fn ask_for(
        &self,
        lease: &Lease,
        member: &str,
    ) -> std::result::Result<(), WriteError> {
        let owner = lease.owner.as_deref().unwrap_or_default();
        let result = self
            .update(&lease.shard)
            .update_expression("SET transferTo = :me")
            .condition_expression("leaseOwner = :owner AND attribute_not_exists(transferTo)")
            .expression_attribute_values(":me", s(member))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        self.conditional(result, "asking for a lease")
    }

    /// Records checkpoint `checkpoint` of `member` in the leases it holds,
    /// all or none (in transactions of up to 100 rows). A conflict means
    /// that a lease is no longer `member`'s.
    pub(crate) async fn record(
        &self,
        member: &str,
        checkpoint: u64,
        writes: &[LeaseWrite],
    ) -> std::result::Result<(), WriteError> {
        for (chunk_index, chunk) in writes.chunks(TRANSACTION_LIMIT).enumerate() {
            let items = chunk
                .iter()
                .map(|write| self.checkpoint_update(member, checkpoint, write))
                .collect::<Result<Vec<_>>>()
                .map_err(WriteError::Failed)?;
            // The same token makes a retried transaction a no-op, should
            // an earlier attempt have succeeded unseen.
            let token = idempotency_token(&self.name, member, checkpoint, chunk_index);
            let mut attempt = 0;
            loop {
                let result = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items.clone()))
                    .client_request_token(&token)
                    .send()
                    .await;
                let error = match result {
                    Ok(_) => break,
                    Err(error) => error,
                };
                if is_condition_failure(&error) {
                    return Err(WriteError::Conflict);
                }
                match classify(&error) {
                    ErrorClass::Throttled(_) | ErrorClass::Transient(_) if attempt < 8 => {
                        attempt += 1;
                        tokio::time::sleep(jittered(attempt, Duration::from_millis(100))).await;
                    }
                    _ => {
                        return Err(WriteError::Failed(
                            self.failed("recording a checkpoint", describe(&error)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn checkpoint_update(
        &self,
        member: &str,
        checkpoint: u64,
        write: &LeaseWrite,
    ) -> Result<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.name)
            .key("leaseKey", s(write.shard()))
            .expression_attribute_values(":me", s(member))
            .expression_attribute_values(":id", n(checkpoint))
            .expression_attribute_values(":zero", n(0));
        let update = match write {
            LeaseWrite::HandOver { .. } => update.expression_attribute_names("#me", member),
            _ => update,
        };
        let recorded = "checkpointSubSequenceNumber = :zero, flumenMember = :me, \
                        flumenCheckpoint = :id";
        let update = match write {
            LeaseWrite::Progress {
                sequence,
                caught_up,
                ..
            } => update
                .update_expression(format!(
                    "SET checkpoint = :sequence, {recorded}, \
                     ownerSwitchesSinceCheckpoint = :zero, flumenCaughtUp = :caught_up"
                ))
                .condition_expression("leaseOwner = :me")
                .expression_attribute_values(":sequence", s(sequence))
                .expression_attribute_values(":caught_up", AttributeValue::Bool(*caught_up)),
            LeaseWrite::Finished { .. } => update
                .update_expression(format!(
                    "SET checkpoint = :end, {recorded}, ownerSwitchesSinceCheckpoint = :zero \
                     REMOVE leaseOwner, transferTo"
                ))
                .condition_expression("leaseOwner = :me")
                .expression_attribute_values(":end", s(SHARD_END)),
            LeaseWrite::HandOver { checkpoint, to, .. } => update
                .update_expression(format!(
                    "SET checkpoint = :checkpoint, {recorded}, leaseOwner = :to, \
                     leaseCounter = leaseCounter + :one, flumenReleased.#me = :checkpoint, \
                     ownerSwitchesSinceCheckpoint = :one REMOVE transferTo"
                ))
                .condition_expression("leaseOwner = :me AND transferTo = :to")
                .expression_attribute_values(":checkpoint", s(checkpoint))
                .expression_attribute_values(":to", s(to))
                .expression_attribute_values(":one", n(1)),
        };
        let update = update.build().map_err(|e| Error::internal(e.to_string()))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn update(
        &self,
        shard: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.name)
            .key("leaseKey", s(shard))
    }

    fn conditional<T, E>(
        &self,
        result: std::result::Result<T, SdkError<E, HttpResponse>>,
        doing: &str,
    ) -> std::result::Result<(), WriteError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match result {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("ConditionalCheckFailedException") => {
                Err(WriteError::Conflict)
            }
            Err(error) => Err(WriteError::Failed(self.failed(doing, describe(&error)))),
        }
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_string())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// Whether a transaction was cancelled because a condition failed.
fn is_condition_failure<R>(
    error: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .iter()
            .any(|reason| reason.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// A client request token (at most 36 characters) naming one transaction.
fn idempotency_token(table: &str, member: &str, checkpoint: u64, chunk: usize) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(format!("{table}\n{member}\n{checkpoint}\n{chunk}"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What this process knows and holds of the lease table: the state behind
/// the decisions of [`LeaseBook::plan`], kept between scans.
#[derive(Debug)]
pub(crate) struct LeaseBook {
    /// Who this process is in the table (kept across restarts in the
    /// checkpoints).
    pub(crate) member: String,
    failover_time: Duration,
    /// The leases held: shard → the row as this process last wrote it.
    pub(crate) held: HashMap<String, Lease>,
    /// Per shard: the owner and counter last seen, and since when.
    seen: HashMap<String, (Option<String>, u64, Instant)>,
    /// Held leases another process asked for: shard → who. The shard is
    /// no longer read, and is handed over at the next checkpoint.
    pub(crate) handing_over: HashMap<String, String>,
    /// Leases handed over whose shard an instance still records.
    pub(crate) handed_over: HashSet<String>,
    /// Per held shard, what was last recorded in its row.
    recorded: HashMap<String, (String, bool)>,
    /// Shards some process read up to the present (`stop_at: latest`).
    pub(crate) caught_up: HashSet<String>,
    /// Why the leases can no longer be trusted: the run fails.
    pub(crate) failure: Option<String>,
}

/// What to do after a scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Shards without a row: (shard, parents, starting checkpoint).
    pub(crate) create: Vec<(String, Vec<String>, String)>,
    /// Free or expired leases to take.
    pub(crate) take: Vec<Lease>,
    /// A lease to ask its owner for, to even out the load.
    pub(crate) ask: Option<Lease>,
    /// Shards whose rows say they were read to their end.
    pub(crate) finished: Vec<String>,
}

impl LeaseBook {
    pub(crate) fn new(member: String, failover_time: Duration) -> Self {
        LeaseBook {
            member,
            failover_time,
            held: HashMap::new(),
            seen: HashMap::new(),
            handing_over: HashMap::new(),
            handed_over: HashSet::new(),
            recorded: HashMap::new(),
            caught_up: HashSet::new(),
            failure: None,
        }
    }

    /// Takes in a fresh scan and decides what to do about it. `shards`
    /// are the stream's unfinished shards with their parents and where
    /// each would start. A shard is ready to read once every parent its
    /// row names is finished: its row says `SHARD_END`, or it has no row
    /// and `read_locally(parent)` (this process finished it, or it has
    /// aged out of the stream).
    pub(crate) fn plan(
        &mut self,
        rows: Vec<Lease>,
        shards: &[(String, Vec<String>, String)],
        read_locally: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Plan {
        let mut plan = Plan::default();
        let finished: HashSet<String> = rows
            .iter()
            .filter(|l| l.is_finished())
            .map(|l| l.shard.clone())
            .collect();
        plan.finished = finished.iter().cloned().collect();
        plan.finished.sort();
        let known: HashSet<&str> = rows.iter().map(|l| l.shard.as_str()).collect();
        let ready = |lease: &Lease| {
            lease.parents.iter().all(|parent| {
                finished.contains(parent)
                    || (!known.contains(parent.as_str()) && read_locally(parent))
            })
        };
        plan.create = shards
            .iter()
            .filter(|(shard, _, _)| !known.contains(shard.as_str()))
            .cloned()
            .collect();
        let mut expired = Vec::new();
        // Unfinished leases per live owner (this process included).
        let mut load: HashMap<String, Vec<Lease>> = HashMap::new();
        load.entry(self.member.clone()).or_default();
        for row in &rows {
            let key = (row.owner.clone(), row.counter);
            let since = match self.seen.get(&row.shard) {
                Some((owner, counter, since)) if (owner, *counter) == (&key.0, key.1) => *since,
                _ => now,
            };
            self.seen.insert(row.shard.clone(), (key.0, key.1, since));
            if row.caught_up {
                self.caught_up.insert(row.shard.clone());
            }
            if row.is_finished() {
                continue;
            }
            match &row.owner {
                Some(owner) if *owner == self.member => {
                    if !self.held.contains_key(&row.shard) {
                        // Handed over by its owner, or held by this
                        // member before a restart.
                        tracing::info!(
                            shard = %row.shard,
                            checkpoint = %row.checkpoint,
                            recorded_by = row.recorded_by.as_ref().map_or("nobody", |(by, _)| by.as_str()),
                            "lease received"
                        );
                        self.held.insert(row.shard.clone(), row.clone());
                    }
                    if let Some(to) = &row.transfer_to {
                        self.handing_over.insert(row.shard.clone(), to.clone());
                    }
                    load.entry(owner.clone()).or_default().push(row.clone());
                }
                Some(owner) if now.duration_since(since) < self.failover_time => {
                    load.entry(owner.clone()).or_default().push(row.clone());
                }
                _ => {
                    if ready(row) {
                        expired.push(row.clone());
                    }
                }
            }
        }
        for (shard, lease) in &self.held {
            let owner = rows
                .iter()
                .find(|l| l.shard == *shard)
                .and_then(|l| l.owner.clone());
            if owner.as_deref() != Some(self.member.as_str()) {
                self.failure = Some(format!(
                    "lost the lease on shard {shard} (held at counter {}) to {}: another \
                     process took it, as this one did not renew it in time",
                    lease.counter,
                    owner.as_deref().unwrap_or("nobody"),
                ));
            }
        }
        let active = rows.iter().filter(|l| !l.is_finished()).count();
        let workers = load.len();
        let target = active.div_ceil(workers);
        let mine = self.held.len();
        if !expired.is_empty() {
            expired.sort_by(|a, b| a.shard.cmp(&b.shard));
            plan.take = expired
                .into_iter()
                .take(target.saturating_sub(mine).max(1))
                .collect();
        } else if mine < target
            && !rows
                .iter()
                .any(|l| !l.is_finished() && l.transfer_to.as_deref() == Some(&self.member))
        {
            // Even out one lease at a time (none is asked for already),
            // from the most loaded owner, and never a lease with nothing
            // left to read.
            let busiest = load
                .iter()
                .filter(|(owner, _)| **owner != self.member)
                .max_by_key(|(owner, leases)| (leases.len(), std::cmp::Reverse(*owner)));
            if let Some((_, leases)) = busiest
                && leases.len() > target
            {
                plan.ask = leases
                    .iter()
                    .filter(|l| l.transfer_to.is_none() && !l.caught_up)
                    .filter(|l| ready(l))
                    .min_by(|a, b| a.shard.cmp(&b.shard))
                    .cloned();
            }
        }
        plan
    }

    /// Notes a lease taken, with the row as it now stands.
    pub(crate) fn took(&mut self, mut lease: Lease) {
        lease.owner = Some(self.member.clone());
        lease.counter += 1;
        lease.transfer_to = None;
        self.held.insert(lease.shard.clone(), lease);
    }

    /// The writes that record a checkpoint: progress on held shards
    /// (`positions`, skipping what the rows already say), the end of
    /// `finished` ones, and the hand-over of those asked for: once the
    /// instance that read them has stopped before this checkpoint's
    /// barrier (`released`), or at once if none of this process's
    /// instances has `started` reading them.
    pub(crate) fn writes(
        &self,
        positions: &HashMap<String, String>,
        caught_up: &HashSet<String>,
        finished: &HashSet<String>,
        released: &HashSet<String>,
        started: &HashSet<String>,
    ) -> Vec<LeaseWrite> {
        let mut writes = Vec::new();
        let mut shards: Vec<&String> = self.held.keys().collect();
        shards.sort();
        for shard in shards {
            let lease = &self.held[shard];
            if finished.contains(shard) {
                writes.push(LeaseWrite::Finished {
                    shard: shard.clone(),
                });
                continue;
            }
            let sequence = positions.get(shard);
            if let Some(to) = self.handing_over.get(shard)
                && (released.contains(shard) || !started.contains(shard))
            {
                let checkpoint = sequence
                    .cloned()
                    .unwrap_or_else(|| lease.checkpoint.clone());
                writes.push(LeaseWrite::HandOver {
                    shard: shard.clone(),
                    checkpoint,
                    to: to.clone(),
                });
                continue;
            }
            if let Some(sequence) = sequence {
                let now = (sequence.clone(), caught_up.contains(shard));
                if self.recorded.get(shard) != Some(&now) {
                    writes.push(LeaseWrite::Progress {
                        shard: shard.clone(),
                        sequence: now.0,
                        caught_up: now.1,
                    });
                }
            }
        }
        writes
    }

    /// Notes `writes` recorded. Of the shards handed over, the instances
    /// that stopped reading them (`released`) are told to forget them.
    pub(crate) fn recorded(&mut self, writes: &[LeaseWrite], released: &HashSet<String>) {
        for write in writes {
            match write {
                LeaseWrite::Progress {
                    shard,
                    sequence,
                    caught_up,
                } => {
                    self.recorded
                        .insert(shard.clone(), (sequence.clone(), *caught_up));
                    if let Some(lease) = self.held.get_mut(shard) {
                        lease.checkpoint = sequence.clone();
                    }
                }
                LeaseWrite::Finished { shard } => {
                    self.held.remove(shard);
                    self.recorded.remove(shard);
                }
                LeaseWrite::HandOver { shard, to, .. } => {
                    tracing::info!(%shard, %to, "lease handed over");
                    self.held.remove(shard);
                    self.recorded.remove(shard);
                    self.handing_over.remove(shard);
                    if released.contains(shard) {
                        self.handed_over.insert(shard.clone());
                    }
                }
            }
        }
    }
}

/// Whether checkpoint `checkpoint`, in which `member` recorded `shards`
/// (shard → last sequence number) and `finished`, was recorded in the
/// lease table before the process stopped. It was if every shard's row
/// shows this checkpoint (or a later one, or the same position) recorded
/// by `member`, or shows that `member` gave the lease up (or had it
/// taken) at or after the recorded position: whoever read the shard next
/// started there.
pub(crate) fn recorded_in(
    rows: &[Lease],
    member: &str,
    checkpoint: u64,
    shards: &HashMap<String, String>,
    finished: &HashSet<String>,
) -> std::result::Result<(), String> {
    let rows: HashMap<&str, &Lease> = rows.iter().map(|l| (l.shard.as_str(), l)).collect();
    for shard in finished {
        if let Some(row) = rows.get(shard.as_str())
            && !row.is_finished()
        {
            return Err(format!("shard {shard} is not recorded as read to its end"));
        }
    }
    for (shard, sequence) in shards {
        let Some(row) = rows.get(shard.as_str()) else {
            return Err(format!("shard {shard} has no lease"));
        };
        let ours = match &row.recorded_by {
            Some((by, at)) if by == member => {
                *at >= checkpoint || row.checkpoint == *sequence || row.is_finished()
            }
            _ => false,
        };
        let released_after = row
            .released
            .get(member)
            .is_some_and(|at| is_sequence(at) && sequence_order(at, sequence).is_ge());
        if !(ours || released_after) {
            return Err(format!(
                "shard {shard}: the lease records {} (by {}), not this checkpoint's {sequence}",
                row.checkpoint,
                row.recorded_by
                    .as_ref()
                    .map_or("nobody".to_string(), |(by, at)| format!(
                        "{by} at checkpoint {at}"
                    )),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(String::from),
            counter,
            checkpoint: "TRIM_HORIZON".into(),
            parents: vec![],
            recorded_by: None,
            released: HashMap::new(),
            transfer_to: None,
            caught_up: false,
        }
    }

    fn always(_: &str) -> bool {
        true
    }

    #[test]
    fn free_leases_are_taken_up_to_a_fair_share() {
        let mut book = LeaseBook::new("a".into(), Duration::from_secs(10));
        let rows = vec![
            lease("s0", None, 0),
            lease("s1", None, 0),
            lease("s2", Some("b"), 4),
            lease("s3", Some("b"), 7),
        ];
        let plan = book.plan(rows, &[], always, Instant::now());
        // Two workers, four leases: two each.
        let taken: Vec<&str> = plan.take.iter().map(|l| l.shard.as_str()).collect();
        assert_eq!(taken, ["s0", "s1"]);
        assert_eq!(plan.ask, None);
    }

    #[test]
    fn a_lease_expires_when_its_counter_stands_still_for_the_failover_time() {
        let failover = Duration::from_secs(10);
        let mut book = LeaseBook::new("a".into(), failover);
        let start = Instant::now();
        let rows = || vec![lease("s0", Some("b"), 3), lease("s1", Some("c"), 5)];
        assert!(book.plan(rows(), &[], always, start).take.is_empty());
        // c's counter moves, b's does not.
        let mut later = rows();
        later[1].counter = 6;
        let plan = book.plan(later, &[], always, start + failover);
        let taken: Vec<&str> = plan.take.iter().map(|l| l.shard.as_str()).collect();
        assert_eq!(taken, ["s0"]);
    }

    #[test]
    fn an_idle_process_asks_the_busiest_for_one_lease_when_none_expired() {
        let mut book = LeaseBook::new("c".into(), Duration::from_secs(10));
        let rows = vec![
            lease("s0", Some("a"), 1),
            lease("s1", Some("a"), 1),
            lease("s2", Some("a"), 1),
            lease("s3", Some("a"), 1),
            lease("s4", Some("b"), 1),
        ];
        let plan = book.plan(rows.clone(), &[], always, Instant::now());
        assert!(plan.take.is_empty());
        assert_eq!(plan.ask.map(|l| l.shard), Some("s0".to_string()));
        // One at a time: not again until that one is handed over.
        let mut asked = rows;
        asked[0].transfer_to = Some("c".into());
        assert_eq!(book.plan(asked, &[], always, Instant::now()).ask, None);
    }

    #[test]
    fn children_wait_for_their_parents_to_be_recorded_finished() {
        let mut book = LeaseBook::new("a".into(), Duration::from_secs(10));
        let mut parent = lease("s0", Some("b"), 1);
        parent.checkpoint = SHARD_END.into();
        let mut child = lease("s1", None, 0);
        child.parents = vec!["s0".into()];
        // s9 has no row: it waits until this process has read it.
        let mut waiting = lease("s2", None, 0);
        waiting.parents = vec!["s9".into()];
        let rows = vec![parent, child, waiting];
        let plan = book.plan(rows.clone(), &[], |_| false, Instant::now());
        let taken: Vec<&str> = plan.take.iter().map(|l| l.shard.as_str()).collect();
        assert_eq!(taken, ["s1"]);
        assert_eq!(plan.finished, ["s0"]);
        let mut book = LeaseBook::new("a".into(), Duration::from_secs(10));
        let plan = book.plan(rows, &[], |p| p == "s9", Instant::now());
        let taken: Vec<&str> = plan.take.iter().map(|l| l.shard.as_str()).collect();
        assert_eq!(taken, ["s1", "s2"]);
    }

    #[test]
    fn a_checkpoint_counts_as_recorded_when_its_rows_say_so() {
        let mut row = lease("s0", Some("a"), 9);
        row.checkpoint = "120".into();
        row.recorded_by = Some(("a".into(), 7));
        let shards = HashMap::from([("s0".to_string(), "120".to_string())]);
        let none = HashSet::new();
        assert!(recorded_in(&[row.clone()], "a", 7, &shards, &none).is_ok());
        // Unchanged since an earlier checkpoint: still this position.
        assert!(recorded_in(&[row.clone()], "a", 8, &shards, &none).is_ok());
        // The row is behind: checkpoint 8 moved on and was not recorded.
        let ahead = HashMap::from([("s0".to_string(), "150".to_string())]);
        assert!(recorded_in(&[row.clone()], "a", 8, &ahead, &none).is_err());
        // Handed to b at 150, recorded by b since: what a recorded was
        // handed over.
        let mut taken = row.clone();
        taken.owner = Some("b".into());
        taken.recorded_by = Some(("b".into(), 3));
        taken.checkpoint = "400".into();
        taken.released = HashMap::from([("a".to_string(), "150".to_string())]);
        assert!(recorded_in(&[taken.clone()], "a", 8, &ahead, &none).is_ok());
        // Taken from a at an earlier position (and handed on by b past
        // 150 since): b read again what a read, so a's checkpoint is not
        // to be published.
        taken.released = HashMap::from([
            ("a".to_string(), "120".to_string()),
            ("b".to_string(), "400".to_string()),
        ]);
        assert!(recorded_in(&[taken], "a", 8, &ahead, &none).is_err());
    }

    #[test]
    fn sequence_numbers_order_as_numbers() {
        assert!(sequence_order("99", "100").is_lt());
        assert!(sequence_order("100", "100").is_eq());
        assert!(
            sequence_order(
                "49590338271490256608559692538361571095921575989136588802",
                "9"
            )
            .is_gt()
        );
    }
}
