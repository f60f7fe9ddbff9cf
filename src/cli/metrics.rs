//! Prometheus metrics over HTTP, fed by the runtime through the `metrics`
//! facade (names in `flumen_core::runtime::metrics`).

use std::net::SocketAddr;

use flumen_core::runtime::metrics::BATCH_SECONDS;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Batch handling times, from 10 µs to 10 s.
const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Serves `/metrics` at `address` from the current tokio runtime.
pub fn install(address: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(
            Matcher::Full(BATCH_SECONDS.to_string()),
            BATCH_SECONDS_BUCKETS,
        )
        .and_then(|builder| builder.install())
        .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
    flumen_core::runtime::metrics::describe();
    Ok(())
}
