//! One error type for all of Flumen, grouped by what the caller can do about it.

use std::fmt;

use arrow::error::ArrowError;
use datafusion_common::DataFusionError;

/// A boxed error from a library Flumen calls into (a client, a codec).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with Flumen's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Flumen.
///
/// The variants are grouped by what the caller can do: fix the configuration
/// ([`Error::Config`], [`Error::Graph`]), retry or fix the outside world
/// ([`Error::Connector`], [`Error::Io`]), route a bad record aside
/// ([`Error::Data`]), or report a bug ([`Error::Internal`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong. `path` names the key, e.g.
    /// `sources.bids.events`.
    #[error("invalid configuration at `{path}`: {message}")]
    Config {
        /// Dotted path of the offending key.
        path: String,
        /// What was wrong and what was expected.
        message: String,
    },

    /// A setting names a column its input does not have.
    #[error("invalid configuration at `{path}`: column `{column}` does not exist; columns: {}", available.join(", "))]
    UnknownColumn {
        /// Dotted path of the setting, e.g. `group_by[1]`.
        path: String,
        /// The column it names.
        column: String,
        /// The columns there are, in order.
        available: Vec<String>,
    },

    /// The dataflow graph is not well formed: a dangling input, a cycle, an
    /// unknown column, a schema mismatch.
    #[error("invalid pipeline: `{node}`: {}{message}", key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Graph {
        /// The node at fault.
        node: String,
        /// The setting of the node at fault, if one is, e.g. `inputs[1]`.
        key: Option<String>,
        /// What is wrong with it.
        message: String,
    },

    /// An outside system (a broker, a bucket, a server) failed.
    #[error("{connector}: {source}")]
    Connector {
        /// Which connector, e.g. `file` or `kafka`.
        connector: String,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A checkpoint cannot be taken or restored: it was taken from another
    /// pipeline, or a source cannot record where it is in its input.
    #[error("{0}")]
    Checkpoint(String),

    /// The checkpoint asked for does not exist, or never completed.
    #[error("checkpoint {id} does not exist in `{store}`")]
    NoSuchCheckpoint {
        /// The checkpoint's number.
        id: u64,
        /// Where it was looked for.
        store: String,
    },

    /// A record could not be decoded or evaluated. Such records are meant
    /// for the dead-letter output rather than to stop the pipeline.
    #[error("bad record: {0}")]
    Data(String),

    /// An error raised inside a node while the pipeline runs, with the
    /// node's name attached.
    #[error("`{node}` failed: {source}")]
    Node {
        /// Name of the node that failed.
        node: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),

    /// DataFusion failed to plan or evaluate an expression.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// A local I/O operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// A bug in Flumen: an invariant did not hold.
    #[error("internal error (a bug in Flumen, please report it): {0}")]
    Internal(String),

    /// The run was stopped before it could drain (a second interrupt, or
    /// [`ShutdownHandle::abort`](crate::runtime::ShutdownHandle::abort)).
    #[error("stopped without draining: rows in flight were not written")]
    Interrupted,

    /// The pipeline is stopping because another node failed or a peer went
    /// away. The runtime never returns this from `run()`; it returns the
    /// error that caused the stop.
    #[error("pipeline is shutting down")]
    ShuttingDown,
}

impl Error {
    /// A configuration error at `path`.
    pub fn config(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// Setting `path` names `column`, which `schema` does not have.
    pub fn unknown_column(
        path: impl Into<String>,
        column: impl Into<String>,
        schema: &arrow::datatypes::Schema,
    ) -> Self {
        Error::UnknownColumn {
            path: path.into(),
            column: column.into(),
            available: schema.fields().iter().map(|f| f.name().clone()).collect(),
        }
    }

    /// The setting a configuration error is about and what is wrong with
    /// it, if it is one (a bad value, or a column that does not exist).
    pub fn setting(&self) -> Option<(&str, String)> {
        match self {
            Error::Config { path, message } => Some((path, message.clone())),
            Error::UnknownColumn {
                path,
                column,
                available,
            } => Some((
                path,
                format!(
                    "column `{column}` does not exist; columns: {}",
                    available.join(", ")
                ),
            )),
            _ => None,
        }
    }

    /// The column a message of an [`Error::UnknownColumn`] (as
    /// [`Error::setting`] words it) names.
    pub fn missing_column(message: &str) -> Option<&str> {
        message
            .strip_prefix("column `")?
            .split_once("` does not exist")
            .map(|(column, _)| column)
    }

    /// The same error about the setting at `prefix.path`, if it is about a
    /// setting.
    pub fn under(self, prefix: &str) -> Self {
        match self {
            Error::Config { path, message } => Error::Config {
                path: format!("{prefix}.{path}"),
                message,
            },
            Error::UnknownColumn {
                path,
                column,
                available,
            } => Error::UnknownColumn {
                path: format!("{prefix}.{path}"),
                column,
                available,
            },
            other => other,
        }
    }

    /// A graph error at `node`.
    pub fn graph(node: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Graph {
            node: node.into(),
            key: None,
            message: message.to_string(),
        }
    }

    /// A graph error in setting `key` of `node`.
    pub fn graph_at(
        node: impl Into<String>,
        key: impl Into<String>,
        message: impl fmt::Display,
    ) -> Self {
        Error::Graph {
            node: node.into(),
            key: Some(key.into()),
            message: message.to_string(),
        }
    }

    /// An error from an outside system.
    pub fn connector(
        connector: impl Into<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Connector {
            connector: connector.into(),
            retryable,
            source: source.into(),
        }
    }

    /// A bug in Flumen.
    pub fn internal(message: impl fmt::Display) -> Self {
        Error::Internal(message.to_string())
    }

    /// Attaches the name of the node the error happened in, once.
    pub fn in_node(self, node: &str) -> Self {
        match self {
            Error::Node { .. } | Error::ShuttingDown => self,
            other => Error::Node {
                node: node.to_string(),
                source: Box::new(other),
            },
        }
    }

    /// The name of the node the error happened in, if known.
    pub fn node(&self) -> Option<&str> {
        match self {
            Error::Node { node, .. } | Error::Graph { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Whether this error is only a consequence of another failure.
    pub fn is_shutting_down(&self) -> bool {
        matches!(self, Error::ShuttingDown)
    }

    /// Whether retrying the failed operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connector { retryable, .. } => *retryable,
            Error::Node { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_attached_once() {
        let err = Error::Data("x".into()).in_node("parse").in_node("outer");
        assert_eq!(err.node(), Some("parse"));
        assert_eq!(err.to_string(), "`parse` failed: bad record: x");
    }
}
