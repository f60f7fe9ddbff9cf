//! Where a key-value sink keeps its view: one trait, and a backend per
//! store (embedded, Redis, DynamoDB) behind it.
//!
//! A checkpoint's writes go through two steps. [`Store::stage`] keeps
//! them durably, out of readers' sight, before the checkpoint completes;
//! [`Store::apply`] makes them visible once it has. A backend whose apply
//! is atomic and remembers what it applied (the embedded store, Redis) is
//! exactly once; DynamoDB writes at stage, conditionally on versions, so a
//! replay repeats writes but never regresses a value.

use std::time::Duration;

use flumen_core::prelude::*;

use super::KvWrite;

#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Why `write` cannot be stored here (too big, say), if it cannot;
    /// its row then goes to the dead letters.
    fn refusal(&self, write: &KvWrite) -> Option<String> {
        let _ = write;
        None
    }

    /// Keeps checkpoint `checkpoint`'s writes durably. Returns what
    /// [`apply`](Self::apply) needs to find them again, which the
    /// checkpoint keeps.
    async fn stage(&self, checkpoint: u64, writes: Vec<KvWrite>) -> Result<serde_json::Value>;

    /// Applies a staged checkpoint's writes, unless they were applied
    /// already: a commit repeated after a crash changes nothing.
    async fn apply(&self, checkpoint: u64, staged: &serde_json::Value) -> Result<()>;

    /// Applies `writes` at once (a run without checkpoints).
    async fn write_now(&self, writes: Vec<KvWrite>) -> Result<()>;

    /// After a restart from checkpoint `from` (with what its stage
    /// returned), or a fresh start: applies `from`'s writes if they are
    /// not yet, and forgets anything staged after it.
    async fn recover(&self, from: Option<(u64, serde_json::Value)>) -> Result<()>;
}

/// Retries `attempt` while `transient` says its error may pass (a server
/// restarting, a connection dropped), with jittered exponential backoff,
/// for up to `patience`; then gives up with the last error.
pub(crate) async fn with_retries<T, E, F>(
    what: &str,
    patience: Duration,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> std::result::Result<T, E>
where
    F: Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if transient(&error) && started.elapsed() < patience => {
                tracing::warn!(%error, "{what} failed; retrying in {wait:?}");
                let jitter = wait.mul_f64(fastrand::f64());
                tokio::time::sleep(wait / 2 + jitter / 2).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}
