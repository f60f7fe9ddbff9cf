//! Crash tests: `flumen run` killed with SIGKILL at random points, and
//! killed between pre-commit and commit, then restarted; the committed
//! output must equal an uninterrupted run's, with no row lost or repeated.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::flumen;

const EVENTS: u64 = 1_000_000;

/// A small xorshift generator: the seed is printed, so a failure can be
/// replayed with `CRASH_SEED`.
pub(super) struct Random(u64);

impl Random {
    pub(super) fn new() -> Self {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: CRASH_SEED={seed}");
        Random(seed)
    }

    /// A generator that always draws the same numbers.
    pub(super) fn seeded(seed: u64) -> Self {
        Random(seed | 1)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Unique ids in shuffled order, one per millisecond of event time.
fn write_events(path: &Path) {
    let mut ids: Vec<u64> = (0..EVENTS).collect();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for i in (1..ids.len()).rev() {
        ids.swap(i, random.below(i as u64 + 1) as usize);
    }
    let mut text = String::with_capacity(EVENTS as usize * 40);
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "{{\"id\":{id},\"ts\":{}}}\n",
            1_700_000_000_000u64 + i as u64
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn pipeline(dir: &Path, out: &str, interval: &str) -> std::path::PathBuf {
    let store = format!("store: {}/{out}-checkpoints", dir.display());
    pipeline_with_store(dir, out, interval, &store)
}

/// [`pipeline`] with the checkpoint section's `store` (and `storage`) keys.
fn pipeline_with_store(dir: &Path, out: &str, interval: &str, store: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: {interval}
  {store}
sources:
  events:
    type: file
    path: {dir}/events.jsonl
    format: json
    batch_size: 1000
    schema: {{ id: int64, ts: timestamp_ms }}
    event_time: {{ column: ts }}
transforms:
  kept:
    type: sql
    inputs: [events]
    filter: id % 7 <> 0
  per_second:
    type: window
    inputs: [kept]
    window: {{ tumble: 1s }}
    aggregates: ["count(*) AS ids", "sum(id) AS id_sum"]
sinks:
  rows:
    type: file
    inputs: [kept]
    path: {dir}/{out}/rows
  windows:
    type: file
    inputs: [per_second]
    path: {dir}/{out}/windows
"#,
        dir = dir.display()
    );
    let path = dir.join(format!("{out}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every committed line under `dir` (none if it does not exist), sorted;
/// staging files are hidden (`.`-prefixed) and so not read.
pub(super) fn committed(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            lines.extend(text.lines().map(String::from));
        }
    }
    lines.sort();
    lines
}

fn staged(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

/// The uninterrupted run, and checks of its output against the input.
fn reference(dir: &Path) -> (Vec<String>, Vec<String>) {
    let file = pipeline(dir, "reference", "50ms");
    let status = super::run_pipeline(&file, None);
    assert!(status.success());
    let rows = committed(&dir.join("reference/rows"));
    let windows = committed(&dir.join("reference/windows"));
    // Every id not divisible by 7, once.
    let mut ids: Vec<u64> = rows
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["id"].as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (0..EVENTS).filter(|id| id % 7 != 0).collect();
    assert!(
        ids == expected,
        "the uninterrupted run lost or repeated ids"
    );
    assert_eq!(windows.len(), (EVENTS / 1000) as usize);
    (rows, windows)
}

pub(super) enum Attempt {
    Killed,
    Finished,
}

/// Starts the pipeline and kills it once it has completed a random number
/// of further checkpoints (and a random few milliseconds more), unless it
/// finishes first.
pub(super) fn run_and_kill(file: &Path, random: &mut Random) -> Attempt {
    let mut child = flumen()
        .args(["run", "--progress", "off", "--log-format", "json"])
        .arg(file)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let wanted = 1 + random.below(2);
    let mut seen = 0;
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        if line.contains("checkpoint complete") && !line.contains("\"finished\":true") {
            seen += 1;
            if seen == wanted {
                std::thread::sleep(Duration::from_millis(random.below(15)));
                // SIGKILL: no cleanup of any kind.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    if status.success() {
        Attempt::Finished
    } else {
        Attempt::Killed
    }
}

#[test]
fn sigkill_at_random_points_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let (rows, windows) = reference(dir.path());

    let file = pipeline(dir.path(), "crashed", "20ms");
    let mut random = Random::new();
    let started = Instant::now();
    let mut kills = 0;
    while let Attempt::Killed = run_and_kill(&file, &mut random) {
        kills += 1;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress after {kills} kills"
        );
    }
    eprintln!("killed {kills} times before the run finished");
    assert!(
        kills >= 10,
        "only {kills} kills: the run is too short to test"
    );
    let out = dir.path().join("crashed");
    assert_eq!(committed(&out.join("rows")).len(), rows.len());
    assert!(
        committed(&out.join("rows")) == rows,
        "rows differ from the uninterrupted run"
    );
    assert_eq!(committed(&out.join("windows")), windows);
    assert_eq!(staged(&out.join("rows")) + staged(&out.join("windows")), 0);
}

#[test]
fn a_crash_between_pre_commit_and_commit_is_committed_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let (rows, windows) = reference(dir.path());

    let file = pipeline(dir.path(), "crashed", "50ms");
    let status = super::run_pipeline(&file, Some(2));
    assert!(
        !status.success(),
        "the process should have died before committing"
    );
    let out = dir.path().join("crashed");
    // Checkpoint 2 is recorded, its files staged, not yet visible.
    assert!(staged(&out.join("rows")) > 0);
    let visible = committed(&out.join("rows")).len();
    assert!(visible < rows.len());

    let status = super::run_pipeline(&file, None);
    assert!(status.success());
    assert!(
        committed(&out.join("rows")) == rows,
        "rows differ from the uninterrupted run"
    );
    assert_eq!(committed(&out.join("windows")), windows);
    assert_eq!(staged(&out.join("rows")) + staged(&out.join("windows")), 0);
}

#[test]
fn an_upgraded_pipeline_keeps_its_state_and_refuses_state_it_cannot_restore() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let (rows, windows) = reference(dir.path());
    let file = pipeline(dir.path(), "upgraded", "50ms");
    let original = std::fs::read_to_string(&file).unwrap();
    // Stopped mid-run, with windows open in checkpoint 3.
    assert!(!super::run_pipeline(&file, Some(3)).success());

    // Without the window and its sink, their state has nowhere to go: the
    // run is refused before anything runs, naming them.
    let without_window = original
        .replace(
            "  per_second:\n    type: window\n    inputs: [kept]\n    window: { tumble: 1s }\n    aggregates: [\"count(*) AS ids\", \"sum(id) AS id_sum\"]\n",
            "",
        )
        .replace(
            &format!(
                "  windows:\n    type: file\n    inputs: [per_second]\n    path: {}/upgraded/windows\n",
                dir.path().display()
            ),
            "",
        );
    assert!(!without_window.contains("per_second"), "{without_window}");
    std::fs::write(&file, &without_window).unwrap();
    let refused = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        error.contains("checkpoint 3 does not fit this pipeline: ")
            && error.contains("component `per_second` is no longer in the pipeline")
            && error.contains("Give --allow-non-restored-state to start without it"),
        "{error}"
    );

