//! Reading a pipeline file: `${VAR}` interpolation from the environment,
//! then YAML, kept with the line and column of every key and value so
//! errors can point at them.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use super::error::ConfigError;

/// A YAML value, with the position of each child.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

/// Line and column (both from 1) of a key or value in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Position {
    fn of(location: &Location) -> Option<Position> {
        (location.line() > 0).then(|| Position {
            line: location.line(),
            column: location.column(),
        })
    }
}

/// A parsed pipeline file: its content as JSON values, and where each key
/// path (`transforms.enrich.inputs[1]`) was written.
#[derive(Debug)]
pub struct Document {
    /// The whole file, after interpolation.
    pub value: Value,
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
}

impl Document {
    /// Parses YAML `text` (already interpolated).
    pub fn parse(text: &str) -> Result<Document, ConfigError> {
        let root: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| {
            let position = e.location().as_ref().and_then(Position::of);
            // The parser notices an unclosed bracket only on a later line:
            // point at the bracket.
            if let Some((bracket, at)) = position.and_then(|p| unclosed_bracket(text, p)) {
                let close = if bracket == '{' { '}' } else { ']' };
                return ConfigError::new(format!(
                    "this `{bracket}` is not closed: expected `{close}` before the end of the line"
                ))
                .at_position(Some(at));
            }
            ConfigError::new(plain_words(yaml_message(&e))).at_position(position)
        })?;
        let mut document = Document {
            value: Value::Null,
            keys: HashMap::new(),
            values: HashMap::new(),
        };
        document.value = document.index(String::new(), root);
        Ok(document)
    }

    fn index(&mut self, path: String, node: Spanned<Node>) -> Value {
        if let Some(position) = Position::of(&node.referenced) {
            self.values.insert(path.clone(), position);
        }
        match node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::from(i),
            Node::UInt(u) => Value::from(u),
            Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Node::String(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.index(format!("{path}[{i}]"), item))
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.value.clone()
                    } else {
                        format!("{path}.{}", key.value)
                    };
                    if let Some(position) = Position::of(&key.referenced) {
                        self.keys.insert(child.clone(), position);
                    }
                    let value = self.index(child, value);
                    map.insert(key.value, value);
                }
                Value::Object(map)
            }
        }
    }

    /// Where the value at `path` was written, or failing that its nearest
    /// enclosing key.
    pub fn position_of_value(&self, path: &str) -> Option<Position> {
        self.lookup(path, &self.values)
    }

    /// Where the key `path` was written, or failing that its nearest
    /// enclosing key.
    pub fn position_of_key(&self, path: &str) -> Option<Position> {
        self.lookup(path, &self.keys)
    }

    fn lookup(&self, path: &str, first: &HashMap<String, Position>) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = first.get(path).or_else(|| self.keys.get(path)) {
                return Some(*position);
            }
            path = parent_path(path)?;
        }
    }
}

