//! Finding the key or name a file gives that its settings do not have,
//! from the settings' JSON Schema: the keys an object takes and the names
//! a choice allows are data there, so the closest one can be suggested.

use std::path::Path;

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use super::error::did_you_mean;

/// A key or name the schema does not know.
#[derive(Debug, PartialEq)]
pub(crate) struct Unknown {
    /// Path inside the settings, e.g. `csv.hedaer`.
    pub path: String,
    /// A key (true), or a value (false).
    pub is_key: bool,
    /// What was wrong and what is allowed.
    pub message: String,
    /// The closest allowed one, if close enough to be a typo.
    pub help: Option<String>,
}

/// A schema with the definitions its `$ref`s point into.
pub(crate) struct KnownNames {
    schema: Value,
    definitions: Map<String, Value>,
}

impl KnownNames {
    /// The names `T` takes.
    pub fn of<T: JsonSchema>() -> KnownNames {
        KnownNames::from_generator(|generator| T::json_schema(generator).to_value())
    }

    /// The names the schema that `schema` adds to a generator takes.
    pub fn from_generator(schema: impl FnOnce(&mut SchemaGenerator) -> Value) -> KnownNames {
        let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let schema = schema(&mut generator);
        KnownNames {
            schema,
            definitions: generator.take_definitions(true),
        }
    }

    /// The first key or name in `value` that the schema does not know;
    /// at the top level, a key may also be one of `extra_keys`.
    pub fn first_unknown(&self, value: &Value, extra_keys: &[&str]) -> Option<Unknown> {
        self.find(&self.schema, value, "", extra_keys)
    }

    /// Rewrites every relative path in `value` (a string whose schema has
    /// `format: path`) to lie under `base`. URLs (`s3://…`) and absolute
    /// paths stay as they are.
    pub fn resolve_paths(&self, value: &mut Value, base: &Path) {
        self.resolve_paths_in(&self.schema, value, base);
    }

