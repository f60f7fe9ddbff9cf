//! `flumen run FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flumen::config::{LoadedPipeline, Registry};
use flumen_core::checkpoint::{CheckpointSettings, CheckpointStore, StartFrom};
use flumen_core::prelude::{RunOptions, RunReport};

use super::Failure;
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

    /// Start from the beginning, ignoring any checkpoint (and discarding
    /// output staged but never committed).
    #[arg(long)]
    fresh: bool,
}

/// The checkpoint store of a pipeline file: the `store` it names, or
/// `.flumen/<pipeline>/checkpoints` beside it.
pub fn checkpoint_store_of(file: &std::path::Path, store: Option<&str>) -> String {
    match store {
        Some(store) => store.to_string(),
        None => {
            let stem = file
                .file_stem()
                .map_or_else(|| "pipeline".into(), |s| s.to_string_lossy());
            let directory = file.parent().unwrap_or(std::path::Path::new(""));
            directory
                .join(".flumen")
                .join(stem.as_ref())
                .join("checkpoints")
                .to_string_lossy()
                .into_owned()
        }
    }
}

pub fn run(args: RunArgs, registry: &Registry) -> Result<(), Failure> {
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
        let pipeline = loaded.pipeline;
        let progress = progress::start(&pipeline, args.progress);
        tracing::info!(pipeline = %args.file.display(), "running");
        let checkpoints = match &loaded.checkpoint {
            Some(config) => {
                let location = checkpoint_store_of(&args.file, config.store.as_deref());
                let store = CheckpointStore::open(&location, &config.storage)
                    .map_err(|e| Failure::Usage(e.to_string()))?;
                let start = match (args.fresh, args.from_checkpoint) {
                    (true, _) => StartFrom::Fresh,
                    (false, Some(id)) => StartFrom::Checkpoint(id),
                    (false, None) => StartFrom::Latest,
                };
                Some(CheckpointSettings {
                    store,
                    interval: config.interval,
                    keep: config.keep,
                    start,
                })
            }
            None if args.fresh || args.from_checkpoint.is_some() => {
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
        let report = result.map_err(|e| Failure::Runtime(e.to_string()))?;
        eprintln!("{}", summary(&report));
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
        Ok(())
    })
}

/// `finished in 1.23s; in: bids=92000; out: big=4521, all=92000`.
fn summary(report: &RunReport) -> String {
    let list = |kind: &str, count: fn(&flumen_core::runtime::NodeReport) -> u64| {
        report
            .nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| format!("{}={}", n.name, count(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let how = if report.drained {
        "drained after interrupt"
    } else {
        "finished"
    };
    format!(
        "{how} in {:.2}s; in: {}; out: {}",
        report.duration.as_secs_f64(),
        list("source", |n| n.rows_out),
        list("sink", |n| n.rows_out),
    )
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
