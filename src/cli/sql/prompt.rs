//! The interactive prompt: statements read line by line, edited and
//! kept in a history on a terminal.

use super::*;

/// Reads statements ending in `;` and runs them, until end of input
/// (Ctrl-D). A failed statement is reported and the next one is read. On
/// a terminal, lines are edited and kept in `~/.flumen_sql_history`;
/// otherwise (piped input) the exit code is 1 if any statement failed.
pub(super) fn interactive(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    format: SqlFormat,
) -> Result<(), Failure> {
    let terminal = std::io::stdin().is_terminal();
    let mut lines: Box<dyn LineSource> = if terminal {
        let names = runtime.block_on(session.names());
        Box::new(Prompt::new(names)?)
    } else {
        Box::new(std::io::stdin().lock())
    };
    if terminal {
        eprintln!(
            "flumen sql: statements end with `;`; `SHOW TABLES;` lists the tables; Ctrl-D exits"
        );
    }
    let mut failed = 0usize;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "flumen> "
        } else {
            "     -> "
        };
        let line = match lines.read(prompt)? {
            Line::Text(line) => line,
            Line::Interrupted => {
                buffer.clear();
                continue;
            }
            Line::End => break,
        };
        if buffer.trim().is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if buffer.trim_end().ends_with(';') {
            lines.remember(buffer.trim());
            if !run_interactively(runtime, session, &buffer, format, terminal) {
                failed += 1;
            }
            buffer.clear();
        }
    }
    // Piped input may end without a final `;`.
    if !terminal
        && !buffer.trim().is_empty()
        && !run_interactively(runtime, session, &buffer, format, terminal)
    {
        failed += 1;
    }
    lines.save();
    if failed > 0 && !terminal {
        return Err(Failure::Runtime(format!(
            "{failed} statement{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Runs the statements in `sql`, printing results and errors; returns
/// whether all succeeded.
pub(super) fn run_interactively(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    sql: &str,
    format: SqlFormat,
    terminal: bool,
) -> bool {
    let statements = match parse(sql) {
        Ok(statements) => statements,
        Err(message) => {
            eprintln!("error: {message}");
            return false;
        }
    };
    let mut out = Destination::stdout();
    for statement in statements {
        let started = Instant::now();
        let run = session.run(statement, format, &mut out);
        let result = runtime.block_on(async {
            if terminal {
                // Ctrl-C cancels the query, not the session.
                tokio::select! {
                    result = run => result,
                    _ = tokio::signal::ctrl_c() => Err(Failure::Runtime("cancelled (Ctrl-C)".into())),
                }
            } else {
                run.await
            }
        });
        let flushed = out.flush();
        match result.and_then(|rows| flushed.map(|()| rows)) {
            Ok(rows) => {
                if terminal {
                    let s = if rows == 1 { "" } else { "s" };
                    eprintln!("{rows} row{s} in {:.3}s", started.elapsed().as_secs_f64());
                }
            }
            Err(Failure::Usage(message) | Failure::Runtime(message)) => {
                eprintln!("error: {message}");
                return false;
            }
        }
    }
    true
}

/// What a line source gives.
pub(super) enum Line {
    Text(String),
    /// Ctrl-C at the prompt: drop the statement being typed.
    Interrupted,
    End,
}

/// Lines of SQL, from a terminal or a pipe.
pub(super) trait LineSource {
    fn read(&mut self, prompt: &str) -> Result<Line, Failure>;
    fn remember(&mut self, _statement: &str) {}
    fn save(&mut self) {}
}

impl LineSource for std::io::StdinLock<'static> {
    fn read(&mut self, _prompt: &str) -> Result<Line, Failure> {
        let mut line = String::new();
        match self.read_line(&mut line) {
            Ok(0) => Ok(Line::End),
            Ok(_) => Ok(Line::Text(line.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(Failure::Runtime(format!("cannot read standard input: {e}"))),
        }
    }
}

/// A line editor with history, completing table and column names.
pub(super) struct Prompt {
    pub(super) editor: rustyline::Editor<Names, rustyline::history::DefaultHistory>,
    pub(super) history: Option<PathBuf>,
}

impl Prompt {
    /// `names`: the tables and columns there are, completed with Tab.
    pub(super) fn new(names: Vec<String>) -> Result<Prompt, Failure> {
        let mut editor = rustyline::Editor::new()
            .map_err(|e| Failure::Runtime(format!("cannot start the prompt: {e}")))?;
        editor.set_helper(Some(Names(names)));
        let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
        if let Some(path) = &history {
            // No history yet is fine.
            let _ = editor.load_history(path);
        }
        Ok(Prompt { editor, history })
    }
}

/// Completes the word before the cursor with the table and column names
/// (and SQL keywords) that start with it.
pub(super) struct Names(Vec<String>);

/// Keywords worth a Tab.
const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "ON",
    "AS",
    "DISTINCT",
    "COUNT",
    "DESCRIBE",
    "EXPLAIN",
    "SHOW TABLES",
];

impl rustyline::completion::Completer for Names {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let lower = word.to_lowercase();
        let mut candidates: Vec<String> = self
            .0
            .iter()
            .map(String::as_str)
            .chain(KEYWORDS.iter().copied())
            .filter(|name| name.to_lowercase().starts_with(&lower))
            .map(str::to_string)
            .collect();
        candidates.sort();
        candidates.dedup();
        Ok((start, candidates))
    }
}

impl rustyline::hint::Hinter for Names {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Names {}

impl rustyline::validate::Validator for Names {}

impl rustyline::Helper for Names {}

impl LineSource for Prompt {
    fn read(&mut self, prompt: &str) -> Result<Line, Failure> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => Ok(Line::Text(line)),
            Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(ReadlineError::Eof) => Ok(Line::End),
            Err(e) => Err(Failure::Runtime(format!("cannot read the prompt: {e}"))),
        }
    }

    fn remember(&mut self, statement: &str) {
        let _ = self.editor.add_history_entry(statement);
    }

    fn save(&mut self) {
        if let Some(path) = &self.history
            && let Err(e) = self.editor.save_history(path)
        {
            tracing::warn!("cannot save the history to `{}`: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use rustyline::completion::Completer;
    use rustyline::history::DefaultHistory;

    use super::*;

    #[test]
    fn tab_completes_table_and_column_names() {
        let names = Names(vec!["bids".into(), "auction".into(), "bidder".into()]);
        let history = DefaultHistory::new();
        let ctx = rustyline::Context::new(&history);
        let line = "SELECT auc";
        assert_eq!(
            names.complete(line, line.len(), &ctx).unwrap(),
            (7, vec!["auction".to_string()])
        );
        let line = "SELECT count(*) FROM bi";
        assert_eq!(
            names.complete(line, line.len(), &ctx).unwrap(),
            (21, vec!["bidder".to_string(), "bids".to_string()])
        );
        // Keywords too, in any case.
        let line = "sel";
        assert_eq!(
            names.complete(line, line.len(), &ctx).unwrap(),
            (0, vec!["SELECT".to_string()])
        );
        assert_eq!(names.complete("", 0, &ctx).unwrap(), (0, vec![]));
    }
}
