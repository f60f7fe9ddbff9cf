//! The console of a running pipeline: its status API (numbers that move,
//! and agree with the run's final report), and the page in
//! headless Chromium, driven over WebDriver (the protocol's few commands
//! it needs, spoken with reqwest).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use flumen_core::testing::free_port;
use serde_json::{Value, json};

use super::{block_on, flumen};

/// Text no page may turn into markup: it is in the pipeline's file name
/// and in the error of some rejected rows.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// Bids at 40,000 a second for 5 s: priced (one in 101 rejected, with an
/// error quoting [`MARKUP`]), counted per auction into a view, served with
/// the console, which stays up for 5 minutes after the end.
fn pipeline(dir: &Path, name: &str, port: u16) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint: {{ interval: 200ms, store: "{dir}/checkpoints" }}
dead_letter: {{ type: file, path: "{dir}/dead_letters" }}
serve: {{ listen: "127.0.0.1:{port}", linger: 5m }}
sources:
  bids:
    type: nexmark
    kind: bid
    events: 200000
    max_events_per_second: 40000
    parallelism: 2
transforms:
  priced:
    type: sql
    inputs: [bids]
    select:
      - auction
      - price
      - "CAST(CASE WHEN price % 101 = 0 THEN '{MARKUP}' ELSE '1' END AS INT) AS checked"
  per_auction:
    type: aggregate
    inputs: [priced]
    group_by: [auction]
    aggregates: ["count(*) AS bids"]
    emit: on_checkpoint
sinks:
  out:
    type: file
    inputs: [priced]
    path: "{dir}/out"
  counts:
    type: kv
    inputs: [per_auction]
    path: "{dir}/counts.redb"
    key: "auction:{{auction}}"
"#,
        dir = dir.display()
    );
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    file
}

/// A `flumen run` in the background, its log in a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(file: &Path) -> Running {
        let log = file.with_extension("log");
        let child = flumen()
            .args(["run", "--progress", "off"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited ({status}) before {needle:?}:\n{log}");
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Value {
    block_on(async {
        let answer = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.unwrap()
    })
}

/// `name=count` pairs of a summary line's part after `prefix`.
fn counts(summary: &str, prefix: &str) -> BTreeMap<String, u64> {
    let part = summary
        .split(prefix)
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    part.split(", ")
        .map(|pair| {
            let (name, count) = pair.trim().split_once('=').unwrap();
            (name.to_string(), count.parse().unwrap())
        })
        .collect()
}

fn node<'a>(nodes: &'a Value, name: &str) -> &'a Value {
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {nodes}"))
}

#[test]
fn the_status_api_moves_while_running_and_agrees_with_the_final_report() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut run = Running::start(&pipeline(dir.path(), "bids.yaml", port));
    run.wait_for_log("serving views at");
    run.wait_for_log("checkpoint complete");

    let status = get(port, "/v1/status");
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["pipeline"].as_str().unwrap().ends_with("bids.yaml"));
    let first = get(port, "/v1/nodes");
    let read = |nodes: &Value| node(nodes, "bids")["rows_out"].as_u64().unwrap();
    // Read again until a rate has been measured since the first read (the
    // API measures over a second or more).
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let now = get(port, "/v1/nodes");
        let rate = node(&now, "bids")["rows_out_per_second"].as_f64().unwrap();
        if read(&now) > read(&first) && rate > 0.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "no rate measured: {now}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(read(&second) > read(&first), "{first}\n{second}");
    assert!(
        node(&second, "bids")["rows_out_per_second"]
            .as_f64()
            .unwrap()
            > 1000.0
    );
    let bids = node(&second, "bids");
    assert_eq!(bids["kind"], "source");
    assert_eq!(bids["type"], "nexmark");
    assert_eq!(bids["instances"].as_array().unwrap().len(), 2);
    let priced = node(&second, "priced");
    assert_eq!(priced["inputs"], json!(["bids"]));
    assert!(priced["instances"][0]["channel_capacity"].as_u64().unwrap() > 0);
    assert!(get(port, "/v1/status")["uptime_seconds"].as_f64() > status["uptime_seconds"].as_f64());

    let checkpoints = get(port, "/v1/checkpoints");
    let latest = &checkpoints["checkpoints"][0];
    assert!(latest["id"].as_u64().unwrap() >= 1, "{checkpoints}");
    assert!(latest["duration_ms"].is_u64() && latest["alignment_ms"].is_f64());

    let summary = run.wait_for_log("finished in");
    let done = get(port, "/v1/nodes");
    for (name, rows) in counts(&summary, "in: ") {
        assert_eq!(node(&done, &name)["rows_out"], rows, "{name}: {summary}");
    }
    for (name, rows) in counts(&summary, "out: ") {
        assert_eq!(node(&done, &name)["rows_in"], rows, "{name}: {summary}");
    }
    let rejected = node(&done, "priced")["rejected"].as_u64().unwrap();
    assert!(rejected > 0);
    assert!(
        summary.contains(&format!("rejected: {rejected} (priced={rejected})")),
        "{summary}"
    );
    assert_eq!(get(port, "/v1/status")["state"], "finished");
    let final_checkpoint = &get(port, "/v1/checkpoints")["checkpoints"][0];
    assert_eq!(final_checkpoint["finished"], true, "{final_checkpoint}");
    let dead = get(port, "/v1/dead_letters/recent");
    let dead = dead["dead_letters"].as_array().unwrap();
    assert!(!dead.is_empty());
    assert_eq!(dead[0]["component"], "priced");
    assert!(
        dead[0]["error"].as_str().unwrap().contains(MARKUP),
        "{}",
        dead[0]
    );
}

