//! `flumen kv get|scan|count STORE`: reads what a key-value sink keeps,
//! beside the pipeline that writes it: an embedded store's file, Redis
//! or DynamoDB. Readers see committed checkpoints only.

use flumen_sinks::kv::KvReader;

use super::Failure;

/// What to read.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// The value of one key, as JSON; exit 1 if there is none.
    Get {
        /// The store: a `kv` sink's `path`, a Redis URL (`redis://HOST:PORT`),
        /// or `dynamodb://TABLE`.
        store: String,
        /// The key, e.g. `tweet:42`.
        key: String,
    },
    /// Keys and values in key order, one JSON object a line, then the
    /// cursor of the next page (if any) on standard error.
    Scan {
        /// The store: a `kv` sink's `path`, a Redis URL (`redis://HOST:PORT`),
        /// or `dynamodb://TABLE`.
        store: String,
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
        /// The store: a `kv` sink's `path`, a Redis URL (`redis://HOST:PORT`),
        /// or `dynamodb://TABLE`.
        store: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

pub fn run(command: KvCommand) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    runtime.block_on(read(command))
}

async fn read(command: KvCommand) -> Result<(), Failure> {
    match command {
        KvCommand::Get { store, key } => {
            match open(&store).await?.get(&key).await.map_err(failed)? {
                Some(entry) => {
                    println!("{}", entry.to_json());
                    Ok(())
                }
                None => Err(Failure::Runtime(format!("no key `{key}` in {store}"))),
            }
        }
        KvCommand::Scan {
            store,
            prefix,
            limit,
            cursor,
        } => {
            let (entries, next) = open(&store)
                .await?
                .scan(&prefix, cursor.as_deref(), limit)
                .await
                .map_err(failed)?;
            for entry in &entries {
                println!("{}", entry.to_json());
            }
            if let Some(next) = next {
                eprintln!("more: --cursor {}", shell_word(&next));
            }
            Ok(())
        }
        KvCommand::Count { store, prefix } => {
            let count = open(&store).await?.count(&prefix).await.map_err(failed)?;
            println!("{count}");
            Ok(())
        }
    }
}

async fn open(store: &str) -> Result<KvReader, Failure> {
    KvReader::open(store)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))
}

fn failed(error: flumen_core::error::Error) -> Failure {
    Failure::Runtime(error.to_string())
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
