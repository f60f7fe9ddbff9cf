//! Progress of a run: a bar on a terminal, a periodic status line
//! otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_core::graph::{NodeKind, Pipeline};
use flumen_core::runtime::NodeStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::task::JoinHandle;

/// Whether to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, a status line every 10 s otherwise.
    Auto,
    /// No progress output.
    Off,
}

/// The running progress display.
pub struct Progress {
    task: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Stops updating and clears the bar.
    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Starts showing the progress of the sources of `pipeline`.
pub fn start(pipeline: &Pipeline, mode: ProgressMode) -> Progress {
    let none = Progress {
        task: None,
        bar: None,
    };
    if mode == ProgressMode::Off {
        return none;
    }
    let mut total = Some(0u64);
    let mut sources: Vec<Arc<NodeStats>> = Vec::new();
    for (node, stats) in pipeline.nodes().iter().zip(pipeline.stats().iter()) {
        if let NodeKind::Source(factory) = &node.kind {
            sources.push(stats.clone());
            total = total.zip(factory.expected_events()).map(|(t, e)| t + e);
        }
    }
    let read = move || sources.iter().map(|s| s.rows_out()).sum::<u64>();

    if std::io::stderr().is_terminal() {
        let template = match total {
            Some(_) => "{bar:40} {human_pos}/{human_len} events  {rate}  ETA {eta}",
            None => "{spinner} {human_pos} events  {rate}",
        };
        let style = ProgressStyle::with_template(template)
            .expect("valid template")
            .with_key(
                "rate",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0} events/s", state.per_sec());
                },
            );
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        }
        .with_style(style);
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let shown = bar.clone();
        flumen_core::console::set_display(move |write| shown.suspend(write));
        let updated = bar.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            loop {
                ticks.tick().await;
                updated.set_position(read());
            }
        });
        return Progress {
            task: Some(task),
            bar: Some(bar),
        };
    }

    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(10));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let done = read();
            let rate = done as f64 / started.elapsed().as_secs_f64();
            match total {
                Some(total) if total > 0 => tracing::info!(
                    "progress: {done} of {total} events ({:.0}%), {rate:.0} events/s",
                    100.0 * done as f64 / total as f64
                ),
                _ => tracing::info!("progress: {done} events, {rate:.0} events/s"),
            }
        }
    });
    Progress {
        task: Some(task),
        bar: None,
    }
}