/// A browser session over the WebDriver protocol (W3C), as chromedriver
/// speaks it: JSON over HTTP, a few commands.
struct Browser {
    client: reqwest::Client,
    session: String,
}

impl Browser {
    async fn start(webdriver: &str, capabilities: Value) -> Browser {
        let client = reqwest::Client::new();
        let answer: Value = client
            .post(format!("{webdriver}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": capabilities } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"));
        Browser {
            session: format!("{webdriver}/session/{id}"),
            client,
        }
    }

    /// Sends a command; its `value`.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// The text of the first element `css` selects, once one does (within
    /// 30 s).
    async fn text_of(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Value::String(text) = self.execute(&script).await {
                return text;
            }
            assert!(Instant::now() < deadline, "nothing matches {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }

    /// The browser's console messages at level SEVERE (chromedriver's log
    /// command).
    async fn console_errors(&self) -> Vec<String> {
        let log = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                json!({ "type": "browser" }),
            )
            .await;
        log.as_array()
            .unwrap_or_else(|| panic!("chromedriver's log: {log}"))
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].to_string())
            .collect()
    }

    async fn close(self) {
        self.client.delete(&self.session).send().await.unwrap();
    }
}

#[test]
fn the_page_shows_every_node_with_moving_rates_and_markup_as_text() {
    let webdriver = std::env::var("FLUMEN_TEST_WEBDRIVER")
        .expect("this test needs chromedriver: run it through scripts/test.sh, which starts it");
    let chromium = std::env::var("FLUMEN_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = pipeline(dir.path(), &format!("{MARKUP}.yaml"), port);
    let mut run = Running::start(&file);
    run.wait_for_log("serving views at");
    let profile = tempfile::tempdir().unwrap();

    block_on(async {
        let browser = Browser::start(
            &webdriver,
            json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
            }),
        )
        .await;
        browser.goto(&format!("http://127.0.0.1:{port}/")).await;

        // Every node has its row, and its label on the graph.
        for name in ["bids", "priced", "per_auction", "out", "counts"] {
            browser
                .text_of(&format!("tr[data-node='{name}'] td.name"))
                .await;
            let label = browser
                .text_of(&format!("#graph text[data-rate='{name}']"))
                .await;
            assert!(
                label.ends_with("rows/s") || label.is_empty(),
                "{name}: {label}"
            );
        }
        // The source's rate, looked at a refresh apart, has moved.
        let rate = "tr[data-node='bids'] td.rate-out";
        let first = browser.text_of(rate).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = browser.text_of(rate).await;
            if now != first {
                break;
            }
            assert!(Instant::now() < deadline, "the rate stayed {first}");
        }
        if let Ok(path) = std::env::var("FLUMEN_CONSOLE_SCREENSHOT") {
            std::fs::write(path, browser.screenshot().await).unwrap();
        }

        // Markup from the file name and from errors is shown as text.
        let shown = browser.text_of("#pipeline").await;
        assert!(shown.ends_with(&format!("{MARKUP}.yaml")), "{shown}");
        let error = browser.text_of("#dead_letters td.error").await;
        assert!(error.contains(MARKUP), "{error}");
        let images = browser
            .execute("return document.querySelectorAll('img').length")
            .await;
        assert_eq!(images, json!(0), "no markup was parsed");

        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
        browser.close().await;
    });
}
