//! A pipeline file: named sources, transforms and sinks, checked and built
//! into a [`Pipeline`].
//!
//! ```yaml
//! sources:
//!   bids:
//!     type: nexmark
//!     events: 1000000
//! transforms:
//!   in_euros:
//!     type: sql
//!     inputs: [bids]
//!     select: [auction, "price * 0.908 AS price_eur"]
//! sinks:
//!   out:
//!     type: stdout
//!     inputs: [in_euros]
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use flumen_core::checkpoint::CheckpointConfig;
use flumen_core::dead_letter::OnError;
use flumen_core::event_time::EventTimeConfig;
use std::sync::Arc;

use flumen_core::catalog::SinkConfig;
use flumen_core::graph::{GraphBuilder, Input, NodeKind, Pipeline};
use flumen_core::partition::Partitioning;
use flumen_sinks::file::FileSinkConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ConfigError, did_you_mean};
use super::registry::{BuildError, InPipeline, Registry, Section};
use super::unknown::KnownNames;
use super::yaml::{Document, interpolate};

/// How the rows of each input are split between a component's instances.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PartitioningConfig {
    /// Instance *i* reads instance *i* of each input (same parallelism).
    Forward,
    /// Batches go to the instances in turn.
    RoundRobin,
    /// Every instance receives every batch.
    Broadcast,
    /// Rows with equal values in these columns go to the same instance:
    /// `partitioning: { hash: [auction] }`.
    Hash(Vec<String>),
}

impl From<PartitioningConfig> for Partitioning {
    fn from(config: PartitioningConfig) -> Self {
        match config {
            PartitioningConfig::Forward => Partitioning::Forward,
            PartitioningConfig::RoundRobin => Partitioning::RoundRobin,
            PartitioningConfig::Broadcast => Partitioning::Broadcast,
            PartitioningConfig::Hash(keys) => Partitioning::Hash(keys),
        }
    }
}

/// The keys every component has, besides `type` and its own. Sources
/// have no `inputs` or `partitioning`; only sources have `event_time`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommonKeys {
    /// Names of the components this one reads (`name`, or `name.output`
    /// for a named output).
    #[serde(default, deserialize_with = "one_or_more")]
    #[schemars(length(min = 1))]
    pub inputs: Vec<String>,

    /// How many instances of the component run in parallel.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub parallelism: usize,

    /// How the rows of each input are split between this component's
    /// instances. Default: forward when the parallelism matches,
    /// round_robin otherwise.
    #[serde(default)]
    pub partitioning: Option<PartitioningConfig>,

    /// Where the events' time comes from, for watermarks and event-time
    /// windows.
    #[serde(default)]
    pub event_time: Option<EventTimeConfig>,

    /// Sends the component's input between processes through a broker,
    /// keyed by the `partitioning: { hash: [...] }` columns, for a
    /// pipeline run as tasks that groups by another key than its
    /// source's partitioning: `repartition: { kafka: { topic, partitions,
    /// replication } }` (the topic, created with `partitions` partitions
    /// and `replication` replicas, default the broker's, when missing).
    /// See docs/kafka.md, "Repartitioning through Kafka".
    #[serde(default)]
    pub repartition: Option<RepartitionConfig>,

    /// What the component does with a record it cannot handle (a line
    /// that does not decode, a row an expression fails on, a batch a sink
    /// rejects): `dead_letter` sends it to the dead letters (the
    /// `dead_letter` sink, or files in `.flumen/<pipeline>/dead_letters`),
    /// `drop` counts it, `fail` stops the pipeline.
    #[serde(default)]
    pub on_error: OnError,
}

fn one() -> usize {
    1
}

/// What carries a repartitioned edge's rows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RepartitionConfig {
    /// A Kafka topic in the cluster of the pipeline's task source (a
    /// `kafka` source with `tasks: true`), read back as tasks in the
    /// consumer group `<group>-<topic>`.
    Kafka(KafkaRepartitionConfig),
}

/// A repartition topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaRepartitionConfig {
    /// The topic, used by this edge alone. Created when missing; one that
    /// exists must have `partitions` partitions.
    pub topic: String,
    /// How many partitions the topic has: the tasks of the stage after
    /// the repartition, the most processes it can spread over.
    #[schemars(range(min = 1))]
    pub partitions: u32,
    /// Replicas of each partition when the topic is created. Default:
    /// the broker's default.
    #[serde(default)]
    pub replication: Option<u32>,
}