/// Replaces `${NAME}`, `${NAME:-default}` (default when unset or empty)
/// and `${NAME-default}` (default when unset) with values from `env`, and
/// `$$` with `$`. Substitution happens on the text, before YAML parsing, so
/// `events: ${EVENTS:-1000}` is a number as if written out.
pub fn interpolate(text: &str, env: &HashMap<String, String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let position = Position {
                line: line_index as u64 + 1,
                column: (line.len() - rest.len() + dollar) as u64 + 1,
            };
            let Some(close) = body.find('}') else {
                return Err(
                    ConfigError::new("`${` without a closing `}`").at_position(Some(position))
                );
            };
            out.push_str(
                &expand(&body[..close], env)
                    .map_err(|m| ConfigError::new(m).at_position(Some(position)))?,
            );
            rest = &body[close + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Expands the inside of one `${...}`.
fn expand(reference: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let (name, default) = match reference.find([':', '-']) {
        Some(i) if reference[i..].starts_with(":-") => {
            (&reference[..i], Some((&reference[i + 2..], true)))
        }
        Some(i) if reference[i..].starts_with('-') => {
            (&reference[..i], Some((&reference[i + 1..], false)))
        }
        Some(_) => {
            return Err(format!(
                "`${{{reference}}}`: expected `${{NAME}}`, `${{NAME:-default}}` or `${{NAME-default}}`"
            ));
        }
        None => (reference, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{reference}}}`: `{name}` is not an environment variable name"
        ));
    }
    match (env.get(name), default) {
        (Some(value), Some((default, true))) if value.is_empty() => Ok(default.to_string()),
        (Some(value), _) => Ok(value.clone()),
        (None, Some((default, _))) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
        )),
    }
}

/// `a.b[2]` -> `a.b` -> `a`.
fn parent_path(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

/// The innermost `{` or `[` still open at `error`, if it was opened on an
/// earlier line: flow collections in pipeline files fit on one line, and a
/// parser that meets the next line reports it there. Quotes and comments
/// are skipped.
fn unclosed_bracket(text: &str, error: Position) -> Option<(char, Position)> {
    let mut open: Vec<(char, Position)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        if number > error.line {
            break;
        }
        let mut quote = None;
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            let here = Position {
                line: number,
                column: column as u64 + 1,
            };
            if number == error.line && here.column >= error.column {
                break;
            }
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') if previous.is_whitespace() => break,
                (None, '{' | '[') => open.push((c, here)),
                (None, '}' | ']') => {
                    open.pop();
                }
                _ => {}
            }
            previous = c;
        }
    }
    open.pop().filter(|(_, at)| at.line < error.line)
}

/// The parser's messages about indentation, in a person's words.
fn plain_words(message: String) -> String {
    if message.contains("did not find expected key") {
        return "this line is not indented like the keys around it: keys of one mapping \
                start in the same column"
            .into();
    }
    if message.contains("mapping values are not allowed in this context") {
        return "a `key:` where a value was expected: this line is indented too far (or a \
                value holding `: ` needs quotes)"
            .into();
    }
    message
}

/// The YAML library's message, without the location and snippet it also
/// gives (the file's error reports them its own way).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter;
    let message = serde_saphyr::DefaultMessageFormatter.format_message(error.without_snippet());
    // Printed to a terminal: no control characters from the input.
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Document {
        Document::parse(text).unwrap()
    }

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let doc = parse("sources:\n  bids:\n    type: nexmark\n    inputs: [a, b]\n");
        assert_eq!(
            doc.position_of_key("sources.bids.type"),
            Some(Position { line: 3, column: 5 })
        );
        assert_eq!(
            doc.position_of_value("sources.bids.type"),
            Some(Position {
                line: 3,
                column: 11
            })
        );
        assert_eq!(
            doc.position_of_value("sources.bids.inputs[1]"),
            Some(Position {
                line: 4,
                column: 17
            })
        );
        // An unknown path falls back to its nearest ancestor.
        assert_eq!(
            doc.position_of_key("sources.bids.nope"),
            Some(Position { line: 2, column: 3 })
        );
        assert_eq!(doc.value["sources"]["bids"]["inputs"][0], "a");
    }

    #[test]
    fn interpolates_environment_variables() {
        let env = HashMap::from([
            ("DIR".to_string(), "/data".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]);
        let text = "path: ${DIR}/in\nn: ${N:-10}\na: ${EMPTY:-x}\nb: ${EMPTY-x}\nprice: $$5\n";
        let doc = parse(&interpolate(text, &env).unwrap());
        assert_eq!(doc.value["path"], "/data/in");
        assert_eq!(doc.value["n"], 10, "a number once substituted");
        assert_eq!(doc.value["a"], "x");
        assert_eq!(doc.value["b"], serde_json::Value::Null);
        assert_eq!(doc.value["price"], "$5");

        let err = interpolate("a: 1\npath: ${NOT_SET}/x\n", &env).unwrap_err();
        assert_eq!(err.position, Some(Position { line: 2, column: 7 }));
        assert!(
            err.message
                .starts_with("environment variable `NOT_SET` is not set"),
            "{err}"
        );
        let err = interpolate("a: ${9x}", &env).unwrap_err();
        assert!(
            err.message.contains("not an environment variable name"),
            "{err}"
        );
    }
}