    // A copy of the store, for the last part.
    let store = dir.path().join("upgraded-checkpoints");
    let copy = dir.path().join("copied-checkpoints");
    assert!(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(&store)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );

    // A new sink, and a stateless transform at another parallelism: the
    // state is restored, and the output is the uninterrupted run's.
    let upgraded = original
        .replace(
            "    filter: id % 7 <> 0\n",
            "    filter: id % 7 <> 0\n    parallelism: 2\n",
        )
        .replace(
            "sinks:\n",
            &format!(
                "sinks:\n  copies:\n    type: file\n    inputs: [kept]\n    path: {}/upgraded/copies\n",
                dir.path().display()
            ),
        );
    std::fs::write(&file, &upgraded).unwrap();
    assert!(super::run_pipeline(&file, None).success());
    let out = dir.path().join("upgraded");
    assert!(
        committed(&out.join("rows")) == rows,
        "rows differ from the uninterrupted run"
    );
    assert_eq!(committed(&out.join("windows")), windows);
    let copies = committed(&out.join("copies"));
    assert!(
        !copies.is_empty() && copies.len() < rows.len(),
        "the new sink writes what is read after the restore: {} rows",
        copies.len()
    );

    // Told to, a run drops the state it cannot restore (from the copy,
    // where the windows were still open).
    std::fs::write(
        &file,
        without_window.replace(&store.display().to_string(), &copy.display().to_string()),
    )
    .unwrap();
    let output = flumen()
        .args(["run", "--progress", "off", "--allow-non-restored-state"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("starting it without its state (--allow-non-restored-state)"),
        "{log}"
    );
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let (rows, windows) = reference(dir.path());

    // A first run dies after checkpoint 3; then a state file of it is cut
    // short, as a disk that filled up would leave it.
    let file = pipeline(dir.path(), "crashed", "50ms");
    let status = super::run_pipeline(&file, Some(3));
    assert!(!status.success());
    let store = dir.path().join("crashed-checkpoints");
    let state = std::fs::read_dir(store.join("chk-0000000003"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "arrow"))
        .expect("checkpoint 3 holds the window's state");
    let length = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("checkpoint 3 is unusable; trying the one before it"),
        "{log}"
    );
    assert!(log.contains("is corrupt"), "{log}");
    let out = dir.path().join("crashed");
    assert!(
        committed(&out.join("rows")) == rows,
        "rows differ from the uninterrupted run"
    );
    assert_eq!(committed(&out.join("windows")), windows);

