//! The ingest body parser against anything a client can send: plain or
//! gzipped (in one member or several, cut short or trailed by garbage), one
//! object, an array or NDJSON, of values near every type's limits, and
//! random bytes. It never panics, and what it admits the source decodes:
//! a 202 means the events will be delivered.

use std::io::Write;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use flumen_core::testing::fuzz_cases;
use hyper::http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;

use super::events::{EventCheck, EventDecoder, Events, record_events};
use super::ingest::decompress;

fn schema() -> SchemaRef {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("day", DataType::Date32, true),
        Field::new("small", DataType::Int32, true),
        Field::new("count", DataType::UInt16, true),
        Field::new("price", DataType::Float64, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("tags", list(DataType::Utf8), true),
        Field::new("scores", list(DataType::Int64), true),
    ]))
}

/// A JSON value as text, often near the edge of what a column takes.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "2147483647",
            "2147483648",
            "-2147483649",
            "65535",
            "65536",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551616",
            "1e400",
            "-0",
            "0.5",
            "1E3",
            "\"2026-01-01T00:00:00Z\"",
            "\"2026-13-45\"",
            "\"not a date\"",
            "\"\"",
            "\"2026-01-01\"",
            "\"+262143-01-01T00:00:00Z\"",
            "\"\\ud800\"",
            "\"\\u0000\"",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..3).prop_map(|fields| {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A field name: mostly the schema's, sometimes another, sometimes
/// written with escapes.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id", "name", "at", "day", "small", "count", "price", "flag", "tags", "scores",
        ])
        .prop_map(|k| format!("\"{k}\"")),
        Just("\"\\u0069d\"".to_string()),
        "[a-z]{1,6}".prop_map(|k| format!("\"{k}\"")),
    ]
}

/// A value that fits the column `name`, mostly; sometimes one near the
/// edge of it, or of another kind.
fn column_value(name: &'static str) -> BoxedStrategy<String> {
    let string = || "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap());
    let fitting: BoxedStrategy<String> = match name {
        "id" => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        "name" => string().boxed(),
        "at" => prop_oneof![
            (0i64..4_000_000_000_000).prop_map(|n| n.to_string()),
            (1970u32..2100, 1u32..13, 1u32..29, 0u32..24)
                .prop_map(|(y, m, d, h)| format!("\"{y}-{m:02}-{d:02}T{h:02}:00:00Z\"")),
        ]
        .boxed(),
        "day" => prop_oneof![
            (-100_000i32..100_000).prop_map(|n| n.to_string()),
            (1970u32..2100, 1u32..13, 1u32..29)
                .prop_map(|(y, m, d)| format!("\"{y}-{m:02}-{d:02}\"")),
        ]
        .boxed(),
        "small" => any::<i32>().prop_map(|n| n.to_string()).boxed(),
        "count" => any::<u16>().prop_map(|n| n.to_string()).boxed(),
        "price" => prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            (-1e9f64..1e9).prop_map(|f| f.to_string()),
        ]
        .boxed(),
        "flag" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        "tags" => prop::collection::vec(string(), 0..3)
            .prop_map(|v| format!("[{}]", v.join(",")))
            .boxed(),
        _ => prop::collection::vec(any::<i64>(), 0..3)
            .prop_map(|v| format!("{v:?}"))
            .boxed(),
    };
    prop_oneof![24 => fitting, 1 => Just("null".to_string()), 1 => value()].boxed()
}

const COLUMNS: [&str; 10] = [
    "id", "name", "at", "day", "small", "count", "price", "flag", "tags", "scores",
];

/// An event: some of the schema's fields, usually fitting, and others.
fn event() -> impl Strategy<Value = String> {
    let fields: Vec<BoxedStrategy<Option<String>>> = COLUMNS
        .iter()
        .map(|name| {
            let weight = if *name == "id" { 9 } else { 5 };
            proptest::option::weighted(
                f64::from(weight) / 10.0,
                column_value(name).prop_map(move |v| format!("\"{name}\": {v}")),
            )
            .boxed()
        })
        .collect();
    let extra = prop::collection::vec((key(), value()), 0..2);
    (fields, extra).prop_map(|(fields, extra)| {
        let mut all: Vec<String> = fields.into_iter().flatten().collect();
        all.extend(extra.iter().map(|(k, v)| format!("{k}: {v}")));
        format!("{{{}}}", all.join(", "))
    })
}

/// Events as one object, an array or NDJSON.
fn shaped() -> impl Strategy<Value = String> {
    let events = prop::collection::vec(event(), 1..5);
    (events, 0..3u8).prop_map(|(events, shape)| match shape {
        0 => events[0].clone(),
        1 => format!("[{}]", events.join(", ")),
        _ => events.join("\n"),
    })
}