/// `inputs: name` or `inputs: [a, b]`.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a name or a list of names")]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(match OneOrMore::deserialize(d)? {
        OneOrMore::One(name) => vec![name],
        OneOrMore::More(names) => names,
    })
}

impl CommonKeys {
    /// The common keys a component of `section` may set.
    pub fn keys(section: Section) -> &'static [&'static str] {
        match section {
            Section::Sources => &["parallelism", "event_time", "on_error"],
            Section::Transforms | Section::Sinks => &[
                "inputs",
                "parallelism",
                "partitioning",
                "repartition",
                "on_error",
            ],
        }
    }

    /// Every common key, of any section: the struct's fields.
    pub fn all_keys() -> &'static [String] {
        static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let schema = schemars::schema_for!(CommonKeys);
            schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|properties| properties.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Why a component of `section` may not set common key `key`, if it
    /// may not.
    fn misplaced(section: Section, key: &str) -> Option<&'static str> {
        match (section, key) {
            (Section::Sources, "inputs") => Some("sources have no inputs"),
            (Section::Sources, "repartition") => Some(
                "sources have no inputs to repartition; set `repartition` on the components that read them",
            ),
            (Section::Sources, "partitioning") => Some(
                "sources have no inputs to partition; set `partitioning` on the components that read them",
            ),
            (Section::Transforms | Section::Sinks, "event_time") => {
                Some("event time is set on sources")
            }
            _ => None,
        }
    }
}

/// The most key groups a pipeline may have (Flink's limit too).
const MAX_KEY_GROUPS: usize = 32_768;

/// The keys every component of a section has, besides its own.
pub fn common_keys(section: Section) -> Vec<&'static str> {
    let mut keys = vec!["type"];
    keys.extend_from_slice(CommonKeys::keys(section));
    keys
}

/// One component as the file declares it.
#[derive(Debug, Clone)]
pub struct Component {
    /// Which section it is in.
    pub section: Section,
    /// Its name.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
    /// Names of the outputs it reads.
    pub inputs: Vec<String>,
    /// How many instances run.
    pub parallelism: usize,
    /// How inputs are split between instances.
    pub partitioning: Option<Partitioning>,
    /// What carries the inputs between processes, if anything.
    pub repartition: Option<RepartitionConfig>,
    /// Event time, for sources.
    pub event_time: Option<EventTimeConfig>,
    /// What the component does with a record it cannot handle.
    pub on_error: OnError,
    /// The component's own keys.
    settings: Value,
}

impl Component {
    /// `sources.bids`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section.key(), self.name)
    }

    /// The component's own keys, as the file gives them (after `${VAR}`
    /// substitution), without the keys every component has.
    pub fn settings(&self) -> &Value {
        &self.settings
    }
}

/// A checked pipeline file, with its built graph.
///
/// Relative paths in the file (inputs, outputs, buffers, the checkpoint
/// store, TLS and schema files) are resolved from the directory the file
/// is in, so a pipeline reads and writes the same files whichever
/// directory it is run from.
#[derive(Debug)]
pub struct LoadedPipeline {
    /// The components, in file order, with their paths resolved.
    pub components: Vec<Component>,
    /// The graph, ready to run.
    pub pipeline: Pipeline,
    /// The `checkpoint` section, if the file has one, with its `store`
    /// resolved (default: `checkpoints` in the state directory).
    pub checkpoint: Option<CheckpointConfig>,
    /// Where the pipeline keeps what it needs between runs:
    /// `.flumen/<pipeline>` beside the file.
    pub state_dir: PathBuf,
    /// Where rejected records go.
    pub dead_letters: DeadLetterOutput,
    /// The `serve:` section, if the file has one, with the views it
    /// serves.
    #[cfg(feature = "serve")]
    pub serve: Option<Served>,
    /// The file as read, to point errors found later at their lines.
    source: FileText,
}

