//! What Flumen's HTTP clients share (the `http` sink, the search sink's
//! Elasticsearch client, the `enrich` transform): retries with capped
//! exponential backoff and full jitter, the server's `Retry-After`, and a
//! circuit breaker that stops calling a struggling server for a while.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first wait.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// The longest wait (a `Retry-After` longer than this is cut to it).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Attempts before giving up. Default: retry until the server takes
    /// it (in a sink), or as the component says.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: None,
        }
    }
}

impl RetryConfig {
    /// Checks the settings, named under `key`.
    pub fn check(&self, key: &str) -> flumen_core::error::Result<()> {
        if self.initial_backoff > self.max_backoff {
            return Err(flumen_core::error::Error::config(
                format!("{key}.initial_backoff"),
                format!("is longer than `{key}.max_backoff`"),
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(flumen_core::error::Error::config(
                format!("{key}.max_attempts"),
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How long to wait before attempt `attempt + 1`: the server's
    /// `Retry-After` if it gave one, else the backoff, at most
    /// `max_backoff`.
    pub fn wait(&self, attempt: u32, server_wait: Option<Duration>) -> Duration {
        server_wait
            .unwrap_or_else(|| backoff(self.initial_backoff, attempt))
            .min(self.max_backoff)
    }
}

/// When to stop sending for a while.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Failures in a row that open the circuit.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before one request tries again.
    #[serde(default = "default_open_for", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_for: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failures: default_failures(),
            open_for: default_open_for(),
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the settings, named under `key`.
    pub fn check(&self, key: &str) -> flumen_core::error::Result<()> {
        if self.failures == 0 {
            return Err(flumen_core::error::Error::config(
                format!("{key}.failures"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_failures() -> u32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(10)
}

/// A circuit breaker shared by the calls to one server: after
/// `failures` failures in a row, every call waits `open_for` before it
/// is made.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreakerConfig,
    state: Mutex<BreakerState>,
}

/// Failures in a row, and until when the circuit is open.
#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Breaker {
            config,
            state: Mutex::default(),
        }
    }

    /// Waits while the circuit is open.
    pub async fn wait_while_open(&self) {
        let until = self.state.lock().expect("breaker").open_until;
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// A call got an answer: the failures in a row start again from 0.
    pub fn succeeded(&self) {
        self.state.lock().expect("breaker").failures = 0;
    }

    /// A call to `target` failed; enough in a row open the circuit.
    pub fn failed(&self, target: &dyn std::fmt::Display) {
        let mut state = self.state.lock().expect("breaker");
        state.failures += 1;
        if state.failures >= self.config.failures {
            let open_for = self.config.open_for;
            tracing::warn!(%target, ?open_for, failures = state.failures, "circuit open");
            state.open_until = Some(Instant::now() + open_for);
            // One call tries again once it closes.
            state.failures = self.config.failures - 1;
        }
    }
}

/// Whether a status means "try again later".
pub fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The wait a `Retry-After` header asks for (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::Utc::now();
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Full jitter: a random wait up to `initial * 2^(attempt-1)`.
pub fn backoff(initial: Duration, attempt: u32) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A cheap spread of the clock's low bits: enough to keep clients from
    // retrying in step.
    let fraction = f64::from(nanos.wrapping_mul(2_654_435_761) % 1_000_000) / 1_000_000.0;
    ceiling.mul_f64(fraction.max(0.1))
}