    fn resolve_paths_in(&self, schema: &Value, value: &mut Value, base: &Path) {
        let schema = self.resolve(schema);
        match value {
            Value::String(path) if is_path(schema) => {
                if let Some(resolved) = under(base, path) {
                    *path = resolved;
                }
            }
            Value::Object(object) => {
                for variant in self.object_variants(schema) {
                    let Some(properties) = variant.get("properties") else {
                        continue;
                    };
                    for (key, value) in object.iter_mut() {
                        if let Some(property) = properties.get(key) {
                            self.resolve_paths_in(property, value, base);
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for item in items {
                        self.resolve_paths_in(item_schema, item, base);
                    }
                }
            }
            _ => {}
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .rsplit('/')
                .next()
                .and_then(|name| self.definitions.get(name))
                .map_or(schema, |target| self.resolve(target)),
            None => schema,
        }
    }

    fn find(&self, schema: &Value, value: &Value, path: &str, extra: &[&str]) -> Option<Unknown> {
        let schema = self.resolve(schema);
        match value {
            Value::Object(object) => self.find_in_object(schema, object, path, extra),
            Value::Array(items) => {
                let item_schema = schema.get("items")?;
                items.iter().enumerate().find_map(|(i, item)| {
                    self.find(item_schema, item, &format!("{path}[{i}]"), &[])
                })
            }
            Value::String(name) => {
                let names = self.names(schema)?;
                if names.iter().any(|n| n == name) {
                    return None;
                }
                Some(Unknown {
                    path: path.to_string(),
                    is_key: false,
                    message: format!("unknown variant `{name}`, expected {}", one_of(&names)),
                    help: did_you_mean(name, names.iter().map(String::as_str)),
                })
            }
            _ => None,
        }
    }

    fn find_in_object(
        &self,
        schema: &Value,
        object: &Map<String, Value>,
        path: &str,
        extra: &[&str],
    ) -> Option<Unknown> {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            let objects = self.object_variants(schema);
            return match objects.as_slice() {
                [] => None,
                // An optional object.
                [only] => self.find_in_object(only, object, path, extra),
                // A choice of objects (`{ hash: [...] }` or `{ tumble: 10s }`):
                // each key names one.
                several => {
                    for (key, value) in object {
                        let chosen = several.iter().find_map(|v| v["properties"].get(key));
                        match chosen {
                            Some(property) => {
                                let found = self.find(property, value, &join(path, key), &[]);
                                if found.is_some() {
                                    return found;
                                }
                            }
                            None => {
                                let keys: Vec<String> = several
                                    .iter()
                                    .filter_map(|v| v["properties"].as_object())
                                    .flat_map(|p| p.keys().cloned())
                                    .collect();
                                return Some(Unknown {
                                    path: join(path, key),
                                    is_key: true,
                                    message: format!(
                                        "unknown variant `{key}`, expected {}",
                                        one_of(&keys)
                                    ),
                                    help: did_you_mean(key, keys.iter().map(String::as_str)),
                                });
                            }
                        }
                    }
                    None
                }
            };
        };
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (key, value) in object {
            match properties.get(key) {
                Some(property) => {
                    if let Some(unknown) = self.find(property, value, &join(path, key), &[]) {
                        return Some(unknown);
                    }
                }
                None if closed && !extra.contains(&key.as_str()) => {
                    let known: Vec<String> = properties.keys().cloned().collect();
                    let candidates = known
                        .iter()
                        .map(String::as_str)
                        .chain(extra.iter().copied());
                    return Some(Unknown {
                        path: join(path, key),
                        is_key: true,
                        message: format!("unknown field `{key}`, expected {}", one_of(&known)),
                        help: did_you_mean(key, candidates.filter(|c| *c != "type")),
                    });
                }
                None => {}
            }
        }
        None
    }

    /// The names a string may be, if the schema allows only some.
    fn names(&self, schema: &Value) -> Option<Vec<String>> {
        if let Some(names) = schema.get("enum").and_then(Value::as_array) {
            return Some(
                names
                    .iter()
                    .filter_map(|n| Some(n.as_str()?.to_string()))
                    .collect(),
            );
        }
        if let Some(name) = schema.get("const").and_then(Value::as_str) {
            return Some(vec![name.to_string()]);
        }
        let mut names = Vec::new();
        for variant in self.variants(schema)? {
            let variant = self.resolve(variant);
            match self.names(variant) {
                Some(some) => names.extend(some),
                // A variant that takes any string (or is not a string):
                // only a variant that takes strings at all matters.
                None if accepts_strings(variant) => return None,
                None => {}
            }
        }
        (!names.is_empty()).then_some(names)
    }

    /// The variants of a choice that are objects with keys, at any depth.
    fn object_variants<'a>(&'a self, schema: &'a Value) -> Vec<&'a Value> {
        let schema = self.resolve(schema);
        if schema.get("properties").is_some() {
            return vec![schema];
        }
        self.variants(schema)
            .into_iter()
            .flatten()
            .flat_map(|variant| self.object_variants(variant))
            .collect()
    }

    fn variants<'a>(&self, schema: &'a Value) -> Option<&'a Vec<Value>> {
        ["oneOf", "anyOf"]
            .iter()
            .find_map(|key| schema.get(*key).and_then(Value::as_array))
    }
}

/// Whether the schema marks a string as a file system path (or a URL).
fn is_path(schema: &Value) -> bool {
    schema.get("format").and_then(Value::as_str) == Some("path")
}

/// `path` under `base`, if it is a relative file system path (not a URL,
/// not absolute, not empty).
fn under(base: &Path, path: &str) -> Option<String> {
    let has_scheme = path.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if path.is_empty() || has_scheme || Path::new(path).is_absolute() {
        return None;
    }
    if base.as_os_str().is_empty() {
        return None;
    }
    Some(folded(&base.join(path)).to_string_lossy().into_owned())
}

/// `path` with `.` and `name/..` folded away, as a shell's `cd` reads them
/// (`examples/pub_sub/../../out` is `examples/out`): object stores, and so
/// `file://` tables, take no `..` in a path. A leading `..` stays.
fn folded(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut folded = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(folded.components().next_back(), Some(Component::Normal(_))) =>
            {
                folded.pop();
            }
            other => folded.push(other),
        }
    }
    match folded.as_os_str().is_empty() {
        true => std::path::PathBuf::from("."),
        false => folded,
    }
}

