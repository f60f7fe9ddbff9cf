//! The search sink: tweets found by words, stems, fields, phrases and
//! ranges; an index SIGKILLed five times holds each id once, with its
//! last row.

use std::collections::BTreeMap;
use std::path::Path;

use super::flumen;
use super::views::{kill_five_times, run_to_end};

/// `flumen search INDEX QUERY --limit N`: the hits' documents, and the
/// number of hits reported.
fn search(index: &Path, query: &str, limit: usize) -> (Vec<serde_json::Value>, usize) {
    let output = flumen()
        .arg("search")
        .arg(index)
        .arg(query)
        .args(["--limit", &limit.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let documents = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["document"].clone())
        .collect();
    let total = stderr.trim().trim_end_matches(" hits").parse().unwrap();
    (documents, total)
}

fn ids(documents: &[serde_json::Value]) -> Vec<&str> {
    documents
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect()
}

#[test]
fn tweets_are_found_by_words_stems_fields_phrases_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let tweets = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/tweets.jsonl");
    let yaml = format!(
        r#"
checkpoint:
  interval: 1s
  store: {dir}/checkpoints
sources:
  tweets:
    type: file
    path: {tweets}
    schema: {{ id: int64, user: string, lang: string, text: string, likes: int64, posted_at: timestamp }}
sinks:
  tweet_search:
    type: search
    inputs: [tweets]
    path: {dir}/tweets
    id: id
    fields:
      text: {{ type: text, tokenizer: en_stem }}
      user: {{ type: keyword }}
      likes: {{ type: number }}
      posted_at: {{ type: date }}
"#,
        dir = dir.path().display(),
        tweets = tweets.display()
    );
    let file = dir.path().join("tweets.yaml");
    std::fs::write(&file, &yaml).unwrap();
    run_to_end(&file);
    let index = dir.path().join("tweets");

    let (found, total) = search(&index, "roasting", 10);
    assert_eq!((ids(&found), total), (vec!["1"], 1), "a stem finds `Roast`");
    assert_eq!(found[0]["user"], "mara");
    let (found, _) = search(&index, "\"flat white\"", 10);
    assert_eq!(ids(&found), ["2"]);
    let (found, total) = search(&index, "user:mara AND likes:[2 TO 100]", 10);
    assert_eq!(total, 3);
    assert!(found.iter().all(|d| d["user"] == "mara"), "{found:?}");
    let (_, total) = search(&index, "*", 1);
    assert_eq!(total, 18);

    // Run again: the same ids are replaced, not added.
    run_to_end(&file);
    assert_eq!(search(&index, "*", 1).1, 18);

    let bad = flumen()
        .arg("search")
        .arg(&index)
        .arg("(unclosed")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Syntax Error"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A column that does not fit its field is refused before anything runs.
    std::fs::write(
        &file,
        yaml.replace("user: { type: keyword }", "user: { type: number }"),
    )
    .unwrap();
    let output = flumen().arg("validate").arg(&file).output().unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(error.contains("column `user` is Utf8"), "{error}");
}

#[test]
fn an_index_sigkilled_five_times_holds_each_id_once_with_its_last_row() {
    const ROWS: u64 = 300_000;
    const IDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..ROWS {
        text.push_str(&format!(
            "{{\"id\":{},\"n\":{i},\"word\":\"w{}\"}}\n",
            i % IDS,
            i % 7
        ));
    }
    std::fs::write(dir.path().join("rows.jsonl"), text).unwrap();
    let yaml = format!(
        r#"
checkpoint:
  interval: 20ms
  store: {dir}/checkpoints
sources:
  rows:
    type: file
    path: {dir}/rows.jsonl
    batch_size: 500
    schema: {{ id: int64, n: int64, word: string }}
sinks:
  indexed:
    type: search
    inputs: [rows]
    path: {dir}/index
    id: id
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("indexed.yaml");
    std::fs::write(&file, yaml).unwrap();
    kill_five_times(&file);
    run_to_end(&file);
    let (documents, total) = search(&dir.path().join("index"), "*", IDS as usize + 10);
    assert_eq!(total as u64, IDS, "each id once");
    let got: BTreeMap<i64, i64> = documents
        .iter()
        .map(|d| {
            (
                d["_id"].as_str().unwrap().parse().unwrap(),
                d["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<i64, i64> = (ROWS - IDS..ROWS)
        .map(|n| ((n % IDS) as i64, n as i64))
        .collect();
    assert!(got == expected, "an id holds a row other than its last");
}

#[test]
fn the_serve_server_answers_queries_with_hits_and_snippets() {
    let dir = tempfile::tempdir().unwrap();
    let tweets = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/tweets.jsonl");
    let port = flumen_core::testing::free_port();
    let yaml = format!(
        r#"
serve:
  listen: 127.0.0.1:{port}
  linger: 5m
sources:
  tweets:
    type: file
    path: {tweets}
    schema: {{ id: int64, user: string, text: string }}
sinks:
  tweet_search:
    type: search
    inputs: [tweets]
    path: {dir}/tweets
    id: id
    fields:
      text: {{ type: text, tokenizer: en_stem }}
      user: {{ type: keyword }}
"#,
        dir = dir.path().display(),
        tweets = tweets.display()
    );
    let file = dir.path().join("served.yaml");
    std::fs::write(&file, yaml).unwrap();
    let log = dir.path().join("run.log");
    let mut run = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap().contains(" for 5m") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let get = |path: &str| -> (String, serde_json::Value) {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (
            head.lines().next().unwrap().to_string(),
            serde_json::from_str(body).unwrap(),
        )
    };
    let (status, answer) = get("/v1/search/tweet_search?q=roasting");
    assert!(status.contains("200"), "{status} {answer}");
    assert_eq!(answer["total"], 1);
    assert_eq!(answer["hits"][0]["document"]["_id"], "1");
    assert_eq!(
        answer["hits"][0]["snippets"]["text"],
        "Queue out the door at Corner <b>Roast</b> already"
    );
    let (status, answer) = get("/v1/search/tweet_search?q=user:mara&limit=2");
    assert!(status.contains("200"), "{status}");
    assert_eq!(answer["hits"].as_array().unwrap().len(), 2);
    assert!(answer["total"].as_u64().unwrap() > 2);
    let (status, answer) = get("/v1/search/tweet_search?q=%28unclosed");
    assert!(status.contains("400"), "{status} {answer}");
    assert!(answer["error"].as_str().unwrap().contains("Syntax Error"));
    run.kill().unwrap();
    run.wait().unwrap();
}
