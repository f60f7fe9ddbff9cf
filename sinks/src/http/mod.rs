//! The HTTP sink: batches of rows POSTed to a service, retried with
//! backoff while it is not ready, behind a circuit breaker.

mod config;
pub(crate) mod sink;

pub use self::config::{BodyFormat, CircuitBreakerConfig, HttpSinkConfig, RetryConfig};
pub use self::sink::HttpSink;
