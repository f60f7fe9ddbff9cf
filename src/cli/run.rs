//! `flumen run FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flumen::config::{DeadLetterOutput, LoadedPipeline, Registry};
use flumen_core::Error;
use flumen_core::checkpoint::{CheckpointSettings, StartFrom};
use flumen_core::dead_letter::OnError;
use flumen_core::prelude::{RunOptions, RunReport};
use flumen_core::runtime::NodeReport;
use serde_json::json;

use super::Failure;
use super::logging::{self, LogFormat};
use super::progress::{self, ProgressMode};

/// Options of `flumen run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file.
    file: PathBuf,

    /// Serve Prometheus metrics at `http://HOST:PORT/metrics`.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,

    /// Keep serving metrics this long after the pipeline finishes (e.g.
    /// `30s`), so that a scraper sees the final counts. An interrupt ends
    /// the wait.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "metrics_addr")]
    metrics_linger: Option<Duration>,

    /// Serve the console at `http://HOST:PORT/`: a live page of the
    /// pipeline, and its status API (`/v1/status`, `/v1/nodes`, …) that
    /// `flumen top` reads. A `serve:` section's server serves it too.
    #[cfg(feature = "serve")]
    #[arg(long, value_name = "HOST:PORT")]
    ui: Option<SocketAddr>,

    /// `auto`: a progress bar on a terminal, a status line every 10 s
    /// otherwise; `off`: neither.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,

    /// Batches each channel between components holds before the sender
    /// waits: more smooths bursts, less bounds memory tighter.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    channel_capacity: u16,

    /// Start from this checkpoint rather than the latest complete one
    /// (pipelines with a `checkpoint` section).
    #[arg(long, value_name = "ID", conflicts_with = "fresh")]
    from_checkpoint: Option<u64>,

    /// Start from this savepoint (`flumen savepoint`, or SIGUSR2 to a
    /// running pipeline), kept in the pipeline's checkpoint store.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["fresh", "from_checkpoint"])]
    from_savepoint: Option<String>,

    /// Start from the beginning, ignoring any checkpoint (and discarding
    /// output staged but never committed).
    #[arg(long)]
    fresh: bool,

    /// Restore a checkpoint even if some of its state does not fit the
    /// pipeline (a removed component's, or one whose kind or parallelism
    /// changed): those components start without it.
    #[arg(long, conflicts_with = "fresh")]
    allow_non_restored_state: bool,
}

pub fn run(args: RunArgs, registry: &Registry, log_format: LogFormat) -> Result<(), Failure> {
    let loaded = LoadedPipeline::load(&args.file, registry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        if let Some(address) = args.metrics_addr {
            super::metrics::install(address).map_err(Failure::Runtime)?;
            tracing::info!("serving metrics at http://{address}/metrics");
        }
        #[cfg(feature = "serve")]
        let console = std::sync::Arc::new(flumen::serve::Console::new(
            args.file.display().to_string(),
            &loaded.pipeline,
            super::graph::render(
                &loaded,
                super::graph::GraphFormat::Svg,
                super::graph::EdgeLabels::Partitioning,
            )
            .ok(),
        ));
        #[cfg(feature = "serve")]
        let _console_server = match args.ui {
            Some(address) => {
                let server = flumen::serve::ViewServer::start(
                    &flumen::serve::ServeConfig::new(address.to_string()),
                    Default::default(),
                    Default::default(),
                    Some(console.clone()),
                )
                .await
                .map_err(|e| match e {
                    // The server's errors name `serve:` keys; here, the flag.
                    Error::Config { message, .. } => {
                        Failure::Usage(format!("--ui: cannot listen on {message}"))
                    }
                    e => Failure::Usage(format!("--ui {address}: {e}")),
                })?;
                tracing::info!("console at http://{}/", server.address());
                Some(server)
            }
            None => None,
        };
        #[cfg(feature = "serve")]
        let server = match &loaded.serve {
            Some(served) => {
                let server = flumen::serve::ViewServer::start(
                    &served.config,
                    served.views.clone(),
                    served.indexes.clone(),
                    Some(console.clone()),
                )
                .await
                .map_err(|e| Failure::Usage(e.to_string()))?;
                let views: Vec<&str> = served
                    .views
                    .keys()
                    .chain(served.indexes.keys())
                    .map(String::as_str)
                    .collect();
                tracing::info!(
                    views = %views.join(", "),
                    "serving views at http://{}/v1/views",
                    server.address()
                );
                Some((server, served.config.linger))
            }
            None => None,
        };
        let LoadedPipeline {
            pipeline,
            checkpoint,
            dead_letters,
            ..
        } = loaded;
        let dropping: Vec<String> = pipeline
            .nodes()
            .iter()
            .filter(|n| n.on_error == OnError::Drop)
            .map(|n| n.name.clone())
            .collect();
        let progress = progress::start(&pipeline, args.progress);
        tracing::info!(pipeline = %args.file.display(), "running");
        let checkpoints = match &checkpoint {
            Some(config) => {
                let store = config
                    .open_store()
                    .map_err(|e| Failure::Usage(e.to_string()))?;
                let start = match (
                    args.fresh,
                    args.from_checkpoint,
                    args.from_savepoint.clone(),
                ) {
                    (true, _, _) => StartFrom::Fresh,
                    (false, Some(id), _) => StartFrom::Checkpoint(id),
                    (false, None, Some(name)) => StartFrom::Savepoint(name),
                    (false, None, None) => StartFrom::Latest,
                };
                Some(CheckpointSettings {
                    store,
                    interval: config.interval,
                    keep: config.keep,
                    start,
                    allow_non_restored_state: args.allow_non_restored_state,
                })
            }
            None if args.fresh
                || args.from_checkpoint.is_some()
                || args.from_savepoint.is_some()
                || args.allow_non_restored_state =>
            {
                return Err(Failure::Usage(format!(
                    "`{}` has no `checkpoint` section, so there is no checkpoint to start from",
                    args.file.display()
                )));
            }
            None => None,
        };
        let options = RunOptions {
            channel_capacity: args.channel_capacity.into(),
            handle_signals: true,
            checkpoints,
        };
        let result = pipeline.run_with(options).await;
        progress.finish();
        let report = result.map_err(|e| match e {
            // The checkpoint asked for is not there: the command is wrong.
            e @ Error::NoSuchCheckpoint { .. } => Failure::Usage(e.to_string()),
            e => Failure::Runtime(e.to_string()),
        })?;
        let summary = Summary {
            report: &report,
            dead_letters: &dead_letters,
            dropping: &dropping,
        };
        if let Some(id) = summary.finished_before() {
            let message = format!(
                "this pipeline finished at checkpoint {id}; run with --fresh to start over"
            );
            match log_format {
                LogFormat::Pretty => eprintln!("{message}"),
                LogFormat::Json => logging::print_json("WARN", &message, json!({})),
            }
        }
        if report.rejected() > 0 {
            tracing::warn!(
                rejected = report.rejected(),
                dead_letters = %dead_letters,
                "records were rejected"
            );
        }
        summary.print(log_format);
        #[cfg(feature = "serve")]
        if let Some((server, Some(linger))) = &server
            && !linger.is_zero()
        {
            server.pipeline_finished();
            tracing::info!(
                "serving views at http://{}/v1/views for {}",
                server.address(),
                humantime::format_duration(*linger)
            );
            tokio::select! {
                _ = tokio::time::sleep(*linger) => {}
                _ = interrupted() => {}
            }
        }
        if let Some(linger) = args.metrics_linger {
            tracing::info!(
                "serving final metrics for {}",
                humantime::format_duration(linger)
            );
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = interrupted() => {}
            }
        }
        if summary.all_rejected() {
            return Err(Failure::Runtime(format!(
                "every record was rejected: {} went to {dead_letters}",
                report.rejected()
            )));
        }
        Ok(())
    })
}

