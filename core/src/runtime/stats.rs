//! Live counters per node, readable while the pipeline runs (progress bars,
//! the end-of-run summary).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of one node, summed over its instances.
#[derive(Debug, Default)]
pub struct NodeStats {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    instances_finished: AtomicU64,
    rejected: AtomicU64,
    state_rows: AtomicI64,
    state_bytes: AtomicI64,
}

impl NodeStats {
    /// Rows received (operators, sinks).
    pub fn rows_in(&self) -> u64 {
        self.rows_in.load(Ordering::Relaxed)
    }

    /// Rows emitted (sources, operators).
    pub fn rows_out(&self) -> u64 {
        self.rows_out.load(Ordering::Relaxed)
    }

    /// Arrow memory of the batches received.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Arrow memory of the batches emitted.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Rows (keys, groups) the node's instances retain now.
    pub fn state_rows(&self) -> u64 {
        self.state_rows.load(Ordering::Relaxed).max(0) as u64
    }

    /// Approximate bytes the node's instances retain now.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Records the node could not handle (dead-lettered or dropped).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// How many of the node's instances have finished.
    pub fn instances_finished(&self) -> u64 {
        self.instances_finished.load(Ordering::Relaxed)
    }

    pub(crate) fn add_in(&self, rows: u64, bytes: u64) {
        self.rows_in.fetch_add(rows, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_out(&self, rows: u64, bytes: u64) {
        self.rows_out.fetch_add(rows, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_rejected(&self, records: u64) {
        self.rejected.fetch_add(records, Ordering::Relaxed);
    }

    pub(crate) fn add_state(&self, rows: i64, bytes: i64) {
        self.state_rows.fetch_add(rows, Ordering::Relaxed);
        self.state_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_finished(&self) {
        self.instances_finished.fetch_add(1, Ordering::Relaxed);
    }
}
