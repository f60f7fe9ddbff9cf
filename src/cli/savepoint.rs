//! `flumen savepoint PIPELINE [NAME]`: keep a pipeline's latest complete
//! checkpoint until it is deleted, to start an upgraded pipeline from.

use std::path::PathBuf;

use flumen::config::{LoadedPipeline, Registry};

use super::Failure;

/// What `flumen savepoint` does.
#[derive(Debug, clap::Args)]
pub struct SavepointArgs {
    /// The pipeline file (its `checkpoint` section says where the store is).
    file: PathBuf,
    /// The savepoint's name. Default: `savepoint-<checkpoint id>`.
    name: Option<String>,
    /// Keep this checkpoint rather than the latest complete one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["list", "delete"])]
    checkpoint: Option<u64>,
    /// List the pipeline's savepoints instead.
    #[arg(long, conflicts_with = "delete")]
    list: bool,
    /// Delete savepoint NAME instead.
    #[arg(long, requires = "name")]
    delete: bool,
}

pub fn run(args: SavepointArgs, registry: &Registry) -> Result<(), Failure> {
    let loaded = LoadedPipeline::load(&args.file, registry)?;
    let Some(config) = &loaded.checkpoint else {
        return Err(Failure::Usage(format!(
            "`{}` has no `checkpoint` section, so it keeps no state to save",
            args.file.display()
        )));
    };
    let store = config
        .open_store()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let failed = |e: flumen_core::Error| Failure::Runtime(e.to_string());
    runtime.block_on(async move {
        if args.list {
            let savepoints = store.savepoints().await.map_err(failed)?;
            if savepoints.is_empty() {
                println!("no savepoints in `{}`", store.display());
            }
            for (name, manifest) in savepoints {
                println!("{name}  (checkpoint {})", manifest.id);
            }
            return Ok(());
        }
        if args.delete {
            let name = args.name.as_deref().expect("clap requires it");
            return match store.delete_savepoint(name).await.map_err(failed)? {
                true => {
                    println!("deleted savepoint `{name}`");
                    Ok(())
                }
                false => Err(Failure::Usage(format!(
                    "there is no savepoint `{name}` in `{}`",
                    store.display()
                ))),
            };
        }
        let id = match args.checkpoint {
            Some(id) => id,
            None => {
                let latest = store.list().await.map_err(failed)?.pop();
                latest.map(|m| m.id).ok_or_else(|| {
                    Failure::Usage(format!(
                        "there is no complete checkpoint in `{}` to keep",
                        store.display()
                    ))
                })?
            }
        };
        let name = args.name.unwrap_or_else(|| format!("savepoint-{id}"));
        let kept = store.save(id, &name).await.map_err(|e| match e {
            flumen_core::Error::NoSuchCheckpoint { .. } | flumen_core::Error::Checkpoint(_) => {
                Failure::Usage(e.to_string())
            }
            e => failed(e),
        })?;
        println!(
            "checkpoint {id} kept as savepoint `{name}` in `{}`\nstart from it with: flumen run PIPELINE --from-savepoint {name}",
            kept.display()
        );
        Ok(())
    })
}
