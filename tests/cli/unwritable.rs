//! A value no text can show (a timestamp some 292 million years away)
//! never reaches a sink's output as an error message: the row goes to the
//! dead letters, naming the column and the value, and the rest is written.

use std::path::Path;

use super::crash::committed;
use super::run;

/// Three events, the second with a timestamp past the calendar.
fn events(dir: &Path) -> String {
    let path = dir.join("events.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"id\": 1, \"at\": 1765000000000}\n",
            "{\"id\": 2, \"at\": 9223372036854775807}\n",
            "{\"id\": 3, \"at\": \"2026-12-06T10:00:00Z\"}\n",
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// The dead letters under `dir/dead`, as one text.
fn dead_letters(dir: &Path) -> String {
    committed(&dir.join("dead")).join("\n")
}

#[test]
fn file_sinks_write_the_rest_and_dead_letter_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
dead_letter: {{ type: file, path: {dir}/dead }}
sources:
  events: {{ type: file, path: {events}, schema: {{ id: int64, at: timestamp }} }}
sinks:
  as_json: {{ type: file, inputs: [events], path: {dir}/out.jsonl }}
  as_csv: {{ type: file, inputs: [events], path: {dir}/out.csv, format: csv }}
"#,
        dir = dir.path().display(),
        events = events(dir.path())
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = run(&["run", "--progress", "off", file.to_str().unwrap()]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let json = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        json,
        "{\"id\":1,\"at\":\"2025-12-06T05:46:40\"}\n{\"id\":3,\"at\":\"2026-12-06T10:00:00\"}\n"
    );
    let csv = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
    assert_eq!(csv, "id,at\n1,2025-12-06T05:46:40\n3,2026-12-06T10:00:00\n");
    let dead = dead_letters(dir.path());
    assert!(!dead.contains("ERROR"), "{dead}");
    // One dead letter from each sink, naming the column and the value.
    assert_eq!(
        dead.matches("9223372036854775807 is out of range").count(),
        2,
        "{dead}"
    );
    assert!(dead.contains("column `at`"), "{dead}");
}

#[test]
fn stdout_prints_the_rest_and_dead_letters_the_row() {
    for format in ["json", "csv", "table"] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"
dead_letter: {{ type: file, path: {dir}/dead }}
sources:
  events: {{ type: file, path: {events}, schema: {{ id: int64, at: timestamp }} }}
sinks:
  out: {{ type: stdout, inputs: [events], format: {format} }}
"#,
            dir = dir.path().display(),
            events = events(dir.path())
        );
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, yaml).unwrap();
        let output = run(&["run", "--progress", "off", file.to_str().unwrap()]);
        assert_eq!(output.code, 0, "{}", output.stderr);
        assert!(
            !output.stdout.contains("ERROR"),
            "{format}: {}",
            output.stdout
        );
        assert!(
            output.stdout.contains("2026-12-06T10:00:00"),
            "{format}: {}",
            output.stdout
        );
        let dead = dead_letters(dir.path());
        assert!(
            dead.contains("9223372036854775807 is out of range"),
            "{format}: {dead}"
        );
    }
}

#[cfg(feature = "http")]
#[test]
fn the_http_sink_sends_the_rest_and_dead_letters_the_row() {
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = Arc::new(Mutex::new(String::new()));
    let port = runtime.block_on(async {
        let received = received.clone();
        let app = axum::Router::new().route(
            "/rows",
            axum::routing::post(move |body: String| {
                let received = received.clone();
                async move { received.lock().unwrap().push_str(&body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    });
    let yaml = format!(
        r#"
dead_letter: {{ type: file, path: {dir}/dead }}
sources:
  events: {{ type: file, path: {events}, schema: {{ id: int64, at: timestamp }} }}
sinks:
  service: {{ type: http, inputs: [events], url: "http://127.0.0.1:{port}/rows", format: ndjson }}
"#,
        dir = dir.path().display(),
        events = events(dir.path())
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = run(&["run", "--progress", "off", file.to_str().unwrap()]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received,
        "{\"id\":1,\"at\":\"2025-12-06T05:46:40\"}\n{\"id\":3,\"at\":\"2026-12-06T10:00:00\"}\n"
    );
    assert!(dead_letters(dir.path()).contains("9223372036854775807 is out of range"));
}
