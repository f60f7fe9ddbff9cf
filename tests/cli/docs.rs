//! The transcripts in the README and `docs/` are what Flumen prints: each
//! `$ command` in a ```text block is run and its output compared with the
//! lines shown under it, modulo timestamps and timings.
//!
//! The commands of one page run in order in one scratch copy of
//! `examples/` (a page's later commands read what its earlier ones wrote),
//! with `flumen` (and `cargo run --release --`) the binary under test and
//! standard error merged into standard output, as a terminal shows them.
//!
//! A comment on the line before a block says how to compare it:
//! `<!-- transcript: unordered -->` (lines in any order: parallel
//! instances race), `<!-- transcript: rows vary -->` (which table rows show
//! is a race; how many is not) or `<!-- transcript: not run (why) -->` (it
//! needs a server, or a kill at a moment). In the expected output a line
//! `...` stands for any lines.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How a block's output is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Exactly,
    Unordered,
    RowsVary,
    NotRun,
}

/// One `$ command` of a page and the output shown for it.
#[derive(Debug)]
struct Step {
    page: String,
    line: usize,
    command: String,
    expected: Vec<String>,
    compare: Compare,
}

/// The steps of a Markdown page, in order.
fn steps(page: &str, text: &str) -> Vec<Step> {
    let lines: Vec<&str> = text.lines().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() != "```text" {
            i += 1;
            continue;
        }
        let compare = marker(&lines[..i]);
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim_end() == "```")
            .unwrap_or(lines.len());
        i = end + 1;
        if !lines.get(start).is_some_and(|l| l.starts_with("$ ")) {
            continue;
        }
        let mut j = start;
        while j < end {
            let line = j + 1;
            let mut command = lines[j][2..].to_string();
            // `\` at the end continues the command on the next line.
            while command.ends_with('\\') && j + 1 < end {
                command.pop();
                j += 1;
                command.push_str(lines[j].trim_start());
            }
            j += 1;
            let mut expected = Vec::new();
            while j < end && !lines[j].starts_with("$ ") {
                expected.push(lines[j].to_string());
                j += 1;
            }
            steps.push(Step {
                page: page.to_string(),
                line,
                command,
                expected,
                compare,
            });
        }
    }
    steps
}

/// The comparison a `<!-- transcript: ... -->` comment right before a
/// block asks for.
fn marker(before: &[&str]) -> Compare {
    let Some(previous) = before.iter().rev().find(|l| !l.trim().is_empty()) else {
        return Compare::Exactly;
    };
    let Some(kind) = previous
        .trim()
        .strip_prefix("<!-- transcript: ")
        .and_then(|rest| rest.strip_suffix("-->"))
    else {
        return Compare::Exactly;
    };
    match kind.trim() {
        "unordered" => Compare::Unordered,
        "rows vary" => Compare::RowsVary,
        other if other.starts_with("not run") => Compare::NotRun,
        other => panic!("unknown transcript marker `{other}`"),
    }
}

/// A line with what changes from run to run masked: timestamps that end
/// in `Z` (log lines, `rejected_at`) and durations (`0.16s`).
fn normalized(line: &str) -> String {
    let masked = mask(line.trim_end(), timestamp_at, "<time>");
    mask(&masked, duration_at, "<duration>")
}

