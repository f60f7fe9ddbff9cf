use std::time::Duration;

use super::*;

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 200,
        ..LogOptions::default()
    }
}

async fn append_all(log: &DurableLog, payloads: &[&str]) -> Vec<u64> {
    let mut offsets = Vec::new();
    for payload in payloads {
        offsets.push(log.append(1, payload.as_bytes().to_vec()).await.unwrap());
    }
    offsets
}

fn payloads(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn records_survive_a_reopen_in_order_across_segments() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let options = LogOptions { fsync, ..options() };
        let dir = tempfile::tempdir().unwrap();
        let words: Vec<String> = (0..40).map(|i| format!("record number {i}")).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        {
            let log = DurableLog::open(dir.path(), options.clone()).unwrap();
            assert_eq!(append_all(&log, &refs).await, (0..40).collect::<Vec<u64>>());
        }
        let log = DurableLog::open(dir.path(), options).unwrap();
        assert!(
            segment::list(dir.path()).unwrap().len() > 3,
            "small segments roll"
        );
        let (records, next) = log.read(0, 1000, u64::MAX).unwrap();
        assert_eq!(payloads(&records), words, "{fsync:?}");
        assert_eq!(next, 40);
        assert_eq!(log.usage().events, 40);
        // Appending continues after the last record.
        assert_eq!(log.append(1, b"more".to_vec()).await.unwrap(), 40);
    }
}

#[tokio::test]
async fn concurrent_appends_each_get_their_own_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(dir.path(), LogOptions::default()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(1, format!("{i}").into_bytes()).await.unwrap()
        }));
    }
    let mut offsets = Vec::new();
    for task in tasks {
        offsets.push(task.await.unwrap());
    }
    offsets.sort();
    assert_eq!(offsets, (0..200).collect::<Vec<u64>>());
}

#[tokio::test]
async fn released_records_free_room_and_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(
        dir.path(),
        LogOptions {
            max_events: 10,
            ..options()
        },
    )
    .unwrap();
    let words: Vec<String> = (0..10).map(|i| format!("record number {i}")).collect();
    append_all(&log, &words.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(matches!(
        log.append(1, b"one too many".to_vec()).await,
        Err(AppendError::Full)
    ));
    let segments_before = segment::list(dir.path()).unwrap().len();
    log.release(8).unwrap();
    // The writer thread deletes them.
    keeper_has("deleted the segments", || {
        segment::list(dir.path()).unwrap().len() < segments_before
    })
    .await;
    assert_eq!(log.usage().events, 2);
    assert_eq!(log.append(1, b"fits now".to_vec()).await.unwrap(), 10);
    // A reopened log starts at what was released.
    drop(log);
    let log = DurableLog::open(dir.path(), options()).unwrap();
    assert_eq!(log.released(), 8);
    let (records, _) = log.read(0, 100, u64::MAX).unwrap();
    assert_eq!(records.first().map(|r| r.offset), Some(8));
    assert_eq!(records.len(), 3);
}

#[tokio::test]
async fn a_torn_last_write_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = DurableLog::open(dir.path(), LogOptions::default()).unwrap();
        append_all(&log, &["first", "second"]).await;
    }
    let (_, path) = segment::list(dir.path()).unwrap().pop().unwrap();
    // Half a frame at the end, as a crash mid-write leaves it.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[42, 0, 0, 0, 1, 0]).unwrap();
    drop(file);
    let log = DurableLog::open(dir.path(), LogOptions::default()).unwrap();
    assert!(log.quarantined().is_empty());
    assert_eq!(log.append(1, b"third".to_vec()).await.unwrap(), 2);
    let (records, _) = log.read(0, 10, u64::MAX).unwrap();
    assert_eq!(payloads(&records), ["first", "second", "third"]);
}

