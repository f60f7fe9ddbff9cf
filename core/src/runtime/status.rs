//! What a run shows besides its nodes' counters ([`super::NodeStats`]):
//! whether it runs, since when, the checkpoint being taken, the recent
//! checkpoints and the recent dead letters. The console reads it while
//! the pipeline runs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::wall_clock_millis;

/// Checkpoints and dead letters kept for the console: the latest ones.
const RECENT: usize = 32;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Built, not yet running.
    Starting,
    /// Running (or draining what it read, once interrupted).
    Running,
    /// Every sink has finished.
    Finished,
    /// A node failed; the run stopped.
    Failed,
}

/// A checkpoint being taken.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInProgress {
    /// The checkpoint's number.
    pub id: u64,
    /// When its barriers left the sources (milliseconds since the epoch).
    pub started_at_ms: i64,
}

/// A complete checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    /// The checkpoint's number.
    pub id: u64,
    /// When its barriers left the sources (milliseconds since the epoch).
    pub started_at_ms: i64,
    /// From its barriers leaving the sources to its manifest written.
    pub duration_ms: u64,
    /// The state it holds, in bytes.
    pub state_bytes: u64,
    /// The longest any instance's barrier waited for the same barrier on
    /// its other inputs (barrier alignment), in milliseconds.
    pub alignment_ms: f64,
    /// Whether it is the run's final checkpoint.
    pub finished: bool,
}

/// A record a component rejected.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRecord {
    /// When it was rejected (milliseconds since the epoch).
    pub rejected_at_ms: i64,
    /// The component that rejected it.
    pub component: String,
    /// Why.
    pub error: String,
    /// The record as it was read, cut to a few kilobytes.
    pub record: String,
}

#[derive(Debug)]
struct Recent {
    state: RunState,
    in_progress: Option<CheckpointInProgress>,
    checkpoints: VecDeque<CheckpointRecord>,
    dead_letters: VecDeque<DeadLetterRecord>,
}

/// The status of one run of a pipeline.
#[derive(Debug)]
pub struct RunStatus {
    started_at_ms: i64,
    started: std::time::Instant,
    recent: Mutex<Recent>,
}

impl Default for RunStatus {
    fn default() -> Self {
        RunStatus {
            started_at_ms: wall_clock_millis(),
            started: std::time::Instant::now(),
            recent: Mutex::new(Recent {
                state: RunState::Starting,
                in_progress: None,
                checkpoints: VecDeque::new(),
                dead_letters: VecDeque::new(),
            }),
        }
    }
}

/// Longest record text kept for the console.
const RECORD_CHARS: usize = 4096;

impl RunStatus {
    /// When the run was built (milliseconds since the epoch).
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }

    /// How long ago that was.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where the run is.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// The checkpoint being taken, if one is.
    pub fn checkpoint_in_progress(&self) -> Option<CheckpointInProgress> {
        self.lock().in_progress.clone()
    }

    /// The latest complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointRecord> {
        self.lock().checkpoints.iter().cloned().collect()
    }

    /// The latest dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetterRecord> {
        self.lock().dead_letters.iter().cloned().collect()
    }

    pub(crate) fn set_state(&self, state: RunState) {
        let mut recent = self.lock();
        // A failure or the end is final.
        if !matches!(recent.state, RunState::Finished | RunState::Failed) {
            recent.state = state;
        }
    }

    pub(crate) fn checkpoint_started(&self, id: u64) {
        self.lock().in_progress = Some(CheckpointInProgress {
            id,
            started_at_ms: wall_clock_millis(),
        });
    }

    pub(crate) fn checkpoint_completed(
        &self,
        id: u64,
        state_bytes: u64,
        alignment: Duration,
        finished: bool,
    ) {
        let mut recent = self.lock();
        let started_at_ms = match recent.in_progress.take() {
            Some(started) if started.id == id => started.started_at_ms,
            other => {
                recent.in_progress = other;
                wall_clock_millis()
            }
        };
        push(
            &mut recent.checkpoints,
            CheckpointRecord {
                id,
                started_at_ms,
                duration_ms: (wall_clock_millis() - started_at_ms).max(0) as u64,
                state_bytes,
                alignment_ms: alignment.as_secs_f64() * 1000.0,
                finished,
            },
        );
    }

    pub(crate) fn dead_lettered(&self, component: &str, error: &str, record: &str) {
        let record = match record.char_indices().nth(RECORD_CHARS) {
            Some((cut, _)) => format!("{}…", &record[..cut]),
            None => record.to_string(),
        };
        push(
            &mut self.lock().dead_letters,
            DeadLetterRecord {
                rejected_at_ms: wall_clock_millis(),
                component: component.to_string(),
                error: error.to_string(),
                record,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().expect("not poisoned")
    }
}

fn push<T>(recent: &mut VecDeque<T>, item: T) {
    if recent.len() == RECENT {
        recent.pop_front();
    }
    recent.push_back(item);
}
