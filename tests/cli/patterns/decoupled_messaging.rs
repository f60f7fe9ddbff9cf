//! Decoupled messaging behind a robust API: clients post 100 events to
//! the gateway while the services behind it are down. Each is answered
//! at once (202, or 400 for a malformed one, which admits nothing); a
//! retried request is admitted once. When the services come up, every
//! order and payment is delivered once to its service; the payments the
//! payments service refuses are in the gateway's dead letters with its
//! answer; an event of no known kind is set aside; and each request's
//! status says it is done.

use std::collections::BTreeMap;

use flumen_core::testing::free_port;
use serde_json::{Value, json};

use super::{Example, send, wait_until};

/// Event ids received by each service.
fn received(example: &Example, service: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        crate::json_lines(&example.out().join(format!("{service}_received")))
            .iter()
            .map(|row| row["event_id"].as_str().unwrap().to_string())
            .collect();
    ids.sort();
    ids
}

#[test]
fn events_accepted_while_services_are_down_are_delivered_once_or_dead_lettered() {
    let [gateway, orders, payments] = [0; 3].map(|_| format!("127.0.0.1:{}", free_port()));
    let mut example = Example::new("decoupled_messaging");
    example
        .set("LISTEN", &gateway)
        .set("ORDERS_LISTEN", &orders)
        .set("PAYMENTS_LISTEN", &payments)
        .set(
            "ORDERS_URL",
            format!("http://{orders}/v1/streams/orders/events"),
        )
        .set(
            "PAYMENTS_URL",
            format!("http://{payments}/v1/streams/payments/events"),
        );
    let mut api = example.start("gateway.yaml", &[]);
    api.wait_for_log("accepting events");
    let events_url = format!("http://{gateway}/v1/streams/events/events");
    let client = reqwest::Client::new();
    let post = |body: &Value, key: Option<&str>| {
        let mut request = client.post(&events_url).bearer_auth("dev-token").json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        send(request)
    };

    // 50 orders and 50 payments, ten to a request; every tenth payment
    // has no amount.
    let mut statuses = Vec::new();
    for request in 0..10 {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                let n = request * 10 + i;
                match n % 2 {
                    0 => json!({"event_id": format!("o{n}"), "kind": "order_placed", "order_id": n, "customer": "ana", "total": 9.5}),
                    _ if n % 20 == 1 => json!({"event_id": format!("p{n}"), "kind": "payment_received", "order_id": n - 1}),
                    _ => json!({"event_id": format!("p{n}"), "kind": "payment_received", "order_id": n - 1, "amount": 9.5}),
                }
            })
            .collect();
        let key = format!("batch-{request}");
        let (status, first) = post(&json!(events), Some(&key));
        assert_eq!(status, 202, "{first}");
        // A client that did not hear the answer sends it again.
        let (status, again) = post(&json!(events), Some(&key));
        assert_eq!(status, 202, "{again}");
        assert_eq!(first["id"], again["id"], "a retry is the same request");
        statuses.push(first["status_url"].as_str().unwrap().to_string());
    }
    let (status, refused) = post(&json!({"kind": "order_placed", "order_id": 1}), None);
    assert_eq!(status, 400, "no event_id: {refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("event_id"),
        "{refused}"
    );
    let (status, _) = post(&json!({"event_id": "r1", "kind": "refund_requested"}), None);
    assert_eq!(status, 202);
    let (status, _) = send(client.post(&events_url).json(&json!({"event_id": "x"})));
    assert_eq!(status, 401, "no token");

    // The services come up; the gateway's retries reach them.
    let mut services = example.start("services.yaml", &[]);
    services.wait_for_log("accepting events");
    wait_until("every order and good payment delivered", || {
        received(&example, "orders").len() == 50 && received(&example, "payments").len() == 45
    });
    let orders_got = received(&example, "orders");
    let mut orders_sent: Vec<String> = (0..100).step_by(2).map(|n| format!("o{n}")).collect();
    orders_sent.sort();
    assert_eq!(orders_got, orders_sent, "each order once");
    let mut payments_sent: Vec<String> = (1..100)
        .step_by(2)
        .filter(|n| n % 20 != 1)
        .map(|n| format!("p{n}"))
        .collect();
    payments_sent.sort();
    assert_eq!(
        received(&example, "payments"),
        payments_sent,
        "each payment once"
    );

    // Asked about a request, the gateway says it is done: its events
    // were delivered (or dead-lettered) and committed.
    for status_url in &statuses {
        let url = format!("http://{gateway}{status_url}");
        wait_until("the request's status to be done", || {
            let (status, body) = send(client.get(&url).bearer_auth("dev-token"));
            assert_eq!(status, 200, "{body}");
            body["status"] == "done"
        });
    }

    let log = api.interrupt();
    services.interrupt();
    assert!(
        log.contains("retrying"),
        "the services were down at first:\n{log}"
    );

    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for row in crate::json_lines(&example.out().join("gateway/dead_letters")) {
        assert_eq!(row["component"], "payments_service", "{row}");
        let record: Value = serde_json::from_str(row["record"].as_str().unwrap()).unwrap();
        refused.insert(
            record["event_id"].as_str().unwrap().to_string(),
            row["error"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(
        refused.keys().cloned().collect::<Vec<_>>(),
        ["p1", "p21", "p41", "p61", "p81"],
        "the payments without an amount, refused by their service"
    );
    assert!(
        refused
            .values()
            .all(|e| e.contains("400") && e.contains("`amount` is required")),
        "{refused:?}"
    );
    let unroutable = crate::json_lines(&example.out().join("gateway/unroutable"));
    assert_eq!(
        unroutable,
        [json!({"event_id": "r1", "kind": "refund_requested"})]
    );
}
