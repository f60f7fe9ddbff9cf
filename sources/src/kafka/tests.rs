//! Decoding, commit notes, and the group's view of a checkpoint, against
//! librdkafka's mock cluster.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use flumen_core::prelude::*;

use super::KafkaSourceConfig;
use super::source::CommitNote;
use crate::payload::{Format, Payloads, ValueDecoder};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn payloads(messages: &[&str]) -> Payloads {
    let mut payloads = Payloads::default();
    for message in messages {
        payloads.push(message.as_bytes());
    }
    payloads
}

#[test]
fn json_messages_decode_in_one_pass_and_bad_ones_are_singled_out() {
    let decoder = ValueDecoder::new(Format::Json, schema());
    let good = decoder
        .decode(&payloads(&[r#"{"id":1,"name":"a"}"#, r#"{"id":2}"#]))
        .unwrap();
    assert!(good.kept.is_none() && good.failed.is_empty());
    assert_eq!(good.batch.num_rows(), 2);

    let mixed = decoder
        .decode(&payloads(&[
            r#"{"id":1}"#,
            r#"{"id":"two"}"#,
            "not json",
            r#"{"id":4}{"id":5}"#,
            r#"{"id":6}"#,
        ]))
        .unwrap();
    assert_eq!(mixed.kept, Some(vec![0, 4]));
    let failed: Vec<usize> = mixed.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, [1, 2, 3]);
    assert!(mixed.failed[2].1.contains("one record per message"));
    let ids = mixed.batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids, &Int64Array::from(vec![1, 6]));
}

#[test]
fn csv_and_text_and_bytes_values() {
    let csv = ValueDecoder::new(Format::Csv { delimiter: b';' }, schema());
    let decoded = csv.decode(&payloads(&["1;a", "x;b", "3;c"])).unwrap();
    assert_eq!(decoded.kept, Some(vec![0, 2]));

    let text = ValueDecoder::new(Format::String, crate::payload::value_schema(DataType::Utf8));
    let mut values = payloads(&["hello"]);
    values.push(&[0xff, 0xfe]);
    let decoded = text.decode(&values).unwrap();
    assert_eq!(decoded.kept, Some(vec![0]));
    assert!(decoded.failed[0].1.contains("not UTF-8"));

    let bytes = ValueDecoder::new(
        Format::Bytes,
        crate::payload::value_schema(DataType::Binary),
    );
    let decoded = bytes.decode(&values).unwrap();
    assert_eq!(decoded.batch.num_rows(), 2);
}

#[test]
fn avro_datums_decode_against_the_writer_schema() {
    let schema_text = r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":["null","string"]}]}"#;
    let avro = apache_avro::Schema::parse_str(schema_text).unwrap();
    let arrow = crate::payload::avro_to_arrow(&avro).unwrap();
    assert_eq!(arrow.field(0).data_type(), &DataType::Int64);
    assert!(arrow.field(1).is_nullable());

    let mut record = apache_avro::types::Record::new(&avro).unwrap();
    record.put("id", 7i64);
    record.put(
        "name",
        apache_avro::types::Value::Union(1, Box::new("seven".into())),
    );
    let datum = apache_avro::to_avro_datum(&avro, record).unwrap();
    let mut framed = vec![0, 0, 0, 0, 42];
    framed.extend_from_slice(&datum);

    let decoder = ValueDecoder::new(
        Format::Avro {
            schema: Arc::new(avro),
            confluent_header: true,
        },
        arrow,
    );
    let mut values = Payloads::default();
    values.push(&framed);
    values.push(&datum); // no header: rejected
    let decoded = decoder.decode(&values).unwrap();
    assert_eq!(decoded.kept, Some(vec![0]));
    assert_eq!(decoded.batch.column(1).as_string::<i32>().value(0), "seven");
}

#[test]
fn commit_notes_round_trip() {
    let note = CommitNote {
        member: "abc".into(),
        checkpoint: 12,
        from: 3400,
    };
    assert_eq!(CommitNote::parse(&note.render()), Some(note));
    assert_eq!(CommitNote::parse(""), None);
    assert_eq!(CommitNote::parse("something else"), None);
}

#[test]
fn bad_settings_name_the_key() {
    let mut config = KafkaSourceConfig::new("localhost:9092", &[], "g");
    assert!(config.build().unwrap_err().to_string().contains("topics"));
    config.topics = vec!["^orders-.*".into()];
    config.stop_at = Some(super::StopAt::Latest);
    assert!(config.build().unwrap_err().to_string().contains("stop_at"));
    let error = KafkaSourceConfig::new("localhost:9092", &["t"], "g")
        .with_schema([("id", "int64")])
        .with_property("no.such.property", "1")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("no.such.property"), "{error}");
    let error = KafkaSourceConfig::new("", &["t"], "g").build().unwrap_err();
    assert!(error.to_string().contains("brokers"), "{error}");
}