/// What a run did, for the line printed at its end.
struct Summary<'a> {
    report: &'a RunReport,
    dead_letters: &'a DeadLetterOutput,
    /// Components whose `on_error` is `drop`.
    dropping: &'a [String],
}

impl Summary<'_> {
    /// The finished checkpoint of an earlier run, if this run restored it
    /// and so had nothing left to read.
    fn finished_before(&self) -> Option<u64> {
        let restored = self.report.restored?;
        let read: u64 = self.nodes("source").map(|n| n.rows_out).sum();
        (restored.finished && read == 0 && !self.report.drained).then_some(restored.id)
    }

    /// Whether records were rejected and none reached a sink.
    fn all_rejected(&self) -> bool {
        let written: u64 = self.nodes("sink").map(|n| n.rows_out).sum();
        self.report.rejected() > 0 && written == 0
    }

    fn nodes(&self, kind: &'static str) -> impl Iterator<Item = &NodeReport> {
        self.report.nodes.iter().filter(move |n| n.kind == kind)
    }

    /// `finished in 1.23s; in: bids=92000; out: big=4521, all=92000;
    /// rejected: 3 (bids=3) → .flumen/p/dead_letters`.
    fn line(&self) -> String {
        let list = |kind, count: fn(&NodeReport) -> u64| {
            self.nodes(kind)
                .map(|n| format!("{}={}", n.name, count(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let how = if self.report.drained {
            "drained after interrupt"
        } else {
            "finished"
        };
        let mut line = format!(
            "{how} in {:.2}s; in: {}; out: {}; rejected: {}",
            self.report.duration.as_secs_f64(),
            list("source", |n| n.rows_out),
            list("sink", |n| n.rows_out),
            self.report.rejected(),
        );
        let rejecting: Vec<String> = self
            .report
            .nodes
            .iter()
            .filter(|n| n.rejected > 0)
            .map(|n| match self.dropping.contains(&n.name) {
                true => format!("{}={} dropped", n.name, n.rejected),
                false => format!("{}={}", n.name, n.rejected),
            })
            .collect();
        if !rejecting.is_empty() {
            line.push_str(&format!(" ({})", rejecting.join(", ")));
            let kept = self
                .report
                .nodes
                .iter()
                .any(|n| n.rejected > 0 && !self.dropping.contains(&n.name));
            if kept {
                line.push_str(&format!(" → {}", self.dead_letters));
            }
        }
        line
    }

    fn print(&self, format: LogFormat) {
        match format {
            LogFormat::Pretty => eprintln!("{}", self.line()),
            LogFormat::Json => {
                let counts = |kind, count: fn(&NodeReport) -> u64| {
                    self.nodes(kind)
                        .map(|n| (n.name.clone(), json!(count(n))))
                        .collect::<serde_json::Map<_, _>>()
                };
                let rejected: serde_json::Map<_, _> = self
                    .report
                    .nodes
                    .iter()
                    .filter(|n| n.rejected > 0)
                    .map(|n| (n.name.clone(), json!(n.rejected)))
                    .collect();
                logging::print_json(
                    "INFO",
                    &self.line(),
                    json!({
                        "outcome": if self.report.drained { "drained" } else { "finished" },
                        "duration_secs": self.report.duration.as_secs_f64(),
                        "in": counts("source", |n| n.rows_out),
                        "out": counts("sink", |n| n.rows_out),
                        "rejected": self.report.rejected(),
                        "rejected_by": rejected,
                        "dead_letters": self.dead_letters.to_string(),
                    }),
                );
            }
        }
    }
}

async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
