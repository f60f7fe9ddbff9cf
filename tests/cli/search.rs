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
    // A word one typo away, and a phrase beside it.
    let (found, _) = search(&index, "rost~1 AND user:mara", 10);
    assert_eq!(ids(&found), ["1"], "`rost~1` finds `Roast`");
    assert!(search(&index, "rost", 10).0.is_empty());

    // `--fields` and `--format table`.
    let table = flumen()
        .arg("search")
        .arg(&index)
        .arg("\"flat white\"")
        .args(["--fields", "_id,user", "--format", "table"])
        .output()
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(rows[0], ["score", "_id", "user"], "{table}");
    assert_eq!(&rows[1][1..], ["2", "theo"], "{table}");

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

    // The index's last commit names the last checkpoint.
    let listed = flumen()
        .args(["checkpoints", "list"])
        .arg(dir.path().join("checkpoints"))
        .output()
        .unwrap();
    let last = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .expect("checkpoints are listed");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("index/meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["payload"], format!("flumen:{last}"));
}

#[cfg(feature = "serve")]
#[test]
fn the_serve_server_answers_queries_with_hits_and_snippets() {
    use super::serve::{Running, get};

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
    let run = Running::start(&file, &log);
    run.lingering(&log, "5m");
    let get = |path: &str| get(port, path, None);
    let (status, answer) = get("/v1/search/tweet_search?q=roasting");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["total"], 1);
    assert_eq!(answer["hits"][0]["document"]["_id"], "1");
    assert_eq!(
        answer["hits"][0]["snippets"]["text"],
        "Queue out the door at Corner <b>Roast</b> already"
    );
    let (status, answer) = get("/v1/search/tweet_search?q=user:mara&limit=2");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["hits"].as_array().unwrap().len(), 2);
    assert!(answer["total"].as_u64().unwrap() > 2);
    let (status, answer) = get("/v1/search/tweet_search?q=%28unclosed");
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("Syntax Error"));
}

