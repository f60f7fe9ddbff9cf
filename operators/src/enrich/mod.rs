//! Asynchronous enrichment: each row gets columns from an HTTP service's
//! answer to a call made for it, as Flink's async I/O does.
//!
//! Calls run concurrently, up to `concurrency` at once, and across
//! batches: a batch's calls start when it arrives, and it goes out once
//! they are all answered, in the input's order or (with `ordered: false`)
//! as soon as it is done. Up to `max_in_flight` rows wait for answers;
//! beyond that the input waits. A checkpoint barrier waits for every call
//! in flight and lets the rows out ahead of it, so that a checkpoint
//! never holds a call half made: a restore makes the calls of the rows
//! after it again.
//!
//! Answers can be cached (identical requests within a TTL, up to a number
//! of entries). Failed calls are retried with backoff behind a circuit
//! breaker, as the HTTP sink does; a row whose call fails for good (a 4xx
//! answer, an answer that is not JSON, or every attempt failed) goes to
//! the dead letters with the reason.

mod calls;
mod config;
mod operator;

pub use self::config::{CacheConfig, ColumnSpec, EnrichConfig, Method, NotFound};
pub use self::operator::Enrich;
