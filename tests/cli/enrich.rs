//! The `enrich` transform against a customer service on loopback that is
//! slow, fails one call in ten (HTTP 500), lets one in fifty run past the
//! pipeline's timeout, and always fails for a few customers: every
//! invoice is enriched once in the committed output, or dead-lettered
//! after its retries, also across SIGKILLs (when dead letters are at
//! least once); and the cache's hits are in the metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::crash::{Attempt, Random, committed, run_and_kill};
use super::{flumen, free_port};

const INVOICES: u64 = 3_000;
const CUSTOMERS: u64 = 300;

/// Customers the service never answers for (503 every time).
fn always_fails(customer: u64) -> bool {
    customer.is_multiple_of(97)
}

/// The service's customer record.
fn tier(customer: u64) -> &'static str {
    if customer.is_multiple_of(3) {
        "gold"
    } else {
        "silver"
    }
}

/// The customer service: `GET /customers/{id}` answers
/// `{"name": "customer-<id>", "tier": …}` after `delay`. Of every 50
/// calls, five answer HTTP 500 and one waits two seconds (past the
/// pipeline's timeout) first.
struct Service {
    calls: AtomicU64,
    delay: Duration,
}

async fn customer(State(service): State<Arc<Service>>, UrlPath(id): UrlPath<u64>) -> Response {
    let call = service.calls.fetch_add(1, Ordering::Relaxed);
    if always_fails(id) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if call % 10 == 3 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "flaky").into_response();
    }
    let delay = match call % 50 == 7 {
        true => Duration::from_secs(2),
        false => service.delay,
    };
    tokio::time::sleep(delay).await;
    axum::Json(serde_json::json!({ "name": format!("customer-{id}"), "tier": tier(id) }))
        .into_response()
}

/// Starts the service on a port of its own, on a runtime of its own;
/// returns its address. It accepts connections from the start: the socket
/// is listening before this returns.
fn start_service(delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let service = Arc::new(Service {
        calls: AtomicU64::new(0),
        delay,
    });
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new()
                .route("/customers/{id}", axum::routing::get(customer))
                .with_state(service);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    address
}

