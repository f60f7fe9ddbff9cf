//! `flumen checkpoints list|inspect DIR`.

use flumen_core::checkpoint::{CheckpointStore, Manifest};
use flumen_core::storage::StorageOptions;

use super::Failure;

/// What to show.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointsCommand {
    /// One line per complete checkpoint: id, time, state size.
    List {
        /// The checkpoint store: a directory or object-store URL.
        store: String,
    },
    /// For a pipeline run as tasks: one line per task (a partition of its
    /// task source) with its latest complete checkpoint, its read
    /// position and its state. `inspect STORE/tasks/N` shows one in
    /// detail.
    Tasks {
        /// The checkpoint store: a directory or object-store URL.
        store: String,
    },
    /// A checkpoint in detail: per operator instance its state tables,
    /// per source instance its read position, per sink its transaction.
    Inspect {
        /// The checkpoint store: a directory or object-store URL.
        store: String,
        /// Which checkpoint. Default: the latest complete one.
        id: Option<u64>,
    },
}

pub fn run(command: CheckpointsCommand) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let open = |store: &str| {
            // Object-store settings come from the standard environment.
            CheckpointStore::open(store, &StorageOptions::default())
                .map_err(|e| Failure::Usage(e.to_string()))
        };
        let failed = |e: flumen_core::Error| Failure::Runtime(e.to_string());
        match command {
            CheckpointsCommand::List { store } => {
                let manifests = open(&store)?.list().await.map_err(failed)?;
                if manifests.is_empty() {
                    println!("no complete checkpoints in `{store}`");
                    return Ok(());
                }
                println!(
                    "{:>6}  {:<24}  {:>12}  {:>6}",
                    "id", "completed", "state bytes", "final"
                );
                for manifest in &manifests {
                    println!(
                        "{:>6}  {:<24}  {:>12}  {:>6}",
                        manifest.id,
                        time(manifest),
                        manifest.state_bytes(),
                        if manifest.finished { "yes" } else { "" }
                    );
                }
                Ok(())
            }
            CheckpointsCommand::Tasks { store } => {
                let store = open(&store)?;
                let tasks = store.tasks().await.map_err(failed)?;
                if tasks.is_empty() {
                    println!("no task checkpoints in `{}`", store.display());
                    return Ok(());
                }
                println!(
                    "{:>5}  {:>6}  {:<24}  {:>12}  {:>10}  {:>6}",
                    "task", "id", "completed", "state bytes", "state rows", "final"
                );
                for task in tasks {
                    let Some(manifest) =
                        store.task(task).latest_manifest().await.map_err(failed)?
                    else {
                        println!("{task:>5}  (no complete checkpoint)");
                        continue;
                    };
                    println!(
                        "{:>5}  {:>6}  {:<24}  {:>12}  {:>10}  {:>6}  {}",
                        task,
                        manifest.id,
                        time(&manifest),
                        manifest.state_bytes(),
                        state_rows(&manifest),
                        if manifest.finished { "yes" } else { "" },
                        positions(&manifest),
                    );
                }
                Ok(())
            }
            CheckpointsCommand::Inspect { store, id } => {
                let store = open(&store)?;
                let manifest = match id {
                    Some(id) => store.manifest(id).await.map_err(failed)?.ok_or_else(|| {
                        Failure::Usage(format!(
                            "checkpoint {id} does not exist in `{}`",
                            store.display()
                        ))
                    })?,
                    None => store.list().await.map_err(failed)?.pop().ok_or_else(|| {
                        Failure::Usage(format!("no complete checkpoints in `{}`", store.display()))
                    })?,
                };
                print!("{}", describe(&manifest));
                Ok(())
            }
        }
    })
}

fn time(manifest: &Manifest) -> String {
    chrono::DateTime::from_timestamp_millis(manifest.created_at_ms).map_or_else(
        || manifest.created_at_ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

fn describe(manifest: &Manifest) -> String {
    let mut out = format!(
        "checkpoint {}\ncompleted   {}\nstate       {} bytes\nfinal       {}\nkey groups  {}\n",
        manifest.id,
        time(manifest),
        manifest.state_bytes(),
        if manifest.finished {
            "yes: the sources had ended or were drained"
        } else {
            "no"
        },
        manifest
            .max_parallelism
            .map_or("none (taken before key groups)".to_string(), |n| n
                .to_string()),
    );
    for (name, node) in &manifest.nodes {
        let version = node
            .state_version
            .map_or(String::new(), |v| format!(" (state format {v})"));
        out.push_str(&format!("\n{} `{name}`{version}\n", node.kind));
        if let Some(state) = &node.state {
            out.push_str(&format!("  holds {state}\n"));
        }
        for (index, instance) in node.instances.iter().enumerate() {
            let what = match node.kind.as_str() {
                "source" => "position",
                "sink" => "transaction",
                _ => "values",
            };
            if !instance.values.is_null() {
                out.push_str(&format!("  [{index}] {what}: {}\n", instance.values));
            } else if instance.tables.is_empty() {
                out.push_str(&format!("  [{index}] (nothing)\n"));
            }
            for table in &instance.tables {
                out.push_str(&format!(
                    "  [{index}] table {}: {} rows, {} bytes ({})\n",
                    table.name, table.rows, table.bytes, table.file
                ));
                if let Some(keyed) = &table.keyed {
                    out.push_str(&format!(
                        "      by key group of ({}): {}\n",
                        keyed.columns.join(", "),
                        key_groups(&keyed.groups)
                    ));
                }
            }
        }
    }
    out
}

/// Rows of state over every table of every instance.
fn state_rows(manifest: &Manifest) -> u64 {
    manifest
        .nodes
        .values()
        .flat_map(|node| &node.instances)
        .flat_map(|instance| &instance.tables)
        .map(|table| table.rows)
        .sum()
}

/// The sources' read positions, compactly: `orders: clicks[3]@1200`.
fn positions(manifest: &Manifest) -> String {
    let mut shown = Vec::new();
    for (name, node) in manifest.nodes.iter().filter(|(_, n)| n.kind == "source") {
        for instance in &node.instances {
            let offsets = instance.values.get("offsets").and_then(|o| o.as_array());
            let described: Vec<String> = offsets
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    Some(format!(
                        "{}[{}]@{}",
                        o.get("topic")?.as_str()?,
                        o.get("partition")?,
                        o.get("offset")?
                    ))
                })
                .collect();
            if !described.is_empty() {
                shown.push(format!("{name}: {}", described.join(", ")));
            }
        }
    }
    shown.join("; ")
}

/// `3 groups: 0 (12 rows), 5 (1 row), 9 (40 rows)`, eliding the middle of
/// a long list.
fn key_groups(groups: &[(usize, u64)]) -> String {
    let rows = |(group, rows): &(usize, u64)| match rows {
        1 => format!("{group} (1 row)"),
        n => format!("{group} ({n} rows)"),
    };
    let shown: Vec<String> = match groups.len() {
        0..=6 => groups.iter().map(rows).collect(),
        n => {
            let mut shown: Vec<String> = groups[..3].iter().map(rows).collect();
            shown.push("…".to_string());
            shown.extend(groups[n - 2..].iter().map(rows));
            shown
        }
    };
    match groups.len() {
        0 => "no rows".to_string(),
        1 => format!("1 group: {}", shown.join(", ")),
        n => format!("{n} groups: {}", shown.join(", ")),
    }
}
