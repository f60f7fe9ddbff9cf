//! The JSON Schema of pipeline files, and the configuration reference
//! rendered from it. Both come from the config structs' doc comments.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::pipeline::CommonKeys;
use super::registry::{Registry, Section};

/// The schemas of the keys every component of `section` has, derived
/// from [`CommonKeys`].
fn common_properties(section: Section, generator: &mut SchemaGenerator) -> Map<String, Value> {
    let schema = generator.subschema_for::<CommonKeys>();
    let definition = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.rsplit('/').next())
        .and_then(|name| generator.definitions().get(name))
        .cloned()
        .unwrap_or_else(|| schema.to_value());
    let properties = definition["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    CommonKeys::keys(section)
        .iter()
        .filter_map(|key| Some((key.to_string(), properties.get(*key)?.clone())))
        .collect()
}

/// The JSON Schema of a pipeline file with the types in `registry`, as an
/// editor checks the file as written: wherever a value may be a number,
/// a boolean or one of some names, it may also be `${VAR}` or
/// `${VAR:-default}`, substituted when the file is loaded.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut schema = settings_schema(registry);
    allow_environment(&mut schema);
    if let Some(definitions) = schema["$defs"].as_object_mut() {
        definitions.insert(
            ENVIRONMENT.into(),
            json!({
                "description": "A value from the environment: `${VAR}`, `${VAR:-default}` or `${VAR-default}`, substituted when the file is loaded.",
                "type": "string",
                "pattern": "\\$\\{[A-Za-z_][A-Za-z0-9_]*((:?-)[^}]*)?\\}"
            }),
        );
    }
    schema
}

/// The definition of a `${VAR}` value.
const ENVIRONMENT: &str = "Environment";

/// Lets every value that is not free text also be a `${VAR}`.
fn allow_environment(schema: &mut Value) {
    let Value::Object(object) = schema else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(allow_environment);
        }
        return;
    };
    for (key, child) in object.iter_mut() {
        // Property names and `required` lists are not schemas, but walking
        // them changes nothing: only objects with a `type` or `enum` are.
        if key != "const" {
            allow_environment(child);
        }
    }
    let not_text = match object.get("type") {
        Some(Value::String(kind)) => matches!(kind.as_str(), "integer" | "number" | "boolean"),
        Some(Value::Array(kinds)) => !kinds
            .iter()
            .any(|k| k == "string" || k == "object" || k == "array"),
        _ => false,
    };
    if not_text || object.contains_key("enum") {
        let original = Value::Object(std::mem::take(object));
        object.insert(
            "anyOf".into(),
            json!([original, { "$ref": format!("#/$defs/{ENVIRONMENT}") }]),
        );
    }
}

/// The schema of pipeline files' settings, without `${VAR}`s.
fn settings_schema(registry: &Registry) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut sections = Map::new();
    for section in Section::ALL {
        let mut variants = Vec::new();
        for component_type in registry.types(section) {
            let mut schema = component_type.schema(&mut generator).to_value();
            let object = schema
                .as_object_mut()
                .expect("component configs are structs");
            object.remove("$schema");
            object.remove("title");
            object.insert(
                "description".into(),
                Value::String(component_type.description.into()),
            );
            object.insert("additionalProperties".into(), Value::Bool(false));
            let properties = object
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("properties is an object");
            properties.insert("type".into(), json!({ "const": component_type.name }));
            properties.extend(common_properties(section, &mut generator));
            let required = object
                .entry("required")
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("required is an array");
            required.push("type".into());
            if section != Section::Sources {
                required.push("inputs".into());
            }
            variants.push(schema);
        }
        sections.insert(
            section.key().into(),
            json!({
                "description": format!("The pipeline's {}, by name.", section.key()),
                "type": "object",
                "additionalProperties": { "oneOf": variants }
            }),
        );
    }
    let mut checkpoint = generator
        .subschema_for::<flumen_core::checkpoint::CheckpointConfig>()
        .to_value();
    if let Some(object) = checkpoint.as_object_mut() {
        object.insert(
            "description".into(),
            "Periodic checkpoints, from which a run resumes after a crash.".into(),
        );
    }
    sections.insert("checkpoint".into(), checkpoint);
    #[cfg(feature = "serve")]
    {
        let mut serve = generator
            .subschema_for::<crate::serve::ServeConfig>()
            .to_value();
        if let Some(object) = serve.as_object_mut() {
            object.insert(
                "description".into(),
                "HTTP reads of the pipeline's embedded views while it runs.".into(),
            );
        }
        sections.insert("serve".into(), serve);
    }
    sections.insert(
        "dead_letter".into(),
        json!({
            "description": "The sink that receives every component's rejected records (with `rejected_at`, `component`, `error`, `record` and `position` columns): any sink type and its settings, without `inputs`. Default: JSON lines files in `.flumen/<pipeline>/dead_letters` beside the pipeline file.",
            "type": "object",
            "required": ["type"]
        }),
    );
    let definitions: Map<String, Value> = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Flumen pipeline",
        "description": "A Flumen pipeline file: sources, transforms and sinks, by name.",
        "type": "object",
        "properties": sections,
        "additionalProperties": false,
        "$defs": definitions
    })
}