/// `count` tweets with ids 0.., as JSON lines.
fn write_tweets(path: &Path, count: u64) {
    let mut text = String::new();
    for id in 0..count {
        text.push_str(&format!(
            "{{\"id\":{id},\"user\":\"u{}\",\"text\":\"tweet number {id}\",\"likes\":{}}}\n",
            id % 37,
            id % 101
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A pipeline `bulk.yaml` in `dir` that indexes `tweets.jsonl` into the
/// cluster at `url`, with `settings` added to `elasticsearch:`.
fn bulk_pipeline(dir: &Path, url: &str, settings: &str) -> std::path::PathBuf {
    let file = dir.join("bulk.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
checkpoint:
  interval: 200ms
  store: checkpoints
sources:
  tweets:
    type: file
    path: tweets.jsonl
    schema: {{ id: int64, user: string, text: string, likes: int64 }}
sinks:
  cluster:
    type: search
    inputs: [tweets]
    id: id
    elasticsearch:
      url: {url}
      index: tweets
      timeout: 1s
      retry: {{ initial_backoff: 10ms, max_backoff: 200ms }}
{settings}
"#
        ),
    )
    .unwrap();
    file
}

/// Runs `bulk.yaml` (from [`bulk_pipeline`]) in its directory, where its
/// dead letters go (`.flumen/bulk/dead_letters`).
fn run_bulk(file: &Path) -> std::process::Output {
    flumen()
        .current_dir(file.parent().unwrap())
        .args(["run", "--progress", "off"])
        .arg(file)
        .output()
        .unwrap()
}

#[cfg(feature = "serve")]
#[test]
fn the_bulk_sink_lands_every_document_once_through_item_and_request_failures() {
    use super::bulk_server::{BulkServer, Fates, RequestFate};
    const TWEETS: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    write_tweets(&dir.path().join("tweets.jsonl"), TWEETS);
    // Ids ending in 07 are refused as unparsable, 13 as conflicting; one
    // in ten is answered 429 the first time, one in ten 503; some whole
    // requests time out, lose their connection, or are answered 503/429.
    let refused = |id: u64| [7, 13].contains(&(id % 100));
    let server = BulkServer::start(
        Fates {
            request: Box::new(|n| match n % 11 {
                3 => RequestFate::Stall,
                5 => RequestFate::Drop,
                7 => RequestFate::Status(503),
                9 => RequestFate::Status(429),
                _ => RequestFate::Answer,
            }),
            item: Box::new(move |id, attempt| {
                let id: u64 = id.parse().unwrap();
                match (id % 100, id % 10, attempt) {
                    (7, ..) => 400,
                    (13, ..) => 409,
                    (_, 1, 1) => 429,
                    (_, 2, 1 | 2) => 503,
                    _ => 201,
                }
            }),
            authorization: None,
        },
        None,
    );
    let file = bulk_pipeline(dir.path(), &server.url, "      max_documents: 300");
    let output = run_bulk(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let seen = server.seen.lock().unwrap();
    let expected: Vec<u64> = (0..TWEETS).filter(|id| !refused(*id)).collect();
    let indexed: Vec<u64> = seen
        .documents
        .keys()
        .map(|id| id.parse().unwrap())
        .collect();
    let mut indexed_sorted = indexed.clone();
    indexed_sorted.sort_unstable();
    assert_eq!(indexed_sorted, expected, "every document lands, once by id");
    for (id, document) in &seen.documents {
        assert_eq!(document["text"], format!("tweet number {id}"));
        assert_eq!(document["id"], id.parse::<u64>().unwrap());
    }
    assert_eq!(
        seen.sent_again_after_accepted, 0,
        "nothing accepted was sent again"
    );
    for status in [201, 400, 409, 429, 503] {
        assert!(
            seen.answered.get(&status).is_some_and(|n| *n > 0),
            "{seen:?}"
        );
    }
    for fate in ["stalled", "dropped", "503", "429"] {
        assert!(seen.failed_requests.contains_key(fate), "{seen:?}");
    }

    let dead = super::json_lines(&dir.path().join(".flumen/bulk/dead_letters"));
    let mut dead_ids: Vec<u64> = dead
        .iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d["record"].as_str().unwrap()).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    dead_ids.sort_unstable();
    let refused_ids: Vec<u64> = (0..TWEETS).filter(|id| refused(*id)).collect();
    assert_eq!(
        dead_ids, refused_ids,
        "the 400s and 409s reach the dead letters"
    );
    let reasons: Vec<&str> = dead.iter().map(|d| d["error"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"the cluster refused the document: HTTP 400: mapper_parsing_exception: failed to parse field [likes] of type [long]"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "the cluster refused the document: HTTP 409: version_conflict_engine_exception"
        )),
        "{reasons:?}"
    );
}

#[cfg(feature = "serve")]
#[test]
fn the_bulk_sink_speaks_tls_with_a_private_ca_and_sends_its_api_key() {
    use super::bulk_server::{BulkServer, Fates, RequestFate};
    let dir = tempfile::tempdir().unwrap();
    write_tweets(&dir.path().join("tweets.jsonl"), 50);
    let (cert, key) = super::self_signed_certificate(dir.path());
    let server = BulkServer::start(
        Fates {
            request: Box::new(|_| RequestFate::Answer),
            item: Box::new(|_, _| 201),
            authorization: Some("ApiKey c2VjcmV0OmtleQ==".into()),
        },
        Some((&cert, &key)),
    );
    let settings = |key: &str| {
        format!(
            "      api_key: {key}\n      ca_file: {}\n      retry: {{ initial_backoff: 10ms, max_backoff: 100ms, max_attempts: 2 }}",
            cert.display()
        )
    };
    let file = bulk_pipeline(dir.path(), &server.url, &settings("c2VjcmV0OmtleQ=="));
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "      retry: { initial_backoff: 10ms, max_backoff: 200ms }\n",
        "",
    );
    std::fs::write(&file, &text).unwrap();
    let output = run_bulk(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server.seen.lock().unwrap().documents.len(), 50);

    // A wrong key fails the run, naming the setting, and sends nothing
    // to the dead letters.
    std::fs::write(&file, text.replace("c2VjcmV0OmtleQ==", "d3Jvbmc=")).unwrap();
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let output = run_bulk(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "answered HTTP 401 Unauthorized (check `username` and `password`, or `api_key`)"
        ),
        "{stderr}"
    );
    assert!(super::json_lines(&dir.path().join(".flumen/bulk/dead_letters")).is_empty());
}