/// What a pipeline's `serve:` section serves.
#[cfg(feature = "serve")]
#[derive(Debug, Clone)]
pub struct Served {
    /// The section's settings.
    pub config: crate::serve::ServeConfig,
    /// The views: `kv` sinks' names, and their stores' paths.
    pub views: std::collections::BTreeMap<String, PathBuf>,
    /// The search indexes: `search` sinks' names, and their paths.
    pub indexes: std::collections::BTreeMap<String, PathBuf>,
}

/// A pipeline file's name, text, and parsed document.
#[derive(Debug)]
struct FileText {
    file: String,
    text: String,
    interpolated: String,
    document: Document,
}

/// Where a pipeline's rejected records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterOutput {
    /// The file's `dead_letter` section: a sink of this type.
    Configured {
        /// The sink's type.
        type_name: String,
    },
    /// No `dead_letter` section: JSON lines files in this directory (the
    /// state directory's `dead_letters`), so that nothing is lost.
    Default {
        /// The directory.
        path: PathBuf,
    },
}

impl std::fmt::Display for DeadLetterOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterOutput::Configured { type_name } => {
                write!(f, "the `dead_letter` sink ({type_name})")
            }
            DeadLetterOutput::Default { path } => write!(f, "{}", path.display()),
        }
    }
}

impl LoadedPipeline {
    /// Reads and checks the pipeline file at `path`, with `${VAR}` taken
    /// from the process environment. Checks everything that needs no
    /// network.
    pub fn load(path: &Path, registry: &Registry) -> Result<LoadedPipeline, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read pipeline file `{file}`: {e}")))?;
        let env: HashMap<String, String> = std::env::vars().collect();
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse_in(&file, base, &text, &env, registry)
    }

    /// Checks pipeline file text; `file` names it in errors. Relative
    /// paths stay relative to the working directory.
    pub fn parse(
        file: &str,
        text: &str,
        env: &HashMap<String, String>,
        registry: &Registry,
    ) -> Result<LoadedPipeline, ConfigError> {
        Self::parse_in(file, Path::new(""), text, env, registry)
    }

    /// Checks pipeline file text, resolving relative paths from `base`.
    fn parse_in(
        file: &str,
        base: &Path,
        text: &str,
        env: &HashMap<String, String>,
        registry: &Registry,
    ) -> Result<LoadedPipeline, ConfigError> {
        let interpolated = interpolate(text, env).map_err(|e| e.in_file(file, text))?;
        let document = Document::parse(&interpolated).map_err(|e| e.in_file(file, text))?;
        let state_dir = base.join(".flumen").join(pipeline_name(file));
        let parser = FileParser {
            file,
            text,
            interpolated: &interpolated,
            document: &document,
            base,
        };
        let mut components = parser.components()?;
        parser.resolve_paths(&mut components, registry);
        let checkpoint = parser.checkpoint(&state_dir)?;
        let key_groups = checkpoint.as_ref().map(|c| c.max_parallelism);
        let (pipeline, dead_letters) =
            parser.build(&components, registry, &state_dir, key_groups)?;
        #[cfg(feature = "serve")]
        let serve = parser.serve(&components)?;
        Ok(LoadedPipeline {
            components,
            pipeline,
            checkpoint,
            state_dir,
            dead_letters,
            #[cfg(feature = "serve")]
            serve,
            source: FileText {
                file: file.to_string(),
                text: text.to_string(),
                interpolated,
                document,
            },
        })
    }

    /// An error about the setting at `path` (`sources.tweets.schema`),
    /// pointing at where the file sets it.
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let parser = FileParser {
            file: &self.source.file,
            text: &self.source.text,
            interpolated: &self.source.interpolated,
            document: &self.source.document,
            base: Path::new(""),
        };
        parser.error(path, Target::Value, message)
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Where an error points: at a key, or at the value under it.
#[derive(Clone, Copy)]
enum Target {
    Key,
    Value,
}

struct FileParser<'a> {
    file: &'a str,
    text: &'a str,
    interpolated: &'a str,
    document: &'a Document,
    /// Relative paths are resolved from here: the file's directory.
    base: &'a Path,
}

/// A pipeline's name: its file's name without the extension.
fn pipeline_name(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map_or_else(|| "pipeline".into(), |s| s.to_string_lossy().into_owned())
}