#[tokio::test]
async fn a_corrupt_segment_is_quarantined_and_the_rest_read() {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = (0..30).map(|i| format!("record number {i}")).collect();
    {
        let log = DurableLog::open(dir.path(), options()).unwrap();
        append_all(&log, &words.iter().map(String::as_str).collect::<Vec<_>>()).await;
    }
    let segments = segment::list(dir.path()).unwrap();
    let (damaged_base, damaged) = segments[1].clone();
    let next_base = segments[2].0;
    // Flip a byte in the middle of the second segment's first payload.
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[segment::FRAME_HEADER as usize + 2] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();

    let report = inspect(dir.path()).unwrap();
    assert!(matches!(
        report.segments[1].damage,
        Some(Damage::Corrupt { .. })
    ));

    let log = DurableLog::open(dir.path(), options()).unwrap();
    let quarantined = log.quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].offsets, damaged_base..next_base);
    assert!(quarantined[0].path.exists());
    let (records, next) = log.read(0, 1000, u64::MAX).unwrap();
    let expected: Vec<String> = words
        .iter()
        .enumerate()
        .filter(|(i, _)| !(damaged_base..next_base).contains(&(*i as u64)))
        .map(|(_, w)| w.clone())
        .collect();
    assert_eq!(payloads(&records), expected);
    assert_eq!(next, 30);
}

#[tokio::test]
async fn readers_wait_for_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(dir.path(), LogOptions::default()).unwrap();
    assert!(!log.wait_beyond(0, Duration::from_millis(20)).await);
    let writer = log.clone();
    tokio::spawn(async move { writer.append(1, b"late".to_vec()).await.unwrap() });
    assert!(log.wait_beyond(0, Duration::from_secs(5)).await);
}

/// A reader reading all along while many appends at once fill small
/// segments: whatever the log says it holds can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_readers_see_is_readable_while_segments_roll() {
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(
        dir.path(),
        LogOptions {
            fsync: FsyncPolicy::Never,
            ..options()
        },
    )
    .unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut read = Vec::new();
            while read.len() < 2000 {
                let (records, _) = log.read(read.len() as u64, 1000, u64::MAX).unwrap();
                read.extend(payloads(&records));
            }
            read
        })
    };
    let appends: Vec<_> = (0..2000)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(1, format!("{i:05}").into_bytes()).await })
        })
        .collect();
    let mut appended = Vec::new();
    for append in appends {
        appended.push(append.await.unwrap().unwrap());
    }
    let mut read = reader.join().unwrap();
    read.sort();
    let expected: Vec<String> = (0..2000).map(|i| format!("{i:05}")).collect();
    assert_eq!(read, expected);
}

/// `count` payloads, `record number 00` on, all of one length.
fn numbered(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("record number {i:02}"))
        .collect()
}

/// Waits until the keeper thread has kept `count` released segments as
/// spares.
async fn spares_kept(dir: &Path, count: usize) {
    keeper_has("kept spares", || {
        segment::spares(dir).unwrap().len() >= count
    })
    .await;
}

/// Waits until `done` says the keeper thread (which runs every 100 ms, on
/// its own) has done its part, failing after 5 s: the keeper has no signal
/// for a test to wait on, but what it does shows on disk.
async fn keeper_has(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "the keeper has not {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn released_segments_are_written_over_and_their_old_records_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let words = numbered(60);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    // Only released segments as spares: a segment of zeros written ahead
    // (at a time of the keeper's choosing) would be one more spare, and
    // which ones the appends below take would depend on that timing.
    let options = || LogOptions {
        preallocate: false,
        ..options()
    };
    {
        let log = DurableLog::open(dir.path(), options()).unwrap();
        append_all(&log, &refs[..40]).await;
        log.release(30).unwrap();
        spares_kept(dir.path(), SPARES).await;
        let spares = segment::spares(dir.path()).unwrap();
        // Enough to fill both spares and part of a third segment, so the
        // newest is a spare written over only in part.
        append_all(&log, &refs[40..47]).await;
        for spare in spares {
            assert!(!spare.exists(), "{} was not written over", spare.display());
        }
    }
    let log = DurableLog::open(dir.path(), options()).unwrap();
    assert!(log.quarantined().is_empty());
    let (records, next) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words[30..47]);
    assert_eq!(next, 47);
    // Appending goes on after the last record, not after the bytes of the
    // segment's earlier use.
    append_all(&log, &refs[47..]).await;
    drop(log);
    let log = DurableLog::open(dir.path(), options()).unwrap();
    let (records, _) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words[30..]);
}