#[test]
fn a_million_documents_answer_random_queries_as_datafusion_does() {
    use arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::SessionContext;
    use flumen_sinks::search::SearchReader;

    const DOCUMENTS: i64 = 1_000_000;
    const USERS: i64 = 5_000;
    const LIKES: i64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let user = |id: i64| format!("u{}", id % USERS);
    let likes = |id: i64| id * 7_919 % LIKES;
    // Every text has a token of its own, `k<id>x`.
    let text = |id: i64| format!("fresh coffee at stall {} k{id}x", id % 97);
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(dir.path().join("tweets.jsonl")).unwrap(),
        );
        for id in 0..DOCUMENTS {
            writeln!(
                out,
                r#"{{"id":{id},"user":"{}","likes":{},"text":"{}"}}"#,
                user(id),
                likes(id),
                text(id)
            )
            .unwrap();
        }
    }
    let file = dir.path().join("index.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
checkpoint:
  interval: 5s
  store: {dir}/checkpoints
sources:
  tweets:
    type: file
    path: {dir}/tweets.jsonl
    schema: {{ id: int64, user: string, likes: int64, text: string }}
sinks:
  tweet_search:
    type: search
    inputs: [tweets]
    path: {dir}/index
    id: id
    fields:
      user: {{ type: keyword }}
      likes: {{ type: number }}
      text: {{ type: text }}
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    run_to_end(&file);

    // DataFusion's answers over the same rows.
    let ids: Vec<i64> = (0..DOCUMENTS).collect();
    let batch = arrow::record_batch::RecordBatch::try_from_iter([
        (
            "id",
            std::sync::Arc::new(Int64Array::from(ids.clone())) as arrow::array::ArrayRef,
        ),
        (
            "user",
            std::sync::Arc::new(StringArray::from_iter_values(ids.iter().map(|i| user(*i)))),
        ),
        (
            "likes",
            std::sync::Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| likes(*i)))),
        ),
        (
            "text",
            std::sync::Arc::new(StringArray::from_iter_values(ids.iter().map(|i| text(*i)))),
        ),
    ])
    .unwrap();
    let context = SessionContext::new();
    context.register_batch("tweets", batch).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = |condition: &str| -> Vec<i64> {
        let batches = runtime
            .block_on(async {
                context
                    .sql(&format!(
                        "SELECT id FROM tweets WHERE {condition} ORDER BY id"
                    ))
                    .await?
                    .collect()
                    .await
            })
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    };

    let reader = SearchReader::open(&dir.path().join("index")).unwrap();
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: i64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        (random % below as u64) as i64
    };
    assert_eq!(reader.count("*").unwrap() as i64, DOCUMENTS);
    let (total, _) = reader.search("*", 1, 0).unwrap();
    assert_eq!(
        total,
        flumen_sinks::search::Total {
            count: flumen_sinks::search::COUNT_UP_TO,
            exact: false
        },
        "a search counts up to a bound"
    );
    for round in 0..200 {
        let (query, condition) = match round % 3 {
            0 => {
                let user = user(next(USERS));
                (format!("user:{user}"), format!("\"user\" = '{user}'"))
            }
            1 => {
                let low = next(LIKES);
                let high = low + next(4);
                (
                    format!("likes:[{low} TO {high}]"),
                    format!("likes BETWEEN {low} AND {high}"),
                )
            }
            _ => {
                let id = next(DOCUMENTS);
                (format!("k{id}x"), format!("text LIKE '%k{id}x%'"))
            }
        };
        let expected = answer(&condition);
        let (total, hits) = reader.search(&query, 10_000, 0).unwrap();
        let mut found: Vec<i64> = hits
            .iter()
            .map(|hit| hit.document["_id"].as_str().unwrap().parse().unwrap())
            .collect();
        found.sort_unstable();
        assert!(total.exact);
        assert_eq!(total.count, expected.len(), "`{query}`");
        assert!(
            found == expected,
            "`{query}`: the hits differ from `{condition}`"
        );
    }
}

