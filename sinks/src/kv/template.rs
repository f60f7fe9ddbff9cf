//! Key templates: `tweet:{id}`, literal text with columns in braces.

use flumen_core::prelude::*;

/// A key template, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyTemplate {
    parts: Vec<Part>,
    /// The columns named, in order, once each.
    columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The `n`-th of [`KeyTemplate::columns`].
    Column(usize),
}

impl KeyTemplate {
    /// Parses `template`; `{{` and `}}` stand for braces themselves.
    pub(crate) fn parse(template: &str) -> Result<Self> {
        let bad = |why: &str| Error::config("key", format!("`{template}`: {why}"));
        let mut parts = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(bad("a `{` is not closed")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(bad("`{}` names no column"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let index = match columns.iter().position(|c| *c == name) {
                        Some(index) => index,
                        None => {
                            columns.push(name);
                            columns.len() - 1
                        }
                    };
                    parts.push(Part::Column(index));
                }
                '}' => return Err(bad("a `}` closes nothing (write `}}` for a brace)")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if columns.is_empty() {
            return Err(bad("names no column; e.g. `tweet:{id}`"));
        }
        Ok(KeyTemplate { parts, columns })
    }

    /// The columns the template names, in order, once each.
    pub(crate) fn columns(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).collect()
    }

    /// The key, given the text of each column of [`KeyTemplate::columns`]
    /// (in that order); `None` if one is null.
    pub(crate) fn render(&self, values: &[Option<&str>]) -> Option<String> {
        let mut key = String::with_capacity(32);
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Column(index) => key.push_str(values[*index]?),
            }
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_in_braces_and_braces_doubled() {
        let template = KeyTemplate::parse("tweet:{id}:{{{lang}}}:{id}").unwrap();
        assert_eq!(template.columns(), ["id", "lang"]);
        assert_eq!(
            template.render(&[Some("42"), Some("en")]).as_deref(),
            Some("tweet:42:{en}:42")
        );
        assert_eq!(template.render(&[None, Some("en")]), None);
    }

    #[test]
    fn mistakes_are_named() {
        for (template, says) in [
            ("tweet:{id", "not closed"),
            ("tweet:id}", "closes nothing"),
            ("tweet:{}", "names no column"),
            ("tweet", "names no column"),
        ] {
            let error = KeyTemplate::parse(template).unwrap_err().to_string();
            assert!(
                error.contains(says) && error.contains("key"),
                "{template}: {error}"
            );
        }
    }
}
