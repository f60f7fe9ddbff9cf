//! Only statements that read: what `flumen sql` refuses, and how it
//! names a statement.

use super::*;

/// Splits SQL text into statements.
pub(super) fn parse(sql: &str) -> Result<Vec<DfStatement>, String> {
    let dialect = GenericDialect {};
    DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map(Vec::from)
        .map_err(|e| e.strip_backtrace())
}

/// Lets through what only reads: queries, `EXPLAIN` of them, `DESCRIBE`
/// and `SHOW`. Anything else is refused, named by its class.
pub(super) fn check_read_only(statement: &DfStatement) -> Result<(), String> {
    let allowed = match statement {
        DfStatement::Statement(inner) => match inner.as_ref() {
            SqlStatement::Explain { statement, .. } => {
                return check_read_only(&DfStatement::Statement(statement.clone()));
            }
            // `SELECT ... INTO t` creates a table.
            SqlStatement::Query(query) => {
                if let SetExpr::Select(select) = query.body.as_ref()
                    && select.into.is_some()
                {
                    return Err(
                        "flumen sql is read-only: SELECT INTO is not allowed (it creates a table)"
                            .into(),
                    );
                }
                true
            }
            SqlStatement::ExplainTable { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowStatus { .. }
            | SqlStatement::ShowVariables { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowCatalogs { .. }
            | SqlStatement::ShowDatabases { .. }
            | SqlStatement::ShowSchemas { .. }
            | SqlStatement::ShowObjects { .. }
            | SqlStatement::ShowTables { .. }
            | SqlStatement::ShowViews { .. }
            | SqlStatement::ShowCollation { .. }
            | SqlStatement::ShowCharset { .. } => true,
            _ => false,
        },
        DfStatement::Explain(explain) => return check_read_only(&explain.statement),
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => {
            false
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "flumen sql is read-only: {} is not allowed",
            statement_class(&statement.to_string())
        ))
    }
}

/// `CREATE TABLE`, `INSERT`, `COPY`, `SET`...: the leading keywords of a
/// statement as its parser prints it.
pub(super) fn statement_class(text: &str) -> String {
    const OBJECTS: &[&str] = &[
        "TABLE",
        "VIEW",
        "SCHEMA",
        "DATABASE",
        "CATALOG",
        "FUNCTION",
        "INDEX",
        "SEQUENCE",
        "TYPE",
        "ROLE",
        "USER",
        "MACRO",
        "PROCEDURE",
        "TRIGGER",
        "EXTENSION",
        "SECRET",
        "STAGE",
        "DOMAIN",
        "POLICY",
    ];
    const MODIFIERS: &[&str] = &["OR", "REPLACE", "IF", "NOT", "EXISTS"];
    let words: Vec<String> = text
        .split_whitespace()
        .take(8)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let Some(first) = words.first() else {
        return "this statement".into();
    };
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => {
            let mut class = vec![first.as_str()];
            for word in &words[1..] {
                if MODIFIERS.contains(&word.as_str()) {
                    continue;
                }
                if !word.chars().all(|c| c.is_ascii_alphabetic()) || class.len() == 4 {
                    break;
                }
                class.push(word);
                if OBJECTS.contains(&word.as_str()) {
                    return class.join(" ");
                }
            }
            class.truncate(2);
            class.join(" ")
        }
        "START" => "START TRANSACTION".into(),
        _ => first.clone(),
    }
}