    let listed = flumen()
        .args(["checkpoints", "list"])
        .arg(&store)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("yes"),
        "the final checkpoint is listed: {listed}"
    );
}

#[test]
fn checkpoints_go_to_an_s3_store_and_restore_from_it() {
    let endpoint = std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "this test needs an S3-API server: run it through scripts/test.sh, which starts one",
    );
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let (rows, windows) = reference(dir.path());

    let prefix = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('.', "");
    let store = format!(
        "store: s3://flumen-test/checkpoints/{prefix}\n  storage: {{ endpoint: \"{endpoint}\", region: us-east-1, access_key_id: flumen, secret_access_key: flumen }}"
    );
    let file = pipeline_with_store(dir.path(), "crashed", "50ms", &store);
    let status = super::run_pipeline(&file, Some(2));
    assert!(!status.success());
    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("restoring from checkpoint checkpoint=2"),
        "{log}"
    );
    let out = dir.path().join("crashed");
    assert!(
        committed(&out.join("rows")) == rows,
        "rows differ from the uninterrupted run"
    );
    assert_eq!(committed(&out.join("windows")), windows);
}

#[test]
fn sigusr1_takes_a_checkpoint_now() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paced.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
checkpoint:
  interval: 1h
  store: {dir}/checkpoints
sources:
  bids:
    type: nexmark
    kind: bid
    events: 30000
    max_events_per_second: 10000
sinks:
  out:
    type: file
    inputs: [bids]
    path: {dir}/out
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut child = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut asked = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        // Logged once the run is set up, its signal handlers among it; the
        // paced source then runs for about three seconds.
        if !asked && line.contains("starting without a checkpoint") {
            let status = std::process::Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            asked = true;
        }
    }
    assert!(child.wait().unwrap().success(), "{log}");
    assert!(log.contains("SIGUSR1: taking a checkpoint"), "{log}");
    assert!(
        log.contains("checkpoint complete checkpoint=1") && log.contains("finished=false"),
        "{log}"
    );
    // Two files: the one checkpoint asked for, and the end.
    assert_eq!(
        std::fs::read_dir(dir.path().join("out")).unwrap().count(),
        2
    );
}

/// Rows, distinct ids and the sum of ids in the Parquet files under `dir`
/// (staging excluded), read by DataFusion.
fn parquet_figures(dir: &Path) -> (i64, i64, i64) {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_parquet("lake", dir.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*), count(DISTINCT id), sum(id) FROM lake")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let value = |c: usize| {
            arrow::compute::cast(batches[0].column(c), &arrow::datatypes::DataType::Int64)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0)
        };
        (value(0), value(1), value(2))
    })
}

#[test]
fn parquet_files_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let yaml = format!(
        r#"
checkpoint:
  interval: 20ms
  store: {dir}/checkpoints
sources:
  events:
    type: file
    path: {dir}/events.jsonl
    format: json
    batch_size: 1000
    schema: {{ id: int64, ts: timestamp_ms }}
    event_time: {{ column: ts }}
transforms:
  kept:
    type: sql
    inputs: [events]
    filter: id % 7 <> 0
sinks:
  lake:
    type: parquet
    inputs: [kept]
    path: {dir}/lake
    time_partition: hour
    max_rows: 50000
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("lake.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut random = Random::new();
    let mut kills = 0;
    while let Attempt::Killed = run_and_kill(&file, &mut random) {
        kills += 1;
        assert!(kills < 1000, "no progress");
    }
    eprintln!("killed {kills} times before the run finished");
    assert!(
        kills >= 10,
        "only {kills} kills: the run is too short to test"
    );
    let expected: Vec<i64> = (0..EVENTS as i64).filter(|id| id % 7 != 0).collect();
    let (rows, distinct, sum) = parquet_figures(&dir.path().join("lake"));
    assert_eq!(rows, expected.len() as i64, "rows lost or repeated");
    assert_eq!(distinct, expected.len() as i64);
    assert_eq!(sum, expected.iter().sum::<i64>());
    assert!(
        !dir.path().join("lake/_staging").exists()
            || std::fs::read_dir(dir.path().join("lake/_staging"))
                .unwrap()
                .count()
                == 0,
        "staged files remain"
    );
}