impl FileParser<'_> {
    fn pipeline_name(&self) -> String {
        pipeline_name(self.file)
    }

    /// Attaches the file, the position of `path` and the quoted line.
    fn locate(&self, error: ConfigError, target: Target) -> ConfigError {
        let position = error.path.as_deref().and_then(|path| match target {
            Target::Key => self.document.position_of_key(path),
            Target::Value => self.document.position_of_value(path),
        });
        let error = error.at_position(position);
        // Quote the line only if interpolation left it as written: a
        // substituted value may be a secret, and would shift columns.
        let line = position.map(|p| p.line as usize - 1);
        let unchanged =
            line.is_some_and(|l| self.text.lines().nth(l) == self.interpolated.lines().nth(l));
        if unchanged {
            error.in_file(self.file, self.text)
        } else {
            error.in_file(self.file, "")
        }
    }

    fn error(
        &self,
        path: impl Into<String>,
        target: Target,
        message: impl Into<String>,
    ) -> ConfigError {
        self.locate(ConfigError::new(message).at(path), target)
    }

    /// The `checkpoint` section, its store resolved.
    fn checkpoint(&self, state_dir: &Path) -> Result<Option<CheckpointConfig>, ConfigError> {
        let Some(value) = self.document.value.get("checkpoint") else {
            return Ok(None);
        };
        let value = match value {
            // `checkpoint:` alone: every default.
            Value::Null => Value::Object(Default::default()),
            other => other.clone(),
        };
        let mut value = value;
        KnownNames::of::<CheckpointConfig>().resolve_paths(&mut value, self.base);
        let mut config: CheckpointConfig = self.typed("checkpoint", &value)?;
        if config.store.is_none() {
            let default = state_dir.join("checkpoints");
            config.store = Some(default.to_string_lossy().into_owned());
        }
        if config.keep == 0 {
            return Err(self.error("checkpoint.keep", Target::Value, "must be at least 1"));
        }
        if config.interval.is_zero() {
            return Err(self.error(
                "checkpoint.interval",
                Target::Value,
                "must be more than zero",
            ));
        }
        if !(1..=MAX_KEY_GROUPS).contains(&config.max_parallelism) {
            return Err(self.error(
                "checkpoint.max_parallelism",
                Target::Value,
                format!("must be from 1 to {MAX_KEY_GROUPS}"),
            ));
        }
        Ok(Some(config))
    }

    /// The `serve:` section, and the views it serves: those it names, or
    /// every `kv` sink with a `path`.
    #[cfg(feature = "serve")]
    fn serve(&self, components: &[Component]) -> Result<Option<Served>, ConfigError> {
        use crate::serve::ServeConfig;
        let Some(value) = self.document.value.get("serve") else {
            return Ok(None);
        };
        let mut value = value.clone();
        KnownNames::of::<ServeConfig>().resolve_paths(&mut value, self.base);
        let config: ServeConfig = self.typed("serve", &value)?;
        let paths = |type_name: &str| -> std::collections::BTreeMap<String, PathBuf> {
            components
                .iter()
                .filter(|c| c.section == Section::Sinks && c.type_name == type_name)
                .filter_map(|c| {
                    let path = c.settings.get("path")?.as_str()?;
                    Some((c.name.clone(), PathBuf::from(path)))
                })
                .collect()
        };
        let embedded = paths("kv");
        let indexes = paths("search");
        // With no view or index, the server still serves the console.
        let views = match &config.views {
            None => embedded,
            Some(names) => {
                let mut views = std::collections::BTreeMap::new();
                for (i, name) in names.iter().enumerate() {
                    let Some(path) = embedded.get(name) else {
                        let served: Vec<&str> = embedded.keys().map(String::as_str).collect();
                        return Err(self
                            .error(
                                format!("serve.views[{i}]"),
                                Target::Value,
                                format!(
                                    "`{name}` is not a `kv` sink with a `path`; those are: {}",
                                    if served.is_empty() {
                                        "none".into()
                                    } else {
                                        served.join(", ")
                                    }
                                ),
                            )
                            .maybe_help(did_you_mean(name, served.iter().copied())));
                    };
                    views.insert(name.clone(), path.clone());
                }
                views
            }
        };
        Ok(Some(Served {
            config,
            views,
            indexes,
        }))
    }

    fn components(&self) -> Result<Vec<Component>, ConfigError> {
        let root = match &self.document.value {
            Value::Object(root) => root,
            Value::Null => {
                return Err(self.error(
                    "",
                    Target::Key,
                    "the pipeline file is empty; it needs `sources:` and `sinks:`",
                ));
            }
            _ => {
                return Err(self.error(
                    "",
                    Target::Value,
                    "expected a mapping with `sources:`, `transforms:` and `sinks:`",
                ));
            }
        };
        let mut sections: Vec<&str> = Section::ALL.iter().map(|s| s.key()).collect();
        sections.push("checkpoint");
        sections.push("dead_letter");
        #[cfg(feature = "serve")]
        sections.push("serve");
        for key in root.keys() {
            if !sections.contains(&key.as_str()) {
                return Err(self
                    .error(
                        key.clone(),
                        Target::Key,
                        format!(
                            "unknown section `{key}`; expected one of: {}",
                            sections.join(", ")
                        ),
                    )
                    .maybe_help(did_you_mean(key, sections.iter().copied())));
            }
        }

        let mut components: Vec<Component> = Vec::new();
        for section in Section::ALL {
            let entries = match root.get(section.key()) {
                None | Some(Value::Null) => continue,
                Some(Value::Object(entries)) => entries,
                Some(_) => {
                    return Err(self.error(
                        section.key(),
                        Target::Value,
                        format!(
                            "expected a mapping from {} names to their settings",
                            section.singular()
                        ),
                    ));
                }
            };
            for (name, value) in entries {
                if let Some(other) = components.iter().find(|c| c.name == *name) {
                    return Err(self.error(
                        format!("{}.{name}", section.key()),
                        Target::Key,
                        format!(
                            "`{name}` is already the name of a {}; names must be unique",
                            other.section.singular()
                        ),
                    ));
                }
                components.push(self.component(section, name, value)?);
            }
        }
        if !components.iter().any(|c| c.section == Section::Sinks) {
            return Err(self.error(
                "",
                Target::Key,
                "the pipeline has no sinks; add one under `sinks:`",
            ));
        }
        Ok(components)
    }

    fn component(
        &self,
        section: Section,
        name: &str,
        value: &Value,
    ) -> Result<Component, ConfigError> {
        let path = format!("{}.{name}", section.key());
        let Value::Object(map) = value else {
            return Err(self.error(
                &path,
                Target::Value,
                format!(
                    "expected the {}'s settings: a mapping with `type`",
                    section.singular()
                ),
            ));
        };
        let mut settings = map.clone();
        let type_name = match settings.remove("type") {
            Some(Value::String(type_name)) => type_name,
            Some(_) => {
                return Err(self.error(
                    format!("{path}.type"),
                    Target::Value,
                    "expected the name of a component type",
                ));
            }
            None => {
                return Err(self.error(
                    &path,
                    Target::Key,
                    format!(
                        "missing `type`: which kind of {} this is",
                        section.singular()
                    ),
                ));
            }
        };

        // The keys every component has, checked as one struct; the rest
        // are the component's own.
        let mut common = serde_json::Map::new();
        for key in CommonKeys::all_keys() {
            if let Some(value) = settings.remove(key) {
                if let Some(why) = CommonKeys::misplaced(section, key) {
                    return Err(self.error(format!("{path}.{key}"), Target::Key, why));
                }
                common.insert(key.clone(), value);
            }
        }
        if section != Section::Sources && !common.contains_key("inputs") {
            let misspelled = settings
                .keys()
                .find(|k| did_you_mean(k, ["inputs"]).is_some());
            return Err(self
                .error(
                    &path,
                    Target::Key,
                    format!(
                        "missing `inputs`: the names of the components this {} reads",
                        section.singular()
                    ),
                )
                .maybe_help(
                    misspelled.map(|k| format!("did you mean `inputs` rather than `{k}`?")),
                ));
        }
        let keys: CommonKeys = self.typed(&path, &Value::Object(common))?;
        if section != Section::Sources && keys.inputs.is_empty() {
            return Err(self.error(format!("{path}.inputs"), Target::Value, "lists no inputs"));
        }
        if keys.parallelism == 0 {
            return Err(self.error(
                format!("{path}.parallelism"),
                Target::Value,
                "must be at least 1",
            ));
        }
        Ok(Component {
            section,
            name: name.to_string(),
            type_name,
            inputs: keys.inputs,
            parallelism: keys.parallelism,
            partitioning: keys.partitioning.map(Partitioning::from),
            repartition: keys.repartition,
            event_time: keys.event_time,
            on_error: keys.on_error,
            settings: Value::Object(settings),
        })
    }

    /// Deserializes settings at `path` as `T`, first naming any key or
    /// name `T` does not have.
    fn typed<T: serde::de::DeserializeOwned + JsonSchema>(
        &self,
        path: &str,
        value: &Value,
    ) -> Result<T, ConfigError> {
        self.check_names(&KnownNames::of::<T>(), value, path, &[])?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let full = join_path(path, &e.path().to_string());
            self.error(full, Target::Value, e.into_inner().to_string())
        })
    }

    /// The first key or name in `value` (at `path`) that `known` does not
    /// have, with the closest it does; `extra_keys` are also allowed at
    /// the top.
    fn check_names(
        &self,
        known: &KnownNames,
        value: &Value,
        path: &str,
        extra_keys: &[&str],
    ) -> Result<(), ConfigError> {
        match known.first_unknown(value, extra_keys) {
            None => Ok(()),
            Some(unknown) => {
                let target = if unknown.is_key {
                    Target::Key
                } else {
                    Target::Value
                };
                Err(self
                    .error(join_path(path, &unknown.path), target, unknown.message)
                    .maybe_help(unknown.help))
            }
        }
    }

    /// Resolves the relative paths in each component's settings from the
    /// file's directory: the settings' schema marks which strings are
    /// paths.
    fn resolve_paths(&self, components: &mut [Component], registry: &Registry) {
        for component in components {
            if let Some(component_type) = registry.get(component.section, &component.type_name) {
                let known = KnownNames::from_generator(|g| component_type.schema(g).to_value());
                known.resolve_paths(&mut component.settings, self.base);
            }
        }
    }

    fn build(
        &self,
        components: &[Component],
        registry: &Registry,
        state_dir: &Path,
        key_groups: Option<usize>,
    ) -> Result<(Pipeline, DeadLetterOutput), ConfigError> {
        let readable: BTreeSet<&str> = components
            .iter()
            .filter(|c| c.section != Section::Sinks)
            .map(|c| c.name.as_str())
            .collect();
        let mut graph = GraphBuilder::new();
        if let Some(groups) = key_groups {
            graph.max_parallelism(groups);
        }
        for component in components {
            let path = component.path();
            let section = component.section;
            let Some(component_type) = registry.get(section, &component.type_name) else {
                return Err(self.unknown_type(component, registry));
            };
            for (i, input) in component.inputs.iter().enumerate() {
                let node = input
                    .split_once('.')
                    .map_or(input.as_str(), |(node, _)| node);
                if readable.contains(node) {
                    continue;
                }
                let input_path = format!("{path}.inputs[{i}]");
                let message = if components.iter().any(|c| c.name == node) {
                    format!("input `{input}` is a sink; sinks have no outputs")
                } else {
                    let defined: Vec<&str> = readable.iter().copied().collect();
                    format!(
                        "input `{input}` is not defined; defined: {}",
                        defined.join(", ")
                    )
                };
                return Err(self
                    .error(input_path, Target::Value, message)
                    .maybe_help(did_you_mean(node, readable.iter().copied())));
            }
            let known = KnownNames::from_generator(|g| component_type.schema(g).to_value());
            self.check_names(&known, &component.settings, &path, &common_keys(section))?;
            let catalog = InPipeline {
                registry,
                name: &self.pipeline_name(),
                component: &component.name,
            };
            let node = component_type
                .build(&component.settings, &catalog)
                .map_err(|e| match e {
                    BuildError::Invalid {
                        path: inner,
                        message,
                    } => self.error(join_path(&path, &inner), Target::Value, message),
                    // A setting of this component: the path is inside it.
                    BuildError::Rejected(error) => match error.setting() {
                        // About the component as a whole: name it.
                        Some(("", message)) => self.error(
                            &path,
                            Target::Value,
                            format!("`{}` {message}", component.name),
                        ),
                        Some((inner, message)) => {
                            self.error(join_path(&path, inner), Target::Value, message)
                        }
                        None => self.core_error(components, error),
                    },
                })?;
            let repartition = match &component.repartition {
                Some(config) => Some(self.repartition(component, config, components)?),
                None => None,
            };
            let inputs = component.inputs.iter().map(|from| Input {
                from: from.clone(),
                partitioning: component.partitioning.clone(),
                repartition: repartition.clone(),
            });
            let mut added = graph
                .node(&component.name, node, inputs.collect())
                .parallelism(component.parallelism)
                .on_error(component.on_error)
                .component_type(&component.type_name);
            if let Some(event_time) = &component.event_time {
                added = added.event_time(event_time.clone());
            }
            let _ = added;
        }
        let (sink, output) = self.dead_letter_sink(registry, state_dir)?;
        graph.dead_letter_sink_shared(sink);
        let pipeline = graph.build().map_err(|e| self.core_error(components, e))?;
        Ok((pipeline, output))
    }

    /// What carries `component`'s repartitioned inputs: a topic in the
    /// cluster of the pipeline's task source.
    fn repartition(
        &self,
        component: &Component,
        config: &RepartitionConfig,
        components: &[Component],
    ) -> Result<Arc<dyn flumen_core::component::Repartition>, ConfigError> {
        let path = format!("{}.repartition", component.path());
        let RepartitionConfig::Kafka(kafka) = config;
        if kafka.partitions == 0 {
            return Err(self.error(
                format!("{path}.kafka.partitions"),
                Target::Value,
                "must be at least 1",
            ));
        }
        let task_source = components.iter().find(|c| {
            c.section == Section::Sources
                && c.type_name == "kafka"
                && c.settings.get("tasks") == Some(&Value::Bool(true))
        });
        let Some(task_source) = task_source else {
            return Err(self.error(
                &path,
                Target::Key,
                "needs the pipeline run as tasks: a `kafka` source with `tasks: true`, \
                 in whose cluster and group the repartition topic is written and read",
            ));
        };
        #[cfg(feature = "kafka")]
        {
            let source: flumen_sources::kafka::KafkaSourceConfig =
                self.typed(&task_source.path(), &task_source.settings)?;
            let mut carrier =
                crate::repartition::KafkaRepartition::new(&source, &kafka.topic, kafka.partitions);
            if let Some(replication) = kafka.replication {
                carrier = carrier.with_replication(replication as i32);
            }
            Ok(Arc::new(carrier))
        }
        #[cfg(not(feature = "kafka"))]
        {
            let _ = task_source;
            Err(self.error(
                &path,
                Target::Key,
                "needs Kafka, which this build of flumen leaves out (feature `kafka`)",
            ))
        }
    }

    /// The sink that receives every component's rejected records: the
    /// `dead_letter` section's (its `type` and settings), or JSON lines
    /// files in the state directory.
    fn dead_letter_sink(
        &self,
        registry: &Registry,
        state_dir: &Path,
    ) -> Result<
        (
            Arc<dyn flumen_core::component::SinkFactory>,
            DeadLetterOutput,
        ),
        ConfigError,
    > {
        let Some(value) = self.document.value.get("dead_letter") else {
            let path = state_dir.join("dead_letters");
            let sink = FileSinkConfig::new(&path)
                .build()
                .map_err(|e| ConfigError::new(e.to_string()))?;
            return Ok((Arc::new(sink), DeadLetterOutput::Default { path }));
        };
        let Value::Object(map) = value else {
            return Err(self.error(
                "dead_letter",
                Target::Value,
                "expected a sink's settings: a mapping with `type`",
            ));
        };
        let mut settings = map.clone();
        let Some(Value::String(type_name)) = settings.remove("type") else {
            return Err(self.error(
                "dead_letter",
                Target::Key,
                "the dead-letter sink needs a `type` (e.g. `file`)",
            ));
        };
        let Some(sink_type) = registry.get(Section::Sinks, &type_name) else {
            let names: Vec<&str> = registry
                .types(Section::Sinks)
                .iter()
                .map(|t| t.name)
                .collect();
            return Err(self
                .error(
                    "dead_letter.type",
                    Target::Value,
                    format!(
                        "unknown sink type `{type_name}`; known: {}",
                        names.join(", ")
                    ),
                )
                .maybe_help(did_you_mean(&type_name, names.iter().copied())));
        };
        let mut settings = Value::Object(settings);
        let known = KnownNames::from_generator(|g| sink_type.schema(g).to_value());
        self.check_names(&known, &settings, "dead_letter", &["type"])?;
        known.resolve_paths(&mut settings, self.base);
        let output = DeadLetterOutput::Configured { type_name };
        match sink_type.build(&settings, registry) {
            Ok(NodeKind::Sink(sink)) => Ok((sink, output)),
            Ok(_) => Err(self.error("dead_letter.type", Target::Value, "is not a sink type")),
            Err(BuildError::Invalid { path, message }) => {
                Err(self.error(join_path("dead_letter", &path), Target::Value, message))
            }
            Err(BuildError::Rejected(error)) => {
                Err(self.error("dead_letter", Target::Value, error.to_string()))
            }
        }
    }

    fn unknown_type(&self, component: &Component, registry: &Registry) -> ConfigError {
        let section = component.section;
        let names: Vec<&str> = registry.types(section).iter().map(|t| t.name).collect();
        let elsewhere = Section::ALL
            .into_iter()
            .find(|s| *s != section && registry.get(*s, &component.type_name).is_some());
        let help = match elsewhere {
            Some(other) => Some(format!(
                "`{}` is a {} type; put it under `{}:`",
                component.type_name,
                other.singular(),
                other.key()
            )),
            None => did_you_mean(&component.type_name, names.iter().copied()),
        };
        self.error(
            format!("{}.type", component.path()),
            Target::Value,
            format!(
                "unknown {} type `{}`; {} types: {}",
                section.singular(),
                component.type_name,
                section.singular(),
                names.join(", ")
            ),
        )
        .maybe_help(help)
    }

    /// Points an error from building or checking the graph at the
    /// component (and key) it is about.
    fn core_error(&self, components: &[Component], error: flumen_core::Error) -> ConfigError {
        use flumen_core::Error;
        if let Some((path, message)) = error.setting() {
            return self.error(path, Target::Value, message);
        }
        match error {
            Error::Graph { node, key, message } => {
                let base = components
                    .iter()
                    .find(|c| c.name == node)
                    .map_or(node.clone(), Component::path);
                let help = Error::missing_column(&message)
                    .and_then(|column| undeclared(components, &node, column));
                match key {
                    Some(key) => self
                        .error(format!("{base}.{key}"), Target::Value, message)
                        .maybe_help(help),
                    // About the component as a whole: name it.
                    None => self
                        .error(base, Target::Key, format!("`{node}` {message}"))
                        .maybe_help(help),
                }
            }
            other => ConfigError::new(other.to_string()).in_file(self.file, ""),
        }
    }
}

