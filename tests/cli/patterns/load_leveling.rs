//! Queue-based load leveling: the migration worker feeds 3,000 articles
//! to the example's fragile legacy service, which answers 503 past four
//! requests in flight. Leveled to 500 a second, 4 requests of 10 at a
//! time, every article arrives once and the service is never overloaded.

use std::path::Path;
use std::process::{Command, Stdio};

use flumen_core::testing::free_port;

use super::{Background, Example, get_json, wait_listening};

/// The example's legacy service, built with the tests (`cargo test`
/// builds examples).
fn legacy_service() -> Command {
    let binary = Path::new(env!("CARGO_BIN_EXE_flumen"))
        .parent()
        .unwrap()
        .join("examples/legacy_service");
    assert!(
        binary.exists(),
        "{} is built by `cargo test` (or `cargo build --examples`)",
        binary.display()
    );
    Command::new(binary)
}

#[test]
fn the_migration_worker_feeds_every_article_once_without_overloading_the_legacy_service() {
    let mut example = Example::new("load_leveling");
    let articles = example.out().join("articles.jsonl");
    let made = legacy_service()
        .args(["articles", "3000", articles.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());

    let address = format!("127.0.0.1:{}", free_port());
    let service = legacy_service()
        .args(["serve", &address])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _service = Background {
        child: service,
        log: example.out().join("legacy.log"),
    };
    wait_listening(&address);

    let state = example.out().join("state");
    example
        .set("ARTICLES", articles.display())
        .set("STATE", state.display())
        .set("LEGACY_URL", format!("http://{address}/articles"));
    let log = example.run("migration.yaml");
    assert!(log.contains("out: legacy=3000; rejected: 0"), "{log}");

    let stats = get_json(&format!("http://{address}/stats"));
    assert_eq!(stats["articles"], 3000, "{stats}");
    assert_eq!(stats["distinct"], 3000, "each article once: {stats}");
    assert_eq!(stats["requests"], 300, "10 articles a request: {stats}");
    assert_eq!(stats["overloaded"], 0, "never past 4 in flight: {stats}");
}