/// Replaces each match of `matcher` (the length of a match starting at a
/// byte, if one does) with `with`.
fn mask(line: &str, matcher: fn(&[u8], usize) -> Option<usize>, with: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        match matcher(bytes, i).filter(|_| starts_word) {
            Some(length) => {
                out.push_str(with);
                i += length;
            }
            None => {
                let c = line[i..].chars().next().expect("a char starts here");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// `2026-11-26T19:23:06.169Z` (fraction optional).
fn timestamp_at(bytes: &[u8], at: usize) -> Option<usize> {
    let pattern = b"dddd-dd-ddTdd:dd:dd";
    let rest = bytes.get(at..)?;
    if rest.len() < pattern.len() {
        return None;
    }
    for (b, p) in rest.iter().zip(pattern) {
        let fits = match p {
            b'd' => b.is_ascii_digit(),
            other => b == other,
        };
        if !fits {
            return None;
        }
    }
    let mut end = pattern.len();
    if rest.get(end) == Some(&b'.') {
        end += 1;
        while rest.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    (rest.get(end) == Some(&b'Z')).then_some(end + 1)
}

/// `0.16s`, `12.5s`: digits, a point, digits, `s`, then no letter.
fn duration_at(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let digits = |from: usize| {
        rest[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let whole = digits(0);
    if whole == 0 || rest.get(whole) != Some(&b'.') {
        return None;
    }
    let fraction = digits(whole + 1);
    let end = whole + 1 + fraction;
    let ends_word = !rest.get(end + 1).is_some_and(u8::is_ascii_alphanumeric);
    (fraction > 0 && rest.get(end) == Some(&b's') && ends_word).then_some(end + 1)
}

/// The data rows of text tables (between a table's second and third
/// border) replaced by one mark each.
fn rows_masked(lines: Vec<String>) -> Vec<String> {
    let mut borders = 0;
    lines
        .into_iter()
        .map(|line| {
            if line.starts_with("+-") {
                borders = if borders == 3 { 1 } else { borders + 1 };
                line
            } else if line.starts_with('|') && borders == 2 {
                "| <row> |".to_string()
            } else {
                if !line.starts_with('|') {
                    borders = 0;
                }
                line
            }
        })
        .collect()
}

/// Whether `actual` matches `expected`, where an expected `...` line
/// stands for any lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." || first == "…" => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual.first() == Some(first) && matches(rest, &actual[1..]),
    }
}

/// A scratch directory holding a copy of `examples/`, as the repository's
/// root holds it.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_tree(&root.join("examples"), &dir.path().join("examples"));
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        // What earlier runs in the repository left is not the example.
        if name == ".flumen" || name == "out" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

/// Runs a transcript's command in `dir` with the binary under test as
/// `flumen`; standard output and standard error together.
fn run_command(dir: &Path, command: &str) -> Vec<String> {
    let command = command.replace("cargo run --release -- ", "flumen ");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_flumen"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A transcript that does not end (a server, a wait) fails, not hangs.
    let output = Command::new("timeout")
        .args(["--kill-after=5", "120", "sh", "-c"])
        .arg(format!("exec 2>&1; {command}"))
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn pages() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

#[test]
fn every_transcript_in_the_docs_is_what_flumen_prints() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&page).unwrap();
        let steps = steps(&name, &text);
        if steps.iter().all(|s| s.compare == Compare::NotRun) {
            continue;
        }
        let dir = scratch();
        for step in steps {
            if step.compare == Compare::NotRun {
                continue;
            }
            checked += 1;
            let actual = run_command(dir.path(), &step.command);
            let mut expected: Vec<String> = step.expected.iter().map(|l| normalized(l)).collect();
            let mut actual: Vec<String> = actual.iter().map(|l| normalized(l)).collect();
            if step.compare == Compare::RowsVary {
                expected = rows_masked(expected);
                actual = rows_masked(actual);
            }
            let same = match step.compare {
                Compare::Unordered => {
                    expected.sort();
                    actual.sort();
                    expected == actual
                }
                _ => matches(&expected, &actual),
            };
            if !same {
                failures.push(format!(
                    "{}:{}: `{}`\n--- the docs show\n{}\n--- flumen printed\n{}",
                    step.page,
                    step.line,
                    step.command,
                    expected.join("\n"),
                    actual.join("\n")
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} transcripts found");
    assert!(
        failures.is_empty(),
        "{} of {checked} transcripts differ from what flumen prints:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn transcript_masks_keep_what_matters() {
    assert_eq!(
        normalized("2026-11-26T19:22:47.992123Z  INFO running pipeline=x.yaml"),
        "<time>  INFO running pipeline=x.yaml"
    );
    assert_eq!(
        normalized("finished in 0.16s; in: bids=920000"),
        "finished in <duration>; in: bids=920000"
    );
    // Event times in the data are the data.
    assert_eq!(
        normalized("| 2026-01-01T00:00:00.001 | 1.5s |"),
        "| 2026-01-01T00:00:00.001 | <duration> |"
    );
    let any = ["a".to_string(), "...".to_string(), "d".to_string()];
    let actual: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    assert!(matches(&any, &actual));
    assert!(!matches(&any, &actual[..3]));
    let table: Vec<String> = ["+-+", "| h |", "+-+", "| 1 |", "| 2 |", "+-+", "done"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        rows_masked(table),
        [
            "+-+",
            "| h |",
            "+-+",
            "| <row> |",
            "| <row> |",
            "+-+",
            "done"
        ]
    );
}
