use std::io::Write;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use flumen_core::prelude::*;
use flumen_core::storage;
use flumen_core::testing::CollectSink;
use proptest::prelude::*;

use super::lines::LineSplit;
use super::*;

fn write_file(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    path.to_str().unwrap().to_string()
}

fn json_lines(rows: usize) -> String {
    (0..rows)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"name\": \"{}\", \"ts\": \"2026-11-26T14:00:{:02}\"}}\n",
                "x".repeat(i % 17),
                i % 60
            )
        })
        .collect()
}

async fn read(config: FileSourceConfig, parallelism: usize) -> Result<Vec<i64>> {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("file", config.build()?)
        .parallelism(parallelism);
    graph.sink("out", sink, ["file"]);
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    graph.build()?.run_with(options).await?;
    let mut ids: Vec<i64> = collected
        .batches()
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

#[tokio::test]
async fn json_lines_read_once_at_any_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "events.jsonl", &json_lines(5_000));
    let config = FileSourceConfig {
        batch_size: 300,
        ..FileSourceConfig::new(&path).with_schema([
            ("id", "int64"),
            ("name", "string"),
            ("ts", "timestamp"),
        ])
    };
    for parallelism in [1, 2, 3, 8] {
        assert_eq!(
            read(config.clone(), parallelism).await.unwrap(),
            (0..5_000).collect::<Vec<_>>(),
            "parallelism {parallelism}"
        );
    }
}

