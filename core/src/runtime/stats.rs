//! Live counters per node and per node instance, readable while the
//! pipeline runs (progress bars, the end-of-run summary, the console).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::message::EventTime;

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
    /// Each instance's own counters, by instance index.
    instances: Mutex<Vec<Arc<InstanceStats>>>,
}

impl NodeStats {
    /// Instance `index`'s counters (made on first use).
    pub(crate) fn instance(&self, index: usize) -> Arc<InstanceStats> {
        let mut instances = self.instances.lock().expect("not poisoned");
        while instances.len() <= index {
            instances.push(Arc::default());
        }
        instances[index].clone()
    }

    /// Every instance's counters, by instance index.
    pub fn instances(&self) -> Vec<Arc<InstanceStats>> {
        self.instances.lock().expect("not poisoned").clone()
    }

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

/// Live counters of one node instance: what the console shows of it.
#[derive(Debug)]
pub struct InstanceStats {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    rejected: AtomicU64,
    queued: AtomicU64,
    capacity: AtomicU64,
    watermark: AtomicI64,
    state_rows: AtomicU64,
    state_bytes: AtomicU64,
    source_lag: AtomicI64,
    alignment_micros: AtomicU64,
    finished: AtomicBool,
}

impl Default for InstanceStats {
    fn default() -> Self {
        InstanceStats {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            watermark: AtomicI64::new(EventTime::MIN),
            state_rows: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            source_lag: AtomicI64::new(-1),
            alignment_micros: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }
}

impl InstanceStats {
    /// Rows received.
    pub fn rows_in(&self) -> u64 {
        self.rows_in.load(Ordering::Relaxed)
    }

    /// Rows emitted (a sink: rows written).
    pub fn rows_out(&self) -> u64 {
        self.rows_out.load(Ordering::Relaxed)
    }

    /// Records dead-lettered or dropped.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Batches waiting in its input channels, and how many they hold in
    /// all: at the capacity, its senders wait (backpressure).
    pub fn queued(&self) -> (u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.capacity.load(Ordering::Relaxed),
        )
    }

    /// Its event-time watermark (milliseconds), if it has had one.
    pub fn watermark(&self) -> Option<EventTime> {
        Some(self.watermark.load(Ordering::Relaxed)).filter(|w| *w != EventTime::MIN)
    }

    /// Rows (keys, groups) and approximate bytes of state it holds.
    pub fn state(&self) -> (u64, u64) {
        (
            self.state_rows.load(Ordering::Relaxed),
            self.state_bytes.load(Ordering::Relaxed),
        )
    }

    /// A source's lag: events it knows of but has not read, if it says.
    pub fn source_lag(&self) -> Option<u64> {
        u64::try_from(self.source_lag.load(Ordering::Relaxed)).ok()
    }

    /// How long its last checkpoint barrier waited for the same barrier
    /// on its other input channels (barrier alignment).
    pub fn last_alignment(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.alignment_micros.load(Ordering::Relaxed))
    }

    /// Whether it has finished.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    pub(crate) fn add_in(&self, rows: u64) {
        self.rows_in.fetch_add(rows, Ordering::Relaxed);
    }

    pub(crate) fn add_out(&self, rows: u64) {
        self.rows_out.fetch_add(rows, Ordering::Relaxed);
    }

    pub(crate) fn add_rejected(&self, records: u64) {
        self.rejected.fetch_add(records, Ordering::Relaxed);
    }

    pub(crate) fn set_capacity(&self, batches: u64) {
        self.capacity.store(batches, Ordering::Relaxed);
    }

    pub(crate) fn set_queued(&self, batches: u64) {
        self.queued.store(batches, Ordering::Relaxed);
    }

    pub(crate) fn set_watermark(&self, watermark: EventTime) {
        self.watermark.store(watermark, Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, rows: u64, bytes: u64) {
        self.state_rows.store(rows, Ordering::Relaxed);
        self.state_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_source_lag(&self, events: u64) {
        self.source_lag
            .store(events.min(i64::MAX as u64) as i64, Ordering::Relaxed);
    }

    pub(crate) fn set_alignment(&self, waited: std::time::Duration) {
        self.alignment_micros
            .store(waited.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}
