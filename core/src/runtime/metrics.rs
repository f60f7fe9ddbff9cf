//! Prometheus-style metrics of every node, through the `metrics` facade.
//! Without an installed recorder (a library user who wants none) every
//! call is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::stats::{InstanceStats, NodeStats};
use crate::component::StateSize;
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

/// Rows on a named output (`late`, a route), by `component` and `output`.
pub const SIDE_OUTPUT_EVENTS_TOTAL: &str = "flumen_component_side_output_events_total";
/// Rows, keys or groups an operator instance retains, by `component` and
/// `instance`.
pub const STATE_ROWS: &str = "flumen_operator_state_rows";
/// Approximate bytes an operator instance retains, by `component` and
/// `instance`.
pub const STATE_BYTES: &str = "flumen_operator_state_bytes";

/// Gives every metric its `# HELP` text and unit in the installed
/// recorder. Call it once, after installing one (without one it does
/// nothing).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS_TOTAL,
        Unit::Count,
        "Events (rows) a component received (direction=in) or emitted (direction=out)."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Arrow memory of the batches a component received or emitted."
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Errors a component met (a failed batch, a retried write)."
    );
    describe_counter!(
        DEAD_LETTERED_TOTAL,
        Unit::Count,
        "Records a component could not handle, sent to the dead-letter sink or dropped."
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time a component took to handle one batch."
    );
    describe_gauge!(
        QUEUED_BATCHES,
        Unit::Count,
        "Batches waiting in a component instance's input channels; at the capacity, it is the bottleneck."
    );
    describe_gauge!(
        CHANNEL_CAPACITY,
        Unit::Count,
        "Batches each input channel of a component holds before its senders wait."
    );
    describe_gauge!(
        WATERMARK_DELAY_SECONDS,
        Unit::Seconds,
        "Wall-clock time minus the component instance's event-time watermark."
    );
    describe_gauge!(
        SOURCE_LAG_EVENTS,
        Unit::Count,
        "Events a source instance knows of but has not read yet (a file's remainder, a broker's consumer lag)."
    );
    describe_counter!(
        SIDE_OUTPUT_EVENTS_TOTAL,
        Unit::Count,
        "Rows a component emitted on a named output (late rows, a route)."
    );
    describe_gauge!(
        STATE_ROWS,
        Unit::Count,
        "Rows, keys or groups an operator instance retains."
    );
    describe_gauge!(
        STATE_BYTES,
        Unit::Bytes,
        "Approximate bytes an operator instance retains."
    );
}

/// The metric handles of one node instance, and its share of the node's
/// live counters.
pub(crate) struct NodeMetrics {
    stats: Arc<NodeStats>,
    /// This instance's own counters (the console's).
    live: Arc<InstanceStats>,
    events_in: Counter,
    events_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    errors: Counter,
    batch_seconds: Histogram,
    queued: Gauge,
    watermark_delay: Gauge,
    source_lag: Gauge,
    side_outputs: Vec<Counter>,
    state_rows: Gauge,
    state_bytes: Gauge,
    /// The state size last reported (rows, bytes), so that the node's total
    /// stays a sum over its instances.
    last_state: (AtomicU64, AtomicU64),
}

/// What kind of node the metrics describe: each registers only the
/// metrics that mean something for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricsKind {
    Source,
    Operator,
    Sink,
}

/// Where a node instance sits, for its metric labels.
pub(crate) struct MetricsLabels<'a> {
    pub(crate) kind: MetricsKind,
    pub(crate) component: &'a str,
    pub(crate) instance: usize,
    /// Names of the named outputs, in port order.
    pub(crate) side_outputs: &'a [String],
}