#[tokio::test]
async fn a_torn_write_over_a_reused_segment_is_cut_off_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let words = numbered(40);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    {
        let log = DurableLog::open(dir.path(), options()).unwrap();
        append_all(&log, &refs[..30]).await;
        log.release(20).unwrap();
        spares_kept(dir.path(), 1).await;
        append_all(&log, &refs[30..33]).await;
    }
    // The process died writing the next record: its frame is there in
    // full, but its payload is not what was checksummed.
    let (_, newest) = segment::list(dir.path()).unwrap().pop().unwrap();
    let scan = segment::scan(&newest, segment::base_of(&newest).unwrap()).unwrap();
    let mut torn = Vec::new();
    let next = segment::base_of(&newest).unwrap() + scan.frames.len() as u64;
    segment::write_frame(&mut torn, next, 1, 0, &[b"never acknowledged"]).unwrap();
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, scan.valid_bytes).unwrap();
    drop(file);

    let log = DurableLog::open(dir.path(), options()).unwrap();
    assert!(log.quarantined().is_empty());
    let (records, _) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words[20..33]);
    assert_eq!(log.append(1, b"next".to_vec()).await.unwrap(), 33);
}

#[test]
fn a_file_of_another_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(segment::file_name(0)),
        b"\x05\0\0\0old format",
    )
    .unwrap();
    let error = DurableLog::open(dir.path(), options()).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("is not a buffer segment of this version"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_write_fails_its_appends_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    let log = DurableLog::open(&path, options()).unwrap();
    let first = "a record long enough to fill the small segment it starts".repeat(4);
    assert_eq!(append_all(&log, &[&first]).await, [0]);
    // The next append needs a new segment, in a directory now gone.
    std::fs::remove_dir_all(&path).unwrap();
    let failed = log.append(1, b"second").await;
    assert!(matches!(failed, Err(AppendError::Failed(_))), "{failed:?}");
    let broken = log.broken().expect("the log is broken");
    assert!(broken.starts_with("buffer write: "), "{broken}");
    // Nothing is taken after: no sync can vouch for it any more.
    assert!(matches!(
        log.append(1, b"third").await,
        Err(AppendError::Failed(_))
    ));
    assert_eq!(
        log.usage().records,
        1,
        "the failed appends gave back their room"
    );
    assert_eq!(log.end(), 1);
}

/// Waits until the keeper thread has written a spare segment ahead;
/// returns it.
async fn spare_written_ahead(dir: &Path) -> PathBuf {
    let zeroed = || {
        segment::spares(dir)
            .unwrap()
            .into_iter()
            .find(|spare| spare.to_string_lossy().contains("zeroed-"))
    };
    keeper_has("written a spare ahead", || zeroed().is_some()).await;
    zeroed().unwrap()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn segments_are_written_ahead_with_zeros_which_a_reopen_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_bytes: 1000,
        ..LogOptions::default()
    };
    let words = numbered(60);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    {
        let log = DurableLog::open(dir.path(), options.clone()).unwrap();
        // A new log's first segment is all there before any record.
        let (_, first) = segment::list(dir.path()).unwrap().pop().unwrap();
        assert_eq!(file_len(&first), 1000);
        // Half full (a frame is 28 + 16 bytes): the next is written ahead.
        append_all(&log, &refs[..12]).await;
        let spare = spare_written_ahead(dir.path()).await;
        assert_eq!(std::fs::read(&spare).unwrap(), vec![0; 1000]);
        append_all(&log, &refs[12..30]).await;
        assert!(!spare.exists(), "the spare was not taken");
        let segments = segment::list(dir.path()).unwrap();
        assert_eq!(segments.len(), 2);
        assert!(file_len(&segments[1].1) >= 1000);
    }
    // The zeros after the newest segment's records are kept, and appends
    // go on where the records end.
    let (_, newest) = segment::list(dir.path()).unwrap().pop().unwrap();
    let preallocated = file_len(&newest);
    let log = DurableLog::open(dir.path(), options.clone()).unwrap();
    assert_eq!(file_len(&newest), preallocated);
    let report = inspect(dir.path()).unwrap();
    assert!(report.segments.iter().all(|s| s.damage.is_none()));
    append_all(&log, &refs[30..]).await;
    drop(log);
    let log = DurableLog::open(dir.path(), options).unwrap();
    assert!(log.quarantined().is_empty());
    let (records, next) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words);
    assert_eq!(next, 60);
}