/// If `column` is missing from what `node` reads because a source
/// upstream declares a `schema` without it (a source reads only the
/// columns it declares), says so, naming the source.
fn undeclared(components: &[Component], node: &str, column: &str) -> Option<String> {
    let mut pending = vec![node];
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name) {
            continue;
        }
        let component = components.iter().find(|c| c.name == name)?;
        if component.section == Section::Sources {
            let declared = component.settings.get("schema").and_then(Value::as_object);
            if let Some(declared) = declared.filter(|d| !d.contains_key(column)) {
                let names: Vec<&str> = declared.keys().map(String::as_str).collect();
                return Some(format!(
                    "source `{name}` reads only the columns its `schema` declares ({}); add \
                     `{column}` to `{}.schema` to read it",
                    names.join(", "),
                    component.path()
                ));
            }
        }
        for input in &component.inputs {
            pending.push(
                input
                    .split_once('.')
                    .map_or(input.as_str(), |(node, _)| node),
            );
        }
    }
    None
}

/// `path` and a path inside it (`.` for itself, as serde_path_to_error
/// writes the top).
fn join_path(path: &str, inner: &str) -> String {
    match inner {
        "." | "" => path.to_string(),
        _ if path.is_empty() => inner.to_string(),
        _ if inner.starts_with('[') => format!("{path}{inner}"),
        _ => format!("{path}.{inner}"),
    }
}
