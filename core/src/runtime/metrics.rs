//! Prometheus-style metrics of every node, through the `metrics` facade.
//! Without an installed recorder (a library user who wants none) every
//! call is a no-op.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::stats::NodeStats;
use crate::message::{EventTime, Watermark};

/// Events (rows) in and out, by `component` and `direction`.
pub const EVENTS_TOTAL: &str = "flumen_component_events_total";
/// Arrow bytes in and out, by `component` and `direction`.
pub const BYTES_TOTAL: &str = "flumen_component_bytes_total";
/// Errors, by `component`.
pub const ERRORS_TOTAL: &str = "flumen_component_errors_total";
/// Records sent to the dead-letter output, by `component`.
pub const DEAD_LETTERED_TOTAL: &str = "flumen_component_dead_lettered_total";
/// Time to handle one batch, by `component`.
pub const BATCH_SECONDS: &str = "flumen_batch_processing_seconds";
/// Batches waiting in a node instance's input channels, by `component` and
/// `instance`: at the capacity, the node is the bottleneck.
pub const QUEUED_BATCHES: &str = "flumen_channel_queued_batches";
/// Batches an input channel holds, by `component`.
pub const CHANNEL_CAPACITY: &str = "flumen_channel_capacity_batches";
/// Wall-clock time minus the node's watermark, by `component` and
/// `instance`.
pub const WATERMARK_DELAY_SECONDS: &str = "flumen_watermark_delay_seconds";
/// Events a source knows of but has not read yet, by `component` and
/// `instance` (a bounded source's remainder; a broker's consumer lag).
pub const SOURCE_LAG_EVENTS: &str = "flumen_source_lag_events";

/// The metric handles of one node instance, and its share of the node's
/// live counters.
pub(crate) struct NodeMetrics {
    stats: Arc<NodeStats>,
    events_in: Counter,
    events_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    errors: Counter,
    batch_seconds: Histogram,
    queued: Gauge,
    watermark_delay: Gauge,
    source_lag: Gauge,
}

/// What kind of node the metrics describe: each registers only the
/// metrics that mean something for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricsKind {
    Source,
    Operator,
    Sink,
}

impl NodeMetrics {
    pub(crate) fn new(
        kind: MetricsKind,
        component: &str,
        instance: usize,
        channel_capacity: usize,
        stats: Arc<NodeStats>,
    ) -> Self {
        let component = component.to_string();
        let instance = instance.to_string();
        // Registered now so that they show as 0 rather than not at all.
        counter!(DEAD_LETTERED_TOTAL, "component" => component.clone()).absolute(0);
        let errors = counter!(ERRORS_TOTAL, "component" => component.clone());
        errors.absolute(0);
        let labelled = |name: &'static str, direction: &'static str| counter!(name, "component" => component.clone(), "direction" => direction);
        let per_instance = |name: &'static str| gauge!(name, "component" => component.clone(), "instance" => instance.clone());
        let reads = kind != MetricsKind::Source;
        if reads {
            gauge!(CHANNEL_CAPACITY, "component" => component.clone()).set(channel_capacity as f64);
        }
        NodeMetrics {
            stats,
            events_in: if reads {
                labelled(EVENTS_TOTAL, "in")
            } else {
                Counter::noop()
            },
            events_out: labelled(EVENTS_TOTAL, "out"),
            bytes_in: if reads {
                labelled(BYTES_TOTAL, "in")
            } else {
                Counter::noop()
            },
            bytes_out: labelled(BYTES_TOTAL, "out"),
            errors,
            batch_seconds: histogram!(BATCH_SECONDS, "component" => component.clone()),
            queued: if reads {
                per_instance(QUEUED_BATCHES)
            } else {
                Gauge::noop()
            },
            watermark_delay: per_instance(WATERMARK_DELAY_SECONDS),
            source_lag: if reads {
                Gauge::noop()
            } else {
                per_instance(SOURCE_LAG_EVENTS)
            },
        }
    }

    pub(crate) fn record_in(&self, batch: &RecordBatch) {
        let (rows, bytes) = (
            batch.num_rows() as u64,
            batch.get_array_memory_size() as u64,
        );
        self.stats.add_in(rows, bytes);
        self.events_in.increment(rows);
        self.bytes_in.increment(bytes);
    }

    pub(crate) fn record_out(&self, batch: &RecordBatch) {
        self.record_written(batch.num_rows(), batch.get_array_memory_size());
    }

    pub(crate) fn record_written(&self, rows: usize, bytes: usize) {
        let (rows, bytes) = (rows as u64, bytes as u64);
        self.stats.add_out(rows, bytes);
        self.events_out.increment(rows);
        self.bytes_out.increment(bytes);
    }

    pub(crate) fn record_finished(&self) {
        self.stats.add_finished();
    }

    /// The error counter, for the task wrapper to count failures with.
    pub(crate) fn error_counter(&self) -> Counter {
        self.errors.clone()
    }

    pub(crate) fn record_batch_time(&self, elapsed: Duration) {
        self.batch_seconds.record(elapsed.as_secs_f64());
    }

    pub(crate) fn record_queued(&self, batches: usize) {
        self.queued.set(batches as f64);
    }

    pub(crate) fn record_watermark(&self, watermark: Watermark) {
        let Watermark::EventTime(watermark) = watermark else {
            return;
        };
        if watermark == EventTime::MAX {
            self.watermark_delay.set(0.0);
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.watermark_delay
            .set(now.saturating_sub(watermark) as f64 / 1000.0);
    }

    pub(crate) fn record_source_lag(&self, events: u64) {
        self.source_lag.set(events as f64);
    }
}
