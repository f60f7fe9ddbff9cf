//! The strangler: the façade is run three times, at 10%, 50% and 100% of
//! the customers' orders for the new service, with 400 requests posted
//! each time. Every request is handled once; a customer's orders go
//! where `key_bucket(customer, 100) < share` says; and a customer moved
//! to the new service is never sent back to the legacy one.

use std::collections::{BTreeMap, BTreeSet};

use flumen_core::sql::bucket_of;
use flumen_core::testing::free_port;
use serde_json::json;

use super::{Example, send, wait_until};

/// Which service handled each request: request id → (service, customer,
/// path).
fn handled(example: &Example) -> BTreeMap<String, Vec<(String, String, String)>> {
    let mut handled: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for service in ["legacy", "orders_service"] {
        for row in crate::json_lines(&example.out().join(format!("handled_by_{service}"))) {
            handled
                .entry(row["request_id"].as_str().unwrap().to_string())
                .or_default()
                .push((
                    service.to_string(),
                    row["customer"].as_str().unwrap().to_string(),
                    row["path"].as_str().unwrap().to_string(),
                ));
        }
    }
    handled
}

#[test]
fn the_new_service_takes_a_growing_stable_share_of_customers_and_no_request_is_lost() {
    let [facade, legacy, orders] = [0; 3].map(|_| format!("127.0.0.1:{}", free_port()));
    let mut example = Example::new("strangler");
    example
        .set("LISTEN", &facade)
        .set("LEGACY_LISTEN", &legacy)
        .set("ORDERS_LISTEN", &orders)
        .set(
            "LEGACY_URL",
            format!("http://{legacy}/v1/streams/requests/events"),
        )
        .set(
            "ORDERS_URL",
            format!("http://{orders}/v1/streams/requests/events"),
        );
    let mut services = example.start("services.yaml", &[]);
    services.wait_for_log("accepting events");

    let client = reqwest::Client::new();
    let mut moved_before = BTreeSet::new();
    let mut posted = 0;
    for share in [10u64, 50, 100] {
        let mut run = example.start("facade.yaml", &[("NEW_SHARE", share.to_string())]);
        run.wait_for_log("accepting events");
        // 400 requests from 100 customers: two orders to one menu read.
        let requests: Vec<_> = (0..400)
            .map(|i| {
                json!({
                    "request_id": format!("{share}-{i}"),
                    "customer": format!("c{}", i % 100),
                    "path": if i % 3 == 2 { "/menu" } else { "/orders" },
                    "body": "2 flat whites",
                })
            })
            .collect();
        for chunk in requests.chunks(50) {
            let (status, body) = send(
                client
                    .post(format!("http://{facade}/v1/streams/requests/events"))
                    .bearer_auth("dev-token")
                    .json(chunk),
            );
            assert_eq!(status, 202, "{body}");
        }
        posted += requests.len();
        wait_until("every request handled", || {
            handled(&example).len() == posted
        });
        run.interrupt();

        let handled = handled(&example);
        let mut moved = BTreeSet::new();
        for (id, by) in handled
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("{share}-")))
        {
            assert_eq!(by.len(), 1, "{id} handled once: {by:?}");
            let (service, customer, path) = &by[0];
            let new = path == "/orders" && bucket_of(customer, 100) < share;
            assert_eq!(service == "orders_service", new, "{id}: {by:?} at {share}%");
            if new {
                moved.insert(customer.clone());
            }
        }
        assert!(
            moved_before.is_subset(&moved),
            "no customer goes back at {share}%: {:?}",
            moved_before.difference(&moved).collect::<Vec<_>>()
        );
        let expected = match share {
            10 => 3..=25,
            50 => 35..=65,
            _ => 100..=100,
        };
        assert!(
            expected.contains(&moved.len()),
            "{} customers moved at {share}%",
            moved.len()
        );
        moved_before = moved;
    }
    services.interrupt();
}
