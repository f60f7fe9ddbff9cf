//! The aggregator: the customer, price and tax services run (as Flumen
//! serving three views), and the invoice pipeline enriches 51 invoice
//! lines from all three over HTTP, then totals each invoice. Every
//! invoice equals DataFusion's join of the same files, grouped.

use serde_json::Value;

use super::{Example, data, datafusion};

#[test]
fn every_invoice_is_enriched_from_three_services_and_totalled_as_datafusion_answers() {
    let address = format!("127.0.0.1:{}", flumen_core::testing::free_port());
    let mut example = Example::new("aggregator");
    example
        .set("SERVICES_LISTEN", &address)
        .set("SERVICES", format!("http://{address}"))
        .set("LINGER", "10m");
    let mut services = example.start("services.yaml", &[]);
    services.wait_for_log("for 10m");

    let log = example.run("invoices.yaml");
    assert!(
        log.contains("in: invoice_lines=51; out: invoices=20; rejected: 0"),
        "{log}"
    );
    services.interrupt();

    let expected = datafusion(
        "SELECT invoice_id, l.customer, c.name AS customer_name, c.country, \
                count(*) AS lines, sum(quantity) AS items, \
                round(sum(round(quantity * price, 2)), 2) AS net, \
                round(sum(round(quantity * price * rate, 2)), 2) AS tax \
         FROM lines l JOIN customers c ON l.customer = c.customer \
                      JOIN prices p ON l.sku = p.sku \
                      JOIN tax_rates t ON c.country = t.country \
         GROUP BY invoice_id, l.customer, c.name, c.country",
        &[
            ("lines", &data("invoice_lines.jsonl")),
            ("customers", &data("customers.csv")),
            ("prices", &data("prices.csv")),
            ("tax_rates", &data("tax_rates.csv")),
        ],
    );
    assert_eq!(expected.len(), 20);
    let invoices = example.kv(example.out().join("invoices.redb").to_str().unwrap());
    assert_eq!(invoices.len(), 20);
    let money = |v: &Value| v.as_f64().unwrap();
    for row in &expected {
        let invoice = &invoices[&format!("invoice:{}", row["invoice_id"])];
        for column in ["customer", "customer_name", "country", "lines", "items"] {
            assert_eq!(invoice[column], row[column], "{column} of {invoice}");
        }
        for column in ["net", "tax"] {
            assert!(
                (money(&invoice[column]) - money(&row[column])).abs() < 1e-6,
                "{column} of {invoice}: {row}"
            );
        }
        let total = money(&row["net"]) + money(&row["tax"]);
        assert!(
            (money(&invoice["total"]) - total).abs() < 0.0051,
            "{invoice}: {row}"
        );
    }
}
