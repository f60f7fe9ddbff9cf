//! Fan-out and fan-in: 30 uploaded assets fan out to 90 rendition jobs
//! over three workers. The print renditions of the three assets without
//! a DPI fail and go to the dead letters; the fan-in marks the other 27
//! ready, and flags those three incomplete after the timeout instead of
//! leaving them unfinished.

use std::collections::{BTreeMap, BTreeSet};

use super::{Example, data, datafusion};

#[test]
fn assets_are_ready_once_all_three_renditions_arrive_and_flagged_when_one_never_does() {
    let mut example = Example::new("fan_out_fan_in");
    example.set("PORT", flumen_core::testing::free_port());
    let log = example.run("renditions.yaml");
    assert!(log.contains("rejected: 3 (workers=3)"), "{log}");

    let assets = datafusion(
        "SELECT asset_id, dpi FROM assets ORDER BY asset_id",
        &[("assets", &data("assets.jsonl"))],
    );
    assert_eq!(assets.len(), 30);
    let no_dpi: BTreeSet<i64> = assets
        .iter()
        .filter(|row| row["dpi"] == "unknown")
        .map(|row| row["asset_id"].as_i64().unwrap())
        .collect();
    assert_eq!(no_dpi.len(), 3);

    // Fan-out: every rendition job ran once, but the failed prints.
    let mut expected = BTreeSet::new();
    for row in &assets {
        let asset = row["asset_id"].as_i64().unwrap();
        for size in ["thumbnail", "web", "print"] {
            if !(size == "print" && no_dpi.contains(&asset)) {
                expected.insert((asset, size.to_string()));
            }
        }
    }
    let renditions = crate::json_lines(&example.out().join("renditions"));
    let done: BTreeSet<(i64, String)> = renditions
        .iter()
        .map(|r| {
            (
                r["asset_id"].as_i64().unwrap(),
                r["size"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(renditions.len(), done.len(), "each rendition once");
    assert_eq!(done, expected);

    // The failed renditions, in the dead letters with their error.
    let rejected = crate::json_lines(&example.out().join("dead_letters"));
    let failed: BTreeSet<i64> = rejected
        .iter()
        .map(|r| {
            assert_eq!(r["component"], "workers");
            assert!(
                r["error"]
                    .as_str()
                    .unwrap()
                    .contains("Cannot cast string 'unknown'"),
                "{r}"
            );
            let record: serde_json::Value =
                serde_json::from_str(r["record"].as_str().unwrap()).unwrap();
            assert_eq!(record["size"], "print");
            record["asset_id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(failed, no_dpi);

    // Fan-in: ready with all three; the others short of one, and flagged.
    let status = example.kv(example.out().join("assets.redb").to_str().unwrap());
    assert_eq!(status.len(), 30);
    for row in &assets {
        let asset = row["asset_id"].as_i64().unwrap();
        let value = &status[&format!("asset:{asset}")];
        let (renditions, state) = match no_dpi.contains(&asset) {
            true => (2, "rendering"),
            false => (3, "ready"),
        };
        assert_eq!(value["renditions"], renditions, "{value}");
        assert_eq!(value["status"], state, "{value}");
    }
    let flagged: BTreeMap<String, serde_json::Value> = example.kv(example
        .out()
        .join("incomplete_assets.redb")
        .to_str()
        .unwrap());
    let flagged_ids: BTreeSet<i64> = flagged
        .values()
        .map(|v| {
            assert_eq!(v["renditions"], 2, "{v}");
            v["asset_id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        flagged_ids, no_dpi,
        "exactly the assets short of a rendition are flagged"
    );
}
