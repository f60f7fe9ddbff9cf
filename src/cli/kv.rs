//! `flumen kv get|scan|count STORE`: reads what a key-value sink keeps,
//! beside the pipeline that writes it. Readers see committed checkpoints
//! only.

use std::path::{Path, PathBuf};

use flumen_sinks::kv::{EmbeddedReader, Entry};

use super::Failure;

/// What to read.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// The value of one key, as JSON; exit 1 if there is none.
    Get {
        /// The store (a `kv` sink's `path`).
        store: PathBuf,
        /// The key, e.g. `tweet:42`.
        key: String,
    },
    /// Keys and values in key order, one JSON object a line, then the
    /// cursor of the next page (if any) on standard error.
    Scan {
        /// The store (a `kv` sink's `path`).
        store: PathBuf,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this key (the cursor a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// How many keys there are (that start with `--prefix`).
    Count {
        /// The store (a `kv` sink's `path`).
        store: PathBuf,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

pub fn run(command: KvCommand) -> Result<(), Failure> {
    match command {
        KvCommand::Get { store, key } => match open(&store)?.get(&key).map_err(runtime)? {
            Some(entry) => {
                println!("{}", line(&entry));
                Ok(())
            }
            None => Err(Failure::Runtime(format!(
                "no key `{key}` in {}",
                store.display()
            ))),
        },
        KvCommand::Scan {
            store,
            prefix,
            limit,
            cursor,
        } => {
            let (entries, next) = open(&store)?
                .scan(&prefix, cursor.as_deref(), limit)
                .map_err(runtime)?;
            for entry in &entries {
                println!("{}", line(entry));
            }
            if let Some(next) = next {
                eprintln!("more: --cursor {}", shell_word(&next));
            }
            Ok(())
        }
        KvCommand::Count { store, prefix } => {
            println!("{}", open(&store)?.count(&prefix).map_err(runtime)?);
            Ok(())
        }
    }
}

fn open(store: &Path) -> Result<EmbeddedReader, Failure> {
    EmbeddedReader::open(store).map_err(|e| Failure::Usage(e.to_string()))
}

fn runtime(error: flumen_core::error::Error) -> Failure {
    Failure::Runtime(error.to_string())
}

/// An entry as one JSON line: key, value, and version and expiry where
/// the store has them.
fn line(entry: &Entry) -> String {
    let mut object = serde_json::json!({ "key": entry.key, "value": entry.value });
    if let Some(version) = entry.version {
        object["version"] = version.into();
    }
    if let Some(expires_at) = entry.expires_at {
        object["expires_at"] = expires_at.into();
    }
    object.to_string()
}

/// `text` as one word for a shell.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '/'))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