/// The configuration reference in Markdown: every component type with its
/// keys, types, defaults and descriptions.
pub fn reference_markdown(registry: &Registry) -> String {
    let schema = settings_schema(registry);
    let definitions = schema["$defs"].as_object().cloned().unwrap_or_default();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration structs by `flumen config reference`; \
         the JSON Schema (`flumen config schema`) carries the same text.\n\n\
         Every component has a `type`. Transforms and sinks have `inputs`; any \
         component may set `parallelism` and `on_error` (`dead_letter`, the default, `drop` or \
         `fail`: what to do with a record it cannot handle); transforms and sinks may set \
         `partitioning`; sources may set `event_time`. See [pipeline files](pipeline-files.md).\n\n\
         ## Dead letters\n\n\
         The top-level `dead_letter` section is a sink's settings (its `type` and keys, no \
         `inputs`): it receives every record a component rejects, as rows of `rejected_at`, \
         `component`, `error`, `record` and `position`. Without one, they go to JSON lines \
         files in `.flumen/<pipeline>/dead_letters` beside the pipeline file. See \
         [dead letters](checkpoints.md#bad-records-and-the-dead-letter-sink).\n\n\
         ## Paths\n\n\
         A relative path in a pipeline file (an input, an output, a buffer directory, the \
         checkpoint store, a TLS or schema file) is resolved from the directory the file is \
         in, whichever directory `flumen` runs from.\n",
    );
    out.push_str(
        "\n## Column types\n\nA `schema` maps column names to these types (any column may \
         be null):\n\n| type | also written | holds |\n| --- | --- | --- |\n",
    );
    for (name, aliases, holds) in flumen_core::schema::TYPES {
        let aliases: Vec<String> = aliases
            .split(", ")
            .filter(|a| !a.is_empty())
            .map(|a| format!("`{a}`"))
            .collect();
        let name = match name.contains(' ') {
            true => name.to_string(),
            false => format!("`{name}`"),
        };
        out.push_str(&format!("| {name} | {} | {holds} |\n", aliases.join(", ")));
    }
    out.push_str(
        "\n## Checkpoints\n\nThe top-level `checkpoint` section turns checkpoints on. \
         See [checkpoints](checkpoints.md).\n\n| key | type | default | description |\n| --- | --- | --- | --- |\n",
    );
    let checkpoint = resolve(&schema["properties"]["checkpoint"], &definitions);
    if let Some(properties) = checkpoint["properties"].as_object() {
        for (key, property) in properties {
            push_rows(&mut out, key, property, false, &definitions);
        }
    }
    #[cfg(feature = "serve")]
    {
        out.push_str(
            "\n## Serving views\n\nThe top-level `serve` section answers HTTP reads of the \
             pipeline's embedded views while it runs. See [views](views.md#serving-views).\n\n\
             | key | type | default | description |\n| --- | --- | --- | --- |\n",
        );
        let serve = resolve(&schema["properties"]["serve"], &definitions);
        if let Some(properties) = serve["properties"].as_object() {
            for (key, property) in properties {
                push_rows(&mut out, key, property, false, &definitions);
            }
        }
    }
    for section in Section::ALL {
        out.push_str(&format!("\n## {}\n", capitalize(section.key())));
        for variant in schema["properties"][section.key()]["additionalProperties"]["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variant["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_default();
            out.push_str(&format!(
                "\n### `{name}` {}\n\n{}\n\n| key | type | default | description |\n| --- | --- | --- | --- |\n",
                section.singular(),
                variant["description"].as_str().unwrap_or_default()
            ));
            let required: Vec<&str> = variant["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let properties = variant["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut keys: Vec<&String> = properties.keys().filter(|k| *k != "type").collect();
            // Required keys first, the keys every component has last;
            // otherwise the order the config struct declares them in.
            keys.sort_by_key(|k| (!required.contains(&k.as_str()), common_rank(k)));
            for key in keys {
                let required = required.contains(&key.as_str());
                push_rows(&mut out, key, &properties[key], required, &definitions);
            }
        }
    }
    out
}