/// Invoice `i` is for customer `i % 300`.
fn write_invoices(path: &Path) {
    let lines: Vec<String> = (0..INVOICES)
        .map(|i| {
            format!(
                "{{\"invoice\":{i},\"customer\":{},\"amount\":{i}}}",
                i % CUSTOMERS
            )
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Invoices → enrich (the customer's name and tier) → files, with dead
/// letters in files too; checkpoints every 100 ms. Small batches keep few
/// rows queued ahead of a checkpoint's barrier. `extra` goes into the
/// enrich settings.
fn pipeline(dir: &Path, service: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/checkpoints
dead_letter:
  type: file
  path: {dir}/dead_letters
sources:
  invoices:
    type: file
    path: {dir}/invoices.jsonl
    schema: {{ invoice: int64, customer: int64, amount: int64 }}
    batch_size: 10
transforms:
  with_customer:
    type: enrich
    inputs: [invoices]
    url: http://{service}/customers/{{customer}}
    columns: {{ name: string, tier: string }}
    timeout: 200ms
    retry: {{ initial_backoff: 10ms, max_backoff: 50ms, max_attempts: 4 }}
    circuit_breaker: {{ failures: 50, open_for: 100ms }}
{extra}
sinks:
  enriched:
    type: file
    inputs: [with_customer]
    path: {dir}/out
"#,
        dir = dir.display()
    );
    let path = dir.join("invoices.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every invoice enriched once with its customer's record in `out`, or
/// dead-lettered after its four attempts: always for the customers the
/// service never answers, and now and then for another whose attempts all
/// met the service's failures. After crashes (`crashed`), dead letters
/// are at least once: a record rejected after the last checkpoint is
/// rejected again when it is read again, and may then even be enriched.
fn assert_each_invoice_once(dir: &Path, crashed: bool) {
    let mut enriched: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for line in committed(&dir.join("out")) {
        let row: serde_json::Value = serde_json::from_str(&line).unwrap();
        let invoice = row["invoice"].as_u64().unwrap();
        assert!(
            enriched.insert(invoice, row).is_none(),
            "invoice {invoice} was written twice"
        );
    }
    let mut dead: BTreeMap<u64, String> = BTreeMap::new();
    for line in committed(&dir.join("dead_letters")) {
        let letter: serde_json::Value = serde_json::from_str(&line).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(letter["record"].as_str().unwrap()).unwrap();
        let invoice = record["invoice"].as_u64().unwrap();
        let error = letter["error"].as_str().unwrap().to_string();
        assert!(
            error.starts_with("gave up after 4 attempts"),
            "invoice {invoice}: {error}"
        );
        let again = dead.insert(invoice, error).is_some();
        assert!(
            crashed || !again,
            "invoice {invoice} was dead-lettered twice"
        );
    }
    for invoice in 0..INVOICES {
        let customer = invoice % CUSTOMERS;
        match (enriched.get(&invoice), dead.get(&invoice)) {
            (None, None) => panic!("invoice {invoice} was neither enriched nor dead-lettered"),
            (Some(_), Some(error)) if !crashed => {
                panic!("invoice {invoice} was enriched and dead-lettered ({error})")
            }
            (Some(row), _) => {
                assert!(!always_fails(customer), "invoice {invoice} was enriched");
                assert_eq!(row["customer"], customer);
                assert_eq!(row["amount"], invoice);
                assert_eq!(row["name"], format!("customer-{customer}"));
                assert_eq!(row["tier"], tier(customer));
            }
            (None, Some(error)) if always_fails(customer) => {
                assert!(error.contains("503"), "{error}")
            }
            (None, Some(error)) => assert!(error.contains("500"), "{error}"),
        }
    }
}

#[test]
fn every_invoice_is_enriched_once_or_dead_lettered_against_a_flaky_service() {
    let dir = tempfile::tempdir().unwrap();
    write_invoices(&dir.path().join("invoices.jsonl"));
    let service = start_service(Duration::from_millis(2));
    let file = pipeline(dir.path(), &service, "    concurrency: 32");
    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert_each_invoice_once(dir.path(), false);
}

#[test]
fn sigkilled_three_times_mid_run_every_invoice_is_enriched_once() {
    let dir = tempfile::tempdir().unwrap();
    write_invoices(&dir.path().join("invoices.jsonl"));
    // 20 ms a call, four at a time: the run takes over ten seconds, and
    // is killed with calls in flight.
    let service = start_service(Duration::from_millis(20));
    let file = pipeline(
        dir.path(),
        &service,
        "    concurrency: 4\n    max_in_flight: 100",
    );
    let mut random = Random::new();
    let mut kills = 0;
    while kills < 3 {
        match run_and_kill(&file, &mut random) {
            Attempt::Killed => kills += 1,
            Attempt::Finished => break,
        }
    }
    assert_eq!(
        kills, 3,
        "the run finished before it was killed three times"
    );
    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("restoring from checkpoint"), "{log}");
    assert_each_invoice_once(dir.path(), true);
}

#[test]
fn the_cache_answers_repeated_customers_and_its_hits_are_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write_invoices(&dir.path().join("invoices.jsonl"));
    let service = start_service(Duration::from_millis(2));
    let file = pipeline(
        dir.path(),
        &service,
        "    concurrency: 32\n    cache: { ttl: 1h, max_entries: 1000 }",
    );
    let address = format!("127.0.0.1:{}", free_port());
    let mut running = super::Running::start_file(
        &file,
        &[
            "--metrics-addr",
            &address,
            "--metrics-linger",
            "5m",
            "--progress",
            "off",
        ],
    );
    let summary = running.wait_for_log("; out: enriched=");
    let metrics = super::scrape(&address);
    running.signal("TERM");
    let (_, code, stderr) = running.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(summary.contains("finished"), "{summary}");
    let counter = |name: &str| {
        metrics
            .get(&format!("{name}{{node=\"with_customer\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {name} in {metrics:?}"))
    };
    let (hits, misses) = (
        counter("flumen_enrich_cache_hits_total"),
        counter("flumen_enrich_cache_misses_total"),
    );
    // Every invoice is looked up once; a customer the service answered is
    // called for again only while its first call is still in flight.
    assert_eq!(hits + misses, INVOICES as f64);
    assert!(misses >= CUSTOMERS as f64, "{misses} misses");
    assert!(hits >= (INVOICES / 2) as f64, "{hits} hits of {INVOICES}");
    assert!(
        stderr.contains("of lookups answered without a call"),
        "{stderr}"
    );
    assert_each_invoice_once(dir.path(), false);
}