#[test]
fn queries_while_indexing_never_see_an_uncommitted_checkpoint() {
    use flumen_sinks::search::SearchReader;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.yaml");
    // People joining at a steady pace, indexed by id.
    std::fs::write(
        &file,
        format!(
            r#"
checkpoint:
  interval: 200ms
  store: {dir}/checkpoints
sources:
  people:
    type: nexmark
    kind: person
    events: 150000
    max_events_per_second: 50000
sinks:
  indexed:
    type: search
    inputs: [people]
    path: {dir}/index
    id: id
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    // The run dies once checkpoint 6 is recorded, before it is committed:
    // its rows stay staged, never applied.
    let mut run = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .env("FLUMEN_CRASH_BEFORE_COMMIT", "6")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let index = dir.path().join("index");
    let mut seen = Vec::new();
    let mut reader = None;
    while run.try_wait().unwrap().is_none() {
        if reader.is_none() {
            reader = SearchReader::open(&index).ok();
        }
        if let Some(reader) = &reader {
            seen.push(reader.count("*").unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let committed = SearchReader::open(&index).unwrap().count("*").unwrap();
    let staged = dir.path().join("index.staged/6.arrow");
    let staged_rows: usize =
        arrow::ipc::reader::FileReader::try_new(std::fs::File::open(&staged).unwrap(), None)
            .unwrap()
            .map(|batch| batch.unwrap().num_rows())
            .sum();
    assert!(staged_rows > 0, "checkpoint 6 staged rows");
    let counts: std::collections::BTreeSet<usize> = seen.iter().copied().collect();
    assert!(
        counts.len() > 2,
        "queries ran while the index grew: {counts:?}"
    );
    assert!(
        seen.iter().all(|count| *count <= committed),
        "a query saw more than the committed checkpoints hold ({committed}): {counts:?}"
    );

    // Restarted, the run commits checkpoint 6's rows and goes on.
    run_to_end(&file);
    let (_, total) = search(&index, "*", 1);
    assert!(
        total >= committed + staged_rows,
        "{total} < {committed} + {staged_rows}"
    );
}

#[test]
fn a_search_sink_needs_one_index_and_an_id_for_a_cluster() {
    let sink = |settings: &str| {
        super::config_error(&format!(
            "sources:\n  tweets:\n    type: nexmark\n    kind: person\n    events: 10\nsinks:\n  found:\n    type: search\n    inputs: [tweets]\n{settings}"
        ))
    };
    let neither = sink("    id: id\n");
    assert!(
        neither
            .contains("needs an index: `path` (an embedded index's directory) or `elasticsearch`"),
        "{neither}"
    );
    let both = sink(
        "    path: index\n    elasticsearch: { url: \"http://127.0.0.1:9200\", index: people }\n",
    );
    assert!(
        both.contains("give one of `path` and `elasticsearch`"),
        "{both}"
    );
    let no_id = sink("    elasticsearch: { url: \"http://127.0.0.1:9200\", index: people }\n");
    assert!(
        no_id.contains("error: is needed with `elasticsearch`: a document's `_id` comes from it")
            && no_id.contains("(at `sinks.found.id`)"),
        "{no_id}"
    );
    let bad_url = sink("    id: id\n    elasticsearch: { url: \"es:9200\", index: people }\n");
    assert!(
        bad_url.contains("sinks.found.elasticsearch.url"),
        "{bad_url}"
    );
}
