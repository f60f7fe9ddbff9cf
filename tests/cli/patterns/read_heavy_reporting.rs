//! The read-heavy reporting engine: one `flumen run` of the social app
//! serves the three endpoints' views, each checked over HTTP against
//! DataFusion over the tweets, views and follows files: search hits, the
//! top tweets by views, and every user's timeline of the latest five
//! tweets of the people they follow.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Example, data, datafusion, get_json};

fn answer(sql: &str) -> Vec<Value> {
    datafusion(
        sql,
        &[
            ("tweets", &data("tweets.jsonl")),
            ("views", &data("tweet_views.jsonl")),
            ("follows", &data("follows.csv")),
        ],
    )
}

#[test]
fn one_run_serves_search_the_top_tweets_and_every_timeline_as_datafusion_answers() {
    let port = flumen_core::testing::free_port();
    let mut example = Example::new("read_heavy_reporting");
    example.set("PORT", port).set("LINGER", "10m");
    let mut app = example.start("social_app.yaml", &[]);
    app.wait_for_log("for 10m");
    assert!(
        app.log().contains("in: tweets=18, views=80;"),
        "{}",
        app.log()
    );
    let base = format!("http://127.0.0.1:{port}/v1");

    // /search: stemmed words, and hashtags.
    for (query, condition) in [
        ("roast", "lower(text) LIKE '%roast%'"),
        ("hashtags:coffee", "array_has(hashtags, 'coffee')"),
        ("%22cold+brew%22", "lower(text) LIKE '%cold brew%'"),
    ] {
        let found = get_json(&format!("{base}/search/tweet_search?q={query}&limit=100"));
        let found: BTreeSet<i64> = found["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["document"]["_id"].as_str().unwrap().parse().unwrap())
            .collect();
        let expected: BTreeSet<i64> = answer(&format!("SELECT id FROM tweets WHERE {condition}"))
            .iter()
            .map(|row| row["id"].as_i64().unwrap())
            .collect();
        assert!(!expected.is_empty(), "{query}");
        assert_eq!(found, expected, "search {query}");
    }

    // The top tweets: every viewed tweet (there are fewer than 1000),
    // with its count.
    let top = get_json(&format!("{base}/views/top_tweets?limit=1000"));
    let top: BTreeMap<i64, i64> = top["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["value"]["tweet_id"].as_i64().unwrap(),
                e["value"]["views"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<i64, i64> =
        answer("SELECT tweet_id, count(*) AS views FROM views JOIN tweets ON tweet_id = id GROUP BY tweet_id")
            .iter()
            .map(|row| (row["tweet_id"].as_i64().unwrap(), row["views"].as_i64().unwrap()))
            .collect();
    assert_eq!(top, expected, "the top tweets");

    // Each follower's timeline: the latest five tweets of the people
    // they follow, read as one prefix.
    let timelines = answer(
        "SELECT follower, id FROM (SELECT follower, id, row_number() OVER \
         (PARTITION BY follower ORDER BY posted_at DESC, id DESC) AS n \
         FROM tweets JOIN follows ON user = followee) WHERE n <= 5",
    );
    let mut expected: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for row in &timelines {
        expected
            .entry(row["follower"].as_str().unwrap().to_string())
            .or_default()
            .insert(row["id"].as_i64().unwrap());
    }
    assert_eq!(expected.len(), 10, "every reader follows someone");
    for (follower, ids) in &expected {
        let timeline = get_json(&format!(
            "{base}/views/timeline?prefix=timeline:{follower}:"
        ));
        let got: BTreeSet<i64> = timeline["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"]["id"].as_i64().unwrap())
            .collect();
        assert_eq!(&got, ids, "{follower}'s timeline");
    }
    app.interrupt();
}