/// Whether a schema without a list of names takes strings.
fn accepts_strings(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(kind)) => kind == "string",
        Some(Value::Array(kinds)) => kinds.iter().any(|k| k == "string"),
        // No type: anything.
        None => !(schema.get("properties").is_some() || schema.get("items").is_some()),
        _ => false,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn one_of(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Files {
        #[schemars(extend("format" = "path"))]
        input: String,
        #[schemars(extend("format" = "path"))]
        output: Option<std::path::PathBuf>,
        name: String,
        tls: Option<Tls>,
        #[schemars(extend("format" = "path"))]
        dir: String,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Tls {
        #[schemars(extend("format" = "path"))]
        cert: std::path::PathBuf,
    }

    #[test]
    fn relative_paths_are_resolved_from_the_base_and_nothing_else_is() {
        let known = KnownNames::of::<Files>();
        let mut settings = json!({
            "input": "data/in.jsonl",
            "output": "s3://bucket/out",
            "name": "data/not-a-path",
            "tls": { "cert": "../certs/c.pem" },
            "dir": "./out/../../../state",
        });
        known.resolve_paths(&mut settings, Path::new("pipelines"));
        assert_eq!(
            settings,
            json!({
                "input": "pipelines/data/in.jsonl",
                "output": "s3://bucket/out",
                "name": "data/not-a-path",
                "tls": { "cert": "certs/c.pem" },
                "dir": "../state",
            })
        );
        let mut absolute = json!({ "input": "/data/in.jsonl", "name": "x" });
        known.resolve_paths(&mut absolute, Path::new("pipelines"));
        assert_eq!(absolute["input"], "/data/in.jsonl");
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        format: Format,
        csv: Option<Csv>,
        columns: Vec<Format>,
        partitioning: Option<Partitioning>,
        free: Option<String>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Format {
        Json,
        Csv,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Csv {
        header: bool,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Partitioning {
        Forward,
        Hash(Vec<String>),
    }

    fn unknown(value: Value) -> Option<Unknown> {
        KnownNames::of::<Settings>().first_unknown(&value, &["inputs"])
    }

    #[test]
    fn finds_unknown_keys_and_names_at_any_depth() {
        let key = unknown(json!({ "format": "json", "formt": "csv" })).unwrap();
        assert_eq!((key.path.as_str(), key.is_key), ("formt", true));
        assert!(
            key.message
                .starts_with("unknown field `formt`, expected one of `format`")
        );
        assert_eq!(key.help.as_deref(), Some("did you mean `format`?"));

        let name = unknown(json!({ "format": "jsn" })).unwrap();
        assert_eq!(
            name.message,
            "unknown variant `jsn`, expected one of `json`, `csv`"
        );
        assert_eq!(name.help.as_deref(), Some("did you mean `json`?"));

        let nested = unknown(json!({ "csv": { "hedaer": true } })).unwrap();
        assert_eq!(nested.path, "csv.hedaer");
        assert_eq!(nested.help.as_deref(), Some("did you mean `header`?"));

        let listed = unknown(json!({ "columns": ["json", "csvv"] })).unwrap();
        assert_eq!(listed.path, "columns[1]");
        assert_eq!(listed.help.as_deref(), Some("did you mean `csv`?"));

        let variant = unknown(json!({ "partitioning": { "hsh": ["a"] } })).unwrap();
        assert_eq!(variant.path, "partitioning.hsh");
        assert_eq!(variant.help.as_deref(), Some("did you mean `hash`?"));
        assert!(unknown(json!({ "partitioning": "forwad" })).is_some());
    }

    #[test]
    fn known_keys_extra_keys_and_free_text_pass() {
        assert_eq!(
            unknown(json!({ "format": "csv", "inputs": ["a"], "free": "x" })),
            None
        );
        assert_eq!(unknown(json!({ "partitioning": { "hash": ["a"] } })), None);
        assert_eq!(unknown(json!({ "partitioning": "forward" })), None);
        // A wrong type is serde's to report.
        assert_eq!(unknown(json!({ "csv": 3 })), None);
    }
}