#[tokio::test]
async fn schema_is_inferred_from_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "events.ndjson", &json_lines(10));
    let source = FileSourceConfig::new(&path).build().unwrap();
    let names: Vec<_> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "name", "ts"]);
    assert_eq!(
        read(FileSourceConfig::new(&path), 2).await.unwrap(),
        (0..10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn csv_with_a_header_split_in_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut content = String::from("id,name\n");
    for i in 0..1000 {
        content.push_str(&format!("{i},name {i}\n"));
    }
    let path = write_file(&dir, "people.csv", &content);
    let config = FileSourceConfig::new(&path).with_schema([("id", "int64"), ("name", "string")]);
    assert_eq!(
        read(config, 2).await.unwrap(),
        (0..1000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn parquet_row_groups_are_shared_out() {
    use ::parquet::arrow::ArrowWriter;
    use ::parquet::file::properties::WriterProperties;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("double", DataType::Int64, false),
    ]));
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        Some(properties),
    )
    .unwrap();
    for chunk in 0..10 {
        let ids: Vec<i64> = (chunk * 100..(chunk + 1) * 100).collect();
        let doubled: Vec<i64> = ids.iter().map(|i| i * 2).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(doubled)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
    let path = path.to_str().unwrap();
    // Inferred schema, three instances over ten row groups.
    assert_eq!(
        read(FileSourceConfig::new(path), 3).await.unwrap(),
        (0..1000).collect::<Vec<_>>()
    );
    // A declared subset, in another order, with a wider type.
    let declared =
        FileSourceConfig::new(path).with_schema([("double", "float64"), ("id", "int64")]);
    assert_eq!(
        read(declared, 1).await.unwrap(),
        (0..1000).collect::<Vec<_>>()
    );
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn reads_split_json_lines_from_s3() {
    use object_store::ObjectStoreExt;

    let storage = flumen_core::testing::test_s3();
    let url = "s3://flumen-test/file-source/events.jsonl";
    let location = storage::resolve(url, &storage, "path").unwrap();
    location
        .store
        .put(&location.path, json_lines(3_000).into())
        .await
        .unwrap();
    let config = FileSourceConfig {
        batch_size: 500,
        ..FileSourceConfig::new(url)
            .with_schema([("id", "int64"), ("name", "string"), ("ts", "timestamp")])
            .with_storage(storage)
    };
    for parallelism in [1, 3] {
        assert_eq!(
            read(config.clone(), parallelism).await.unwrap(),
            (0..3_000).collect::<Vec<_>>()
        );
    }
    // A remote file's schema cannot be read when the pipeline is built.
    let err = FileSourceConfig::new(url).build().unwrap_err().to_string();
    assert!(
        err.contains("is not a local file, so its schema must be declared"),
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_line_is_rejected_with_its_position_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        "bad.jsonl",
        "{\"id\": 1}\n{\"id\": oops}\n{\"id\": 3}\n{\"id\": \"x\"}\n{\"id\": 5}\n",
    );
    let config = FileSourceConfig::new(&path).with_schema([("id", "int64")]);
    let (sink, collected) = CollectSink::new();
    let (dead_sink, dead) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("file", config.build().unwrap());
    graph.sink("out", sink, ["file"]);
    graph.dead_letter_sink(dead_sink);
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    graph.build().unwrap().run_with(options).await.unwrap();
    assert_eq!(collected.rows(), 3);
    let dead = dead.batches();
    let column = |name: &str| -> Vec<String> {
        dead.iter()
            .flat_map(|b| {
                let column = b.column_by_name(name).unwrap().as_string::<i32>().clone();
                (0..b.num_rows()).map(move |i| column.value(i).to_string())
            })
            .collect()
    };
    assert_eq!(column("record"), ["{\"id\": oops}", "{\"id\": \"x\"}"]);
    assert_eq!(
        column("position"),
        [
            format!("{path}, line 2, byte 10"),
            format!("{path}, line 4, byte 33")
        ]
    );
    assert_eq!(column("component"), ["file", "file"]);

    // Told to fail, the source stops the run, naming the file.
    let config = FileSourceConfig::new(&path).with_schema([("id", "int64")]);
    let (sink, _) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("file", config.build().unwrap())
        .on_error(flumen_core::dead_letter::OnError::Fail);
    graph.sink("out", sink, ["file"]);
    let err = graph
        .build()
        .unwrap()
        .run_with(RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`file` failed: bad record: "), "{err}");
    assert!(err.contains("bad.jsonl, line 2, byte 10"), "{err}");
}

#[test]
fn config_errors_name_the_key() {
    let err = FileSourceConfig::new("data/events.txt")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration at `format`: cannot tell the format"),
        "{err}"
    );
    let err = FileSourceConfig::new("s3x://bucket/a.json")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported storage scheme `s3x://`"), "{err}");
    let err = FileSourceConfig::new("/nonexistent/a.json")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration at `path`: cannot read `/nonexistent/a.json`"),
        "{err}"
    );
}

async fn split_all(content: &[u8], splits: u64, chunk: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines");
    std::fs::write(&path, content).unwrap();
    let location = storage::resolve(path.to_str().unwrap(), &Default::default(), "path").unwrap();
    let size = content.len() as u64;
    let mut all = Vec::new();
    for i in 0..splits {
        let (start, end) = (size * i / splits, size * (i + 1) / splits);
        if start == end {
            continue;
        }
        let mut split = LineSplit::new(&location, start, end, size, chunk);
        while let Some((offset, bytes)) = split.next().await.unwrap() {
            // Each piece starts where the previous one of the split ended.
            assert!(offset >= start.saturating_sub(1) && offset < size.max(1));
            all.extend_from_slice(&bytes);
        }
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Splits cut at line boundaries: together they hand out every byte
    /// exactly once, in order, whatever the line lengths, the number of
    /// splits and the read chunk size.
    #[test]
    fn splits_cover_every_line_exactly_once(
        lines in prop::collection::vec("[a-z]{0,30}", 0..60),
        trailing_newline in any::<bool>(),
        splits in 1u64..9,
        chunk in 1u64..50,
    ) {
        let mut content = lines.join("\n");
        if trailing_newline && !content.is_empty() {
            content.push('\n');
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let read = runtime.block_on(split_all(content.as_bytes(), splits, chunk));
        prop_assert_eq!(String::from_utf8(read).unwrap(), content);
    }
}

/// Lines as a file can hold them: good rows among broken ones. Reading
/// never panics or fails, and a broken line never takes a good one down
/// with it.
mod fuzz {
    use super::*;
    use flumen_core::testing::fuzz_cases;

    /// Ids of good lines are this or more; nothing else makes them.
    const GOOD: i64 = 1 << 50;

    fn line() -> impl Strategy<Value = (Option<i64>, String)> {
        prop_oneof![
            3 => (0..1000i64, "[a-z ]{0,8}").prop_map(|(n, name)| {
                let id = GOOD + n;
                (Some(id), format!("{{\"id\": {id}, \"name\": \"{name}\"}}"))
            }),
            1 => "[{}\\[\\]\":,0-9a-z \\\\\t\r-]{0,24}".prop_map(|l| (None, l)),
            1 => prop::collection::vec(any::<u8>(), 0..24)
                .prop_map(|b| (None, String::from_utf8_lossy(&b).replace('\n', " "))),
        ]
    }

    async fn read_lines(
        content: &[u8],
        format: FileFormat,
        batch_size: usize,
    ) -> Result<(Vec<i64>, usize)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        std::fs::write(&path, content).unwrap();
        let location = storage::resolve(path.to_str().unwrap(), &Default::default(), "path")?;
        let size = content.len() as u64;
        let split = LineSplit::new(&location, 0, size, size, 64);
        let schema = flumen_core::schema::SchemaSpec::from([("id", "int64"), ("name", "string")])
            .to_schema("schema")?;
        let spec = super::super::lines::DecoderSpec {
            format,
            schema,
            batch_size,
            csv: CsvOptions {
                header: false,
                ..CsvOptions::default()
            },
        };
        let mut reader =
            super::super::lines::LineSplitReader::new(split, spec, true, "lines".into())?;
        let mut ids = Vec::new();
        let mut rejected = 0;
        while let Some(batch) = reader.next_batch().await? {
            let column = batch.column(0).as_primitive::<Int64Type>();
            ids.extend(column.iter().flatten());
            rejected += reader.take_rejected().len();
        }
        rejected += reader.take_rejected().len();
        Ok((ids, rejected))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: fuzz_cases(256),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fuzz_json_lines(lines in prop::collection::vec(line(), 0..30), batch_size in 1usize..8) {
            let content: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let read = runtime.block_on(read_lines(content.as_bytes(), FileFormat::Json, batch_size));
            prop_assert!(read.is_ok(), "{:?}", read.err());
            let (ids, _) = read.unwrap();
            let mut good: Vec<i64> = ids.into_iter().filter(|id| *id >= GOOD).collect();
            good.sort_unstable();
            let mut expected: Vec<i64> = lines.iter().filter_map(|(id, _)| *id).collect();
            expected.sort_unstable();
            prop_assert_eq!(good, expected);
        }

        #[test]
        fn fuzz_csv_lines(lines in prop::collection::vec("[0-9a-z,\" \\\\\r]{0,16}", 0..30), batch_size in 1usize..8) {
            let content: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let read = runtime.block_on(read_lines(content.as_bytes(), FileFormat::Csv, batch_size));
            prop_assert!(read.is_ok(), "{:?}", read.err());
            let (ids, rejected) = read.unwrap();
            // A quoted field may hold newlines, so lines and records need
            // not pair up; every line is still accounted for.
            prop_assert!(ids.len() + rejected <= lines.len().max(1) * 2);
        }
    }
}