#[tokio::test]
async fn zeros_after_the_records_with_more_than_zeros_beyond_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_bytes: 4000,
        ..LogOptions::default()
    };
    {
        let log = DurableLog::open(dir.path(), options.clone()).unwrap();
        append_all(&log, &["first", "second"]).await;
    }
    // The process died writing the next records, and only a later page
    // of them reached the disk: a frame that checks out, after a gap of
    // zeros where the first frame should be.
    let (base, newest) = segment::list(dir.path()).unwrap().pop().unwrap();
    let scan = segment::scan(&newest, base).unwrap();
    let mut stray = Vec::new();
    segment::write_frame(&mut stray, base + 3, 1, 1, &[b"never acknowledged"]).unwrap();
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &stray, scan.valid_bytes + 100).unwrap();
    drop(file);

    let log = DurableLog::open(dir.path(), options.clone()).unwrap();
    assert!(log.quarantined().is_empty());
    assert_eq!(file_len(&newest), scan.valid_bytes);
    // Records 2 and 3 are new ones, not the stray frame.
    append_all(&log, &["third", "fourth"]).await;
    drop(log);
    let log = DurableLog::open(dir.path(), options).unwrap();
    let (records, _) = log.read(0, 10, u64::MAX).unwrap();
    assert_eq!(payloads(&records), ["first", "second", "third", "fourth"]);
}

/// Waits until the keeper thread has recorded `offset` as released on
/// disk: it has run since `offset` was released.
async fn released_on_disk(dir: &Path, offset: u64) {
    keeper_has("recorded the release", || {
        std::fs::read_to_string(dir.join(RELEASED_FILE)).ok() == Some(offset.to_string())
    })
    .await;
}