/// A body: well formed, damaged by a byte, or random.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => shaped().prop_map(String::into_bytes),
        2 => (shaped(), any::<usize>(), any::<u8>()).prop_map(|(body, at, byte)| {
            let mut body = body.into_bytes();
            let at = at % (body.len() + 1);
            body.insert(at, byte);
            body
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// How the body is sent.
#[derive(Debug, Clone)]
enum Encoding {
    Plain,
    Gzip,
    /// In gzip members cut at this byte of the body.
    Members(usize),
    /// Gzip, its last bytes cut off.
    Truncated(usize),
    /// Gzip, then these bytes.
    Trailing(Vec<u8>),
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        3 => Just(Encoding::Plain),
        1 => Just(Encoding::Gzip),
        1 => any::<usize>().prop_map(Encoding::Members),
        1 => (1..20usize).prop_map(Encoding::Truncated),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Encoding::Trailing),
    ]
}

/// `body` as sent, and the request's headers.
fn encode(body: &[u8], encoding: &Encoding) -> (Bytes, HeaderMap) {
    let mut headers = HeaderMap::new();
    let gzipped = match encoding {
        Encoding::Plain => return (Bytes::copy_from_slice(body), headers),
        Encoding::Gzip => gzip(body),
        Encoding::Members(at) => {
            let (a, b) = body.split_at(at % (body.len() + 1));
            [gzip(a), gzip(b)].concat()
        }
        Encoding::Truncated(cut) => {
            let mut all = gzip(body);
            all.truncate(all.len().saturating_sub(*cut));
            all
        }
        Encoding::Trailing(more) => [gzip(body), more.clone()].concat(),
    };
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    (gzipped.into(), headers)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever is admitted decodes, as the source reads it back, into as
    /// many rows as were counted, with every required column present and
    /// every value writable.
    #[test]
    fn fuzz_what_ingest_admits_the_source_decodes(body in body(), encoding in encoding()) {
        admitted_decodes(schema(), body, encoding)?;
    }

    /// The same for a schema of integers, `float64`, booleans and strings,
    /// whose single objects are settled by reading them through, without
    /// the decoder: the reading must refuse all that the decoder does.
    #[test]
    fn fuzz_what_ingest_reads_through_the_source_decodes(body in body(), encoding in encoding()) {
        admitted_decodes(flat_schema(), body, encoding)?;
    }
}

/// Columns whose values reading settles: the names of [`schema`]'s, so
/// that the same bodies fit, and its other fields are undeclared here.
fn flat_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("small", DataType::Int32, true),
        Field::new("count", DataType::UInt16, true),
        Field::new("price", DataType::Float64, true),
        Field::new("flag", DataType::Boolean, true),
    ]))
}

/// Whatever `schema`'s check admits of `body` sent as `encoding` decodes,
/// as the source reads it back, into as many rows as were counted, with
/// every required column present and every value writable.
fn admitted_decodes(
    schema: SchemaRef,
    body: Vec<u8>,
    encoding: Encoding,
) -> Result<(), TestCaseError> {
    let check = EventCheck::new(schema.clone(), &["id".to_string()]);
    let (sent, headers) = encode(&body, &encoding);
    let Ok(decompressed) = decompress(&headers, sent, 1 << 20) else {
        // Refused: only a damaged gzip stream may be.
        prop_assert!(matches!(
            encoding,
            Encoding::Truncated(_) | Encoding::Trailing(_)
        ));
        return Ok(());
    };
    if !matches!(encoding, Encoding::Plain) {
        prop_assert_eq!(&decompressed[..], &body[..], "every gzip member is read");
    }
    let Ok(events) = check.check(&decompressed) else {
        return Ok(());
    };
    let header = b"{}";
    let payload = events.record(header).concat();
    let source = EventDecoder::new(schema, 16);
    let decoded = source.decode([record_events(&payload), b"\n"]);
    prop_assert!(
        decoded.is_ok(),
        "admitted but does not decode: {:?}",
        decoded.err()
    );
    let batch = decoded.unwrap();
    prop_assert_eq!(batch.num_rows(), events.count() as usize);
    prop_assert_eq!(batch.column(0).null_count(), 0, "`id` is required");
    prop_assert!(flumen_core::writable::unwritable_rows(&batch).is_empty());
    if let Events::One(one) = events {
        prop_assert_eq!(one, decompressed.trim_ascii());
    }
    Ok(())
}
