//! Errors in a pipeline file, pointing at the line, column and key.

use std::fmt;

use super::yaml::Position;

/// A mistake in a pipeline file.
///
/// Displays like a compiler error: the message, then where it is (file,
/// line, column, key path) with the offending line underlined, then a
/// suggestion if there is one. The details are behind a box (and reachable
/// through `Deref`) so that `Result<_, ConfigError>` stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<ConfigErrorDetails>);

/// What a [`ConfigError`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrorDetails {
    /// What is wrong, and what was expected.
    pub message: String,
    /// The key path, e.g. `transforms.enrich.inputs[1]`.
    pub path: Option<String>,
    /// The file.
    pub file: Option<String>,
    /// Where in the file.
    pub position: Option<Position>,
    /// A likely fix ("did you mean `kafka`?").
    pub help: Option<String>,
    /// The line of the file at `position`.
    source_line: Option<String>,
}

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetails;

    fn deref(&self) -> &ConfigErrorDetails {
        &self.0
    }
}

impl ConfigError {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(Box::new(ConfigErrorDetails {
            message: message.into(),
            path: None,
            file: None,
            position: None,
            help: None,
            source_line: None,
        }))
    }

    /// At key path `path`.
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.0.path = Some(path.into());
        self
    }

    /// At a position in the file.
    pub fn at_position(mut self, position: Option<Position>) -> Self {
        self.0.position = position.or(self.0.position);
        self
    }

    /// With a suggestion.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }

    /// With a suggestion, if there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        self.0.help = help.or(self.0.help.take());
        self
    }

    /// In `file`, whose text is `text` (to quote the offending line).
    pub fn in_file(mut self, file: &str, text: &str) -> Self {
        self.0.file = Some(file.to_string());
        if let Some(position) = self.0.position {
            self.0.source_line = text
                .lines()
                .nth(position.line.saturating_sub(1) as usize)
                .map(str::to_string);
        }
        self
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        let location = match (&self.file, self.position) {
            (Some(file), Some(p)) => Some(format!("{file}:{}:{}", p.line, p.column)),
            (Some(file), None) => Some(file.clone()),
            (None, Some(p)) => Some(format!("line {}, column {}", p.line, p.column)),
            (None, None) => None,
        };
        match (location, self.path.as_deref().filter(|p| !p.is_empty())) {
            (Some(location), Some(path)) => write!(f, "\n  --> {location} (at `{path}`)")?,
            (Some(location), None) => write!(f, "\n  --> {location}")?,
            (None, Some(path)) => write!(f, "\n  --> at `{path}`")?,
            (None, None) => {}
        }
        if let (Some(line), Some(position)) = (&self.source_line, self.position) {
            let number = position.line.to_string();
            let pad = " ".repeat(number.len());
            let column = (position.column as usize).saturating_sub(1);
            let token = underline_width(&line.chars().skip(column).collect::<String>());
            write!(
                f,
                "\n {pad} |\n {number} | {line}\n {pad} | {}{}",
                " ".repeat(column),
                "^".repeat(token)
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// How much of the text from an error's column to underline: a flow item
/// (up to `,`, `]` or `}`), a key (up to its `:`), or a value (up to a
/// comment or the end of the line).
fn underline_width(rest: &str) -> usize {
    let mut end = rest
        .find([',', ']', '}'])
        .unwrap_or(rest.len())
        .min(rest.find(" #").unwrap_or(rest.len()));
    if let Some(colon) = rest[..end]
        .find(':')
        .filter(|c| rest[*c + 1..].starts_with([' ', '\n']) || *c + 1 == rest.len())
    {
        end = colon;
    }
    rest[..end].trim_end().chars().count().max(1)
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_the_line_and_column() {
        let text = "sources:\n  bids:\n    type: kafak\n";
        let err = ConfigError::new("unknown source type `kafak`")
            .at("sources.bids.type")
            .at_position(Some(Position {
                line: 3,
                column: 11,
            }))
            .maybe_help(did_you_mean("kafak", ["kafka", "file", "nexmark"]))
            .in_file("pipeline.yaml", text);
        assert_eq!(
            err.to_string(),
            "unknown source type `kafak`\n  --> pipeline.yaml:3:11 (at `sources.bids.type`)\n   |\n 3 |     type: kafak\n   |           ^^^^^\n  = help: did you mean `kafka`?"
        );
    }

    #[test]
    fn underlines_the_offending_item_key_or_value() {
        assert_eq!(underline_width("bidz, persons]"), 4);
        assert_eq!(underline_width("price + 1  # cents"), 9);
        assert_eq!(underline_width("out:"), 3);
        assert_eq!(underline_width("2026-01-01T00:00:00Z"), 20);
    }

    #[test]
    fn suggests_only_close_words() {
        assert_eq!(
            did_you_mean("bidz", ["bids", "persons"]).as_deref(),
            Some("did you mean `bids`?")
        );
        assert_eq!(did_you_mean("zzz", ["bids", "persons"]), None);
    }
}