#[tokio::test]
async fn without_preallocate_segments_grow_as_records_come() {
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(
        dir.path(),
        LogOptions {
            segment_bytes: 1000,
            preallocate: false,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let words = numbered(15);
    append_all(&log, &words.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (_, first) = segment::list(dir.path()).unwrap().pop().unwrap();
    // The start, then 15 frames of 28 + 16 bytes.
    assert_eq!(file_len(&first), 8 + 15 * 44);
    // Two releases recorded: the keeper has been through a whole tick
    // with the segment half full.
    log.release(1).unwrap();
    released_on_disk(dir.path(), 1).await;
    log.release(2).unwrap();
    released_on_disk(dir.path(), 2).await;
    assert!(segment::spares(dir.path()).unwrap().is_empty());
}

/// Segments as a crash, a bad disk or a stranger could leave them: the
/// scanner and the log never panic, and never hand out a record that was
/// not written.
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::fuzz_cases;

    /// What is done to a segment of good frames.
    #[derive(Debug, Clone)]
    enum Harm {
        None,
        CutAt(usize),
        Flip(usize, u8),
        Append(Vec<u8>),
        Zeros(usize),
        Replace(Vec<u8>),
    }

    fn harm() -> impl Strategy<Value = Harm> {
        prop_oneof![
            Just(Harm::None),
            any::<usize>().prop_map(Harm::CutAt),
            (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Harm::Flip(at, bits)),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Harm::Append),
            (0..200usize).prop_map(Harm::Zeros),
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|mut bytes| {
                    if bytes.len() > 8 && bytes[0] % 2 == 0 {
                        bytes[..8].copy_from_slice(segment::MAGIC);
                    }
                    bytes
                })
                .prop_map(Harm::Replace),
        ]
    }

    /// A segment file of `payloads` from offset `base`, then `harm`.
    fn segment_bytes(base: u64, payloads: &[Vec<u8>], harm: &Harm) -> Vec<u8> {
        let mut bytes = segment::MAGIC.to_vec();
        for (offset, payload) in (base..).zip(payloads) {
            segment::write_frame(&mut bytes, offset, 1, 1, &[payload]).unwrap();
        }
        match harm {
            Harm::None => {}
            Harm::CutAt(at) => bytes.truncate(at % (bytes.len() + 1)),
            Harm::Flip(at, bits) => {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            Harm::Append(more) => bytes.extend_from_slice(more),
            Harm::Zeros(count) => bytes.extend(std::iter::repeat_n(0, *count)),
            Harm::Replace(other) => bytes = other.clone(),
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: fuzz_cases(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fuzz_segment_scan_finds_only_written_frames(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
            harm in harm(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(segment::file_name(0));
            std::fs::write(&path, segment_bytes(0, &payloads, &harm)).unwrap();
            if let Ok(scan) = segment::scan(&path, 0) {
                prop_assert!(scan.frames.len() <= payloads.len());
                prop_assert!(scan.valid_bytes <= scan.bytes);
                let file = std::fs::File::open(&path).unwrap();
                let read = segment::read_payloads(&file, &scan.frames, 0).unwrap();
                for (found, written) in read.iter().zip(&payloads) {
                    prop_assert_eq!(&found[..], &written[..]);
                }
            }
        }

        #[test]
        fn fuzz_log_opens_any_segments_and_reads_a_prefix_of_each(
            first in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..5),
            second in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..5),
            harm_first in harm(),
            harm_second in harm(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let next = first.len() as u64;
            std::fs::write(
                dir.path().join(segment::file_name(0)),
                segment_bytes(0, &first, &harm_first),
            ).unwrap();
            std::fs::write(
                dir.path().join(segment::file_name(next)),
                segment_bytes(next, &second, &harm_second),
            ).unwrap();
            let written: Vec<&Vec<u8>> = first.iter().chain(&second).collect();
            if let Ok(log) = DurableLog::open(dir.path(), LogOptions::default()) {
                let mut from = 0;
                loop {
                    let Ok((records, after)) = log.read(from, 100, u64::MAX) else { break };
                    for record in &records {
                        let offset = usize::try_from(record.offset).unwrap();
                        prop_assert!(offset < written.len(), "record {} was never written", offset);
                        prop_assert_eq!(&record.payload[..], &written[offset][..]);
                    }
                    if records.is_empty() || after <= from {
                        break;
                    }
                    from = after;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_spare_renamed_into_place_before_its_start_was_written_is_a_fresh_segment() {
    let dir = tempfile::tempdir().unwrap();
    let words = numbered(12);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    {
        let log = DurableLog::open(dir.path(), options()).unwrap();
        append_all(&log, &refs[..6]).await;
    }
    // The writer took a spare of zeros as the next segment and the
    // process was killed before the segment's start reached the disk.
    // Its base is the offset after the last record.
    std::fs::write(
        dir.path().join(segment::file_name(6)),
        vec![0u8; options().segment_bytes as usize],
    )
    .unwrap();
    let log = DurableLog::open(dir.path(), options()).unwrap();
    assert!(log.quarantined().is_empty());
    let (records, _) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words[..6]);
    append_all(&log, &refs[6..]).await;
    drop(log);
    let log = DurableLog::open(dir.path(), options()).unwrap();
    let (records, _) = log.read(0, 1000, u64::MAX).unwrap();
    assert_eq!(payloads(&records), words);
}