/// One table row for a key, and rows for the keys of a nested settings
/// object (`csv.header`, `event_time.column`).
fn push_rows(
    out: &mut String,
    key: &str,
    property: &Value,
    required: bool,
    definitions: &Map<String, Value>,
) {
    let resolved = resolve(property, definitions);
    let default = match property.get("default").or(resolved.get("default")) {
        _ if required => "required".to_string(),
        Some(Value::Null) | None => String::new(),
        // Settings whose keys are all unset by default: nothing to show.
        Some(Value::Object(keys))
            if !keys.is_empty()
                && keys
                    .values()
                    .all(|v| v.is_null() || v == &Value::Object(Map::new())) =>
        {
            String::new()
        }
        Some(value) => format!("`{value}`"),
    };
    let description = property
        .get("description")
        .or(resolved.get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace('\n', " ");
    out.push_str(&format!(
        "| `{key}` | {} | {default} | {description} |\n",
        type_name(property, definitions)
    ));
    if let Some(nested) = resolved.get("properties").and_then(Value::as_object) {
        let nested_required: Vec<&str> = resolved["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, schema) in nested {
            push_rows(
                out,
                &format!("{key}.{name}"),
                schema,
                nested_required.contains(&name.as_str()),
                definitions,
            );
        }
    }
}

fn common_rank(key: &str) -> u8 {
    match key {
        "inputs" => 0,
        "parallelism" | "partitioning" | "event_time" => 2,
        _ => 1,
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or(String::new(), |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// Follows a `$ref` (possibly inside `allOf`/`anyOf` for nullable values).
fn resolve(schema: &Value, definitions: &Map<String, Value>) -> Value {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return definitions.get(name).cloned().unwrap_or(Value::Null);
    }
    for combinator in ["allOf", "anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(combinator)
            .and_then(Value::as_array)
            .and_then(|items| items.iter().find(|i| i.get("type") != Some(&json!("null"))))
        {
            return resolve(first, definitions);
        }
    }
    schema.clone()
}

/// A short, human type name for a property schema.
fn type_name(schema: &Value, definitions: &Map<String, Value>) -> String {
    let resolved = resolve(schema, definitions);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(variants) = resolved.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = variants
            .iter()
            .map(|v| {
                v.get("const")
                    .or_else(|| v.get("enum").and_then(|e| e.get(0)))
                    .and_then(Value::as_str)
                    .map(|c| format!("`{c}`"))
                    .or_else(|| {
                        v.get("required")
                            .and_then(|r| r.get(0))
                            .and_then(Value::as_str)
                            .map(|k| format!("`{{{k}: ...}}`"))
                    })
                    .unwrap_or_else(|| "...".into())
            })
            .collect();
        return names.join(" \\| ");
    }
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("array") => format!("list of {}", type_name(&resolved["items"], definitions)),
        Some("object")
            if resolved
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            "map".into()
        }
        Some("object") => "object".into(),
        Some("integer") => "integer".into(),
        Some(other) => other.into(),
        None => "any".into(),
    }
}