impl NodeMetrics {
    pub(crate) fn new(
        labels: MetricsLabels<'_>,
        channel_capacity: usize,
        stats: Arc<NodeStats>,
    ) -> Self {
        let MetricsLabels {
            kind,
            component,
            instance,
            side_outputs,
        } = labels;
        let live = stats.instance(instance);
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
            live.set_capacity(channel_capacity as u64);
        }
        let operator = kind == MetricsKind::Operator;
        NodeMetrics {
            stats,
            live,
            events_in: if reads { labelled(EVENTS_TOTAL, "in") } else { Counter::noop() },
            events_out: labelled(EVENTS_TOTAL, "out"),
            bytes_in: if reads { labelled(BYTES_TOTAL, "in") } else { Counter::noop() },
            bytes_out: labelled(BYTES_TOTAL, "out"),
            errors,
            batch_seconds: histogram!(BATCH_SECONDS, "component" => component.clone()),
            queued: if reads { per_instance(QUEUED_BATCHES) } else { Gauge::noop() },
            watermark_delay: per_instance(WATERMARK_DELAY_SECONDS),
            source_lag: if reads { Gauge::noop() } else { per_instance(SOURCE_LAG_EVENTS) },
            side_outputs: side_outputs
                .iter()
                .map(|output| {
                    let counter =
                        counter!(SIDE_OUTPUT_EVENTS_TOTAL, "component" => component.clone(), "output" => output.clone());
                    counter.absolute(0);
                    counter
                })
                .collect(),
            state_rows: if operator { per_instance(STATE_ROWS) } else { Gauge::noop() },
            state_bytes: if operator { per_instance(STATE_BYTES) } else { Gauge::noop() },
            last_state: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    pub(crate) fn record_in(&self, batch: &RecordBatch) {
        let (rows, bytes) = (
            batch.num_rows() as u64,
            batch.get_array_memory_size() as u64,
        );
        self.stats.add_in(rows, bytes);
        self.live.add_in(rows);
        self.events_in.increment(rows);
        self.bytes_in.increment(bytes);
    }

    pub(crate) fn record_out(&self, batch: &RecordBatch) {
        self.record_written(batch.num_rows(), batch.get_array_memory_size());
    }

    pub(crate) fn record_written(&self, rows: usize, bytes: usize) {
        let (rows, bytes) = (rows as u64, bytes as u64);
        self.stats.add_out(rows, bytes);
        self.live.add_out(rows);
        self.events_out.increment(rows);
        self.bytes_out.increment(bytes);
    }

    /// Counts rows emitted on named output `port` (1 is the first named one).
    pub(crate) fn record_side_output(&self, port: usize, batch: &RecordBatch) {
        if let Some(counter) = self.side_outputs.get(port - 1) {
            counter.increment(batch.num_rows() as u64);
        }
    }

    pub(crate) fn record_state(&self, size: StateSize) {
        self.live.set_state(size.rows, size.bytes);
        let rows = self.last_state.0.swap(size.rows, Ordering::Relaxed);
        let bytes = self.last_state.1.swap(size.bytes, Ordering::Relaxed);
        if (rows, bytes) != (size.rows, size.bytes) {
            self.stats.add_state(
                size.rows as i64 - rows as i64,
                size.bytes as i64 - bytes as i64,
            );
            self.state_rows.set(size.rows as f64);
            self.state_bytes.set(size.bytes as f64);
        }
    }

    pub(crate) fn record_rejected(&self, records: u64) {
        self.stats.add_rejected(records);
        self.live.add_rejected(records);
    }

    pub(crate) fn record_finished(&self) {
        self.stats.add_finished();
        self.live.set_finished();
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
        self.live.set_queued(batches as u64);
    }

    /// How long the last barrier waited to be aligned on every input.
    pub(crate) fn record_alignment(&self, waited: Duration) {
        self.live.set_alignment(waited);
    }

    pub(crate) fn record_watermark(&self, watermark: Watermark) {
        let Watermark::EventTime(watermark) = watermark else {
            return;
        };
        self.live.set_watermark(watermark);
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
        self.live.set_source_lag(events);
    }
}