/// The group's committed offsets and their notes decide whether a
/// checkpoint was reported before its run stopped.
#[test]
fn a_checkpoint_counts_as_reported_only_if_the_group_shows_it() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let commit = |offset: i64, note: &CommitNote| {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "g")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut element = tpl.add_partition("events", 0);
        element.set_offset(Offset::Offset(offset)).unwrap();
        element.set_metadata(note.render());
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    };
    let source = KafkaSourceConfig::new(&brokers, &["events"], "g")
        .with_schema([("id", "int64")])
        .build()
        .unwrap();
    let position = |offset: i64| json!({"member": "me", "offsets": [{"topic": "events", "partition": 0, "offset": offset}]});
    let reported = |checkpoint: u64, offset: i64| {
        source
            .reported_upstream(checkpoint, &[position(offset)])
            .unwrap()
    };

    let mine = |checkpoint| CommitNote {
        member: "me".into(),
        checkpoint,
        from: 0,
    };
    commit(100, &mine(4));
    assert!(reported(4, 100), "our own commit of checkpoint 4");
    assert!(
        !reported(5, 150),
        "checkpoint 5 was written but not reported"
    );

    // Another member took the partition over from checkpoint 4's offset
    // and has gone past checkpoint 5's: 5 was not reported, 4 was.
    let theirs = CommitNote {
        member: "other".into(),
        checkpoint: 9,
        from: 100,
    };
    commit(300, &theirs);
    assert!(!reported(5, 150));
    assert!(reported(4, 100));
}

/// Message values as a producer could send them: never a panic or an
/// error for the whole chunk, every message either kept (one row each, in
/// order) or rejected, and every well-formed one kept.
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use flumen_core::testing::fuzz_cases;

    /// A value: well formed (and so to be kept), or anything.
    fn message(good: impl Strategy<Value = String>) -> impl Strategy<Value = (bool, Vec<u8>)> {
        prop_oneof![
            3 => good.prop_map(|m| (true, m.into_bytes())),
            1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|m| (false, m)),
            1 => "[{}\\[\\]\":,;0-9a-z \\\\\n-]{0,30}".prop_map(|m| (false, m.into_bytes())),
        ]
    }

    fn json_value() -> impl Strategy<Value = String> {
        (any::<i64>(), "[ -~]{0,10}")
            .prop_map(|(id, name)| json!({ "id": id, "name": name }).to_string())
    }

    fn csv_value() -> impl Strategy<Value = String> {
        (any::<i64>(), "[a-z ]{0,10}").prop_map(|(id, name)| format!("{id};{name}"))
    }

    fn check(decoder: &ValueDecoder, messages: &[(bool, Vec<u8>)]) -> Result<(), TestCaseError> {
        let mut values = Payloads::default();
        for (_, message) in messages {
            values.push(message);
        }
        let decoded = decoder.decode(&values);
        prop_assert!(decoded.is_ok(), "{:?}", decoded.err());
        let decoded = decoded.unwrap();
        let kept = decoded
            .kept
            .clone()
            .unwrap_or_else(|| (0..messages.len()).collect());
        prop_assert_eq!(decoded.batch.num_rows(), kept.len());
        let mut all: Vec<usize> = kept
            .iter()
            .copied()
            .chain(decoded.failed.iter().map(|(i, _)| *i))
            .collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..messages.len()).collect::<Vec<_>>());
        for (index, (good, _)) in messages.iter().enumerate() {
            if *good {
                prop_assert!(
                    kept.contains(&index),
                    "well-formed message {} rejected",
                    index
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: fuzz_cases(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fuzz_json_values(messages in prop::collection::vec(message(json_value()), 1..8)) {
            check(&ValueDecoder::new(Format::Json, schema()), &messages)?;
        }

        #[test]
        fn fuzz_csv_values(messages in prop::collection::vec(message(csv_value()), 1..8)) {
            check(&ValueDecoder::new(Format::Csv { delimiter: b';' }, schema()), &messages)?;
        }

        #[test]
        fn fuzz_avro_values(
            messages in prop::collection::vec(
                prop_oneof![
                    (any::<i64>(), proptest::option::of("[ -~]{0,10}")).prop_map(|(id, name)| (true, (id, name))),
                ],
                1..6,
            ),
            garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 0..4),
        ) {
            let schema_text = r#"{"type":"record","name":"Order","fields":[
                {"name":"id","type":"long"},
                {"name":"name","type":["null","string"]}]}"#;
            let avro = apache_avro::Schema::parse_str(schema_text).unwrap();
            let arrow = crate::payload::avro_to_arrow(&avro).unwrap();
            let mut all = Vec::new();
            for (good, (id, name)) in messages {
                let mut record = apache_avro::types::Record::new(&avro).unwrap();
                record.put("id", id);
                let name = match name {
                    Some(name) => apache_avro::types::Value::Union(1, Box::new(name.into())),
                    None => apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
                };
                record.put("name", name);
                let mut framed = vec![0, 0, 0, 0, 1];
                framed.extend(apache_avro::to_avro_datum(&avro, record).unwrap());
                all.push((good, framed));
            }
            all.extend(garbage.into_iter().map(|g| (false, g)));
            let decoder = ValueDecoder::new(
                Format::Avro { schema: Arc::new(avro), confluent_header: true },
                arrow,
            );
            check(&decoder, &all)?;
        }
    }
}
