//! A durable, segmented append-only log on local disk: the queue behind
//! HTTP ingest and the `buffer` operator.
//!
//! Writers [`DurableLog::append`] records (opaque bytes, each counting some
//! number of events). An append frames its record straight into a shared
//! queue, where it gets its offset; one writer thread takes whatever has
//! queued up, writes it with one call and syncs it once for all of it
//! (group commit), so many concurrent appends share one `fsync`, and none
//! allocates or hands the writer anything of its own. An append returns
//! once its record is as durable as the [`FsyncPolicy`] says. A write or
//! sync that fails breaks the log: every later append fails too, until it
//! is reopened (see [`DurableLog::broken`]). Readers read records by
//! offset.
//! Records stay until the reader [`DurableLog::release`]s them (after a
//! checkpoint covering them completes).
//! Releasing costs the reader no disk write: a second thread records the
//! released offset on disk every 100 ms (and when the log closes). A
//! crash before then only makes a restart read some released records
//! again; a checkpoint's own position is what exactly-once rests on.
//! That thread then keeps up to [`SPARES`] whole released segments, to be
//! renamed and written over when the writer next needs a segment, and
//! deletes the rest a few megabytes at a time: writing into blocks a file
//! already has makes a sync write only the data, where a sync of a growing
//! file also writes the file system's record of the file (a journal
//! commit, on most), and freed blocks, on a disk mounted with `discard`,
//! wait for the disk. When there is no spare for the next segment, that
//! thread writes one ahead, all zeros, once the segment being written is
//! half full; a new log's first segment is written so when it is opened.
//! With `fsync: interval`, a third
//! thread syncs the segment being written every 100 ms, so that no append
//! waits for those syncs.
//!
//! The log is bounded (`max_bytes`, `max_events` of unreleased records):
//! an append that does not fit fails with [`AppendError::Full`], and
//! [`DurableLog::wait_for_room`] waits for a release.
//!
//! On open, every segment is checked frame by frame (see [`segment`]): a
//! write cut short at the end is cut off; a segment that fails its
//! checksums is moved to `quarantine/` and reported, and the records of the
//! other segments are still read.

mod inspect;
mod keeper;
pub mod segment;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use self::segment::{Damage, Frame};
use crate::error::{Error, Result};

pub use self::inspect::{Inspection, SegmentReport, inspect};
pub use self::keeper::SPARES;
use self::keeper::{Closing, Keeper, ZEROING_FILE, sync_current, sync_dir, write_spare};
pub use self::segment::Damage as SegmentDamage;
use self::writer::Writer;

/// When appended records are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before an append returns (group commit: one sync for every append
    /// waiting). Survives a machine crash.
    #[default]
    Always,
    /// Every 100 ms, by a thread of its own; an append returns once
    /// written to the operating system, without waiting for a sync.
    /// Survives a process crash, not a machine crash.
    Interval,
    /// Never explicitly; the operating system writes when it likes.
    Never,
}

/// How a log is laid out and bounded.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started past this many bytes.
    pub segment_bytes: u64,
    /// When appends are synced to disk.
    pub fsync: FsyncPolicy,
    /// Most bytes of unreleased records.
    pub max_bytes: u64,
    /// Most events in unreleased records.
    pub max_events: u64,
    /// Whether new segment files are written ahead, full size and all
    /// zeros, so that syncs of their records write only the records (see
    /// the module docs). Nothing is gained on a copy-on-write file system.
    pub preallocate: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
            max_bytes: 1 << 30,
            max_events: u64::MAX,
            preallocate: true,
        }
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record does not fit under `max_bytes`/`max_events` until the
    /// reader releases some.
    #[error("the buffer is full")]
    Full,
    /// Writing failed.
    #[error("{0}")]
    Failed(#[from] Error),
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Its place in the log.
    pub offset: u64,
    /// How many events it holds.
    pub events: u32,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub appended_at: u64,
    /// What was appended (a slice of one buffer shared by the records
    /// read together).
    pub payload: bytes::Bytes,
}

/// A segment found damaged when the log was opened.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Where the segment was moved.
    pub path: PathBuf,
    /// The offsets it held (its records are not read).
    pub offsets: std::ops::Range<u64>,
    /// What was wrong with it.
    pub damage: Damage,
}

/// How full the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogUsage {
    /// Unreleased records.
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// The events they hold.
    pub events: u64,
}

/// A durable log in one directory. Cheap to clone; clones share the log,
/// and the last one dropped waits for its threads to finish.
#[derive(Clone)]
pub struct DurableLog {
    shared: Arc<Shared>,
    /// Held for its drop, by the last clone: that stops the threads.
    _threads: Arc<Threads>,
}

/// The log's threads: the writer, which appends (and nothing else,
/// since every append waits for it); the keeper, which records on disk
/// what was released and deletes released segments; and with
/// `fsync: interval`, the syncer. All are joined once nothing can use the
/// log any more, so that what they still had to do is done.
struct Threads {
    shared: Arc<Shared>,
    closing: Arc<Closing>,
    writer: Option<std::thread::JoinHandle<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        // The writer writes what is queued, then stops; the others tick
        // until told.
        self.shared.queue.lock().expect("log queue").closed = true;
        self.shared.queued.notify_one();
        self.closing.close();
        for thread in [self.writer.take(), self.keeper.take(), self.syncer.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

struct Shared {
    dir: PathBuf,
    options: LogOptions,
    /// Segments and room: taken by readers, releases and the keeper.
    /// Padded apart from `queue`, which every append takes.
    state: CachePadded<Mutex<State>>,
    /// The offset after the last durable record.
    end: watch::Sender<u64>,
    /// Signalled when a release frees room.
    room: Notify,
    quarantined: Vec<Quarantined>,
    /// The segment being written, for the syncer thread.
    current: Mutex<Option<Arc<File>>>,
    /// Whether the writer wrote to it since the syncer last synced.
    unsynced: AtomicBool,
    /// Appends waiting for the writer.
    queue: CachePadded<Mutex<Queue>>,
    /// Wakes the writer when it waits for appends (or the log closes).
    queued: Condvar,
}

/// Records appended and not yet taken by the writer: their frames, ready
/// to write, and the group they will be made durable in.
struct Queue {
    /// Their frames back to back, in offset order.
    bytes: Vec<u8>,
    /// Each one's frame, its position being where it starts in `bytes`.
    frames: Vec<Frame>,
    /// The offset the next append gets.
    next: u64,
    /// What the records queued now wait on.
    group: Arc<Group>,
    /// Why appends fail from now on, once a write or sync failed (see
    /// [`DurableLog::broken`]).
    failed: Option<String>,
    /// The writer waits for appends: the next one wakes it.
    writer_idle: bool,
    /// The log is closing: the writer stops once the queue is empty.
    closed: bool,
}

/// Appends written (and synced) together: each waits until the writer
/// says how it went.
#[derive(Default)]
struct Group {
    done: OnceLock<std::result::Result<(), String>>,
    notify: Notify,
}

impl Group {
    async fn wait(&self) -> std::result::Result<(), String> {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so that no finish goes unseen.
            notified.as_mut().enable();
            if let Some(done) = self.done.get() {
                return done.clone();
            }
            notified.await;
        }
    }

    fn finish(&self, done: std::result::Result<(), String>) {
        let _ = self.done.set(done);
        self.notify.notify_waiters();
    }
}

impl Shared {
    /// Takes no more appends after a write or sync failed; returns why.
    fn fail(&self, message: String) -> String {
        tracing::error!("{message}; the buffer takes no more appends until it is reopened");
        let mut queue = self.queue.lock().expect("log queue");
        queue.failed.get_or_insert(message).clone()
    }

    /// Gives back the room of a record that was not appended after all.
    fn unreserve(&self, events: u32, bytes: u64) {
        let mut state = self.state.lock().expect("log state");
        state.usage.records -= 1;
        state.usage.bytes -= bytes;
        state.usage.events -= u64::from(events);
    }
}

struct State {
    segments: BTreeMap<u64, SegmentIndex>,
    /// Offsets below this are released.
    released: u64,
    /// Unreleased, including appends being written.
    usage: LogUsage,
    /// Released segments for the keeper thread to delete (or keep as
    /// spares).
    to_delete: Vec<PathBuf>,
    /// Released segments kept to be written over.
    spares: Vec<PathBuf>,
}

struct SegmentIndex {
    path: PathBuf,
    frames: Vec<Frame>,
}

impl SegmentIndex {
    fn end(&self, base: u64) -> u64 {
        base + self.frames.len() as u64
    }

    /// Where the next record's frame goes.
    fn records_end(&self) -> u64 {
        self.frames
            .last()
            .map_or(segment::MAGIC.len() as u64, |f| f.position + f.size())
    }
}

const RELEASED_FILE: &str = "released";

/// How often `fsync: interval` syncs, and the released offset is recorded
/// on disk.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// A failure of the log's files.
fn failure(message: impl Into<String>) -> Error {
    Error::connector("buffer", false, message.into())
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, checking every segment.
    pub fn open(dir: &Path, options: LogOptions) -> Result<DurableLog> {
        let io = |what: &str, e: std::io::Error| {
            failure(format!("buffer {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        // A spare the last run did not finish writing.
        let _ = std::fs::remove_file(dir.join(ZEROING_FILE));
        let released = std::fs::read_to_string(dir.join(RELEASED_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let listed = segment::list(dir).map_err(|e| io("list segments", e))?;
        let mut segments = BTreeMap::new();
        let mut quarantined = Vec::new();
        for (i, (base, path)) in listed.iter().enumerate() {
            let next_base = listed.get(i + 1).map(|(b, _)| *b);
            let mut scan = segment::scan(path, *base).map_err(|e| io("read segment", e))?;
            match scan.damage(*base, next_base) {
                // The newest segment continues where its records end.
                // Zeros after them are kept: space written ahead, which
                // nothing can be read from.
                None if next_base.is_some()
                    || scan.bytes == scan.valid_bytes
                    || scan.stop == segment::Stop::Zeroed => {}
                // Anything else that follows them (a write the last run did
                // not finish, or the segment's earlier use) is cut off, so
                // that none of it can pass for a record later.
                None | Some(Damage::TornTail { .. }) => {
                    if scan.stop != segment::Stop::Stale {
                        tracing::warn!(
                            segment = %path.display(),
                            cut = scan.bytes - scan.valid_bytes,
                            "cutting off a write the last run did not finish"
                        );
                    }
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| io("open segment", e))?;
                    file.set_len(scan.valid_bytes)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| io("truncate segment", e))?;
                }
                Some(damage) => {
                    let end = next_base.unwrap_or(base + scan.frames.len() as u64);
                    let to = dir.join("quarantine").join(segment::file_name(*base));
                    std::fs::create_dir_all(dir.join("quarantine"))
                        .and_then(|_| std::fs::rename(path, &to))
                        .map_err(|e| io("quarantine segment", e))?;
                    tracing::error!(
                        segment = %path.display(),
                        quarantined = %to.display(),
                        ?damage,
                        "a buffer segment is damaged; moved aside, its records are not read"
                    );
                    quarantined.push(Quarantined {
                        path: to,
                        offsets: *base..end.max(*base),
                        damage,
                    });
                    continue;
                }
            }
            segments.insert(
                *base,
                SegmentIndex {
                    path: path.clone(),
                    frames: scan.frames,
                },
            );
        }
        let end = segments
            .iter()
            .next_back()
            .map(|(base, s)| s.end(*base))
            .into_iter()
            .chain(quarantined.iter().map(|q| q.offsets.end))
            .max()
            .unwrap_or(released)
            .max(released);
        let spares = segment::spares(dir).map_err(|e| io("list spare segments", e))?;
        let mut state = State {
            segments,
            released,
            usage: LogUsage::default(),
            to_delete: Vec::new(),
            spares,
        };
        state.usage = state.usage_from(released);
        let (end_tx, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: CachePadded::new(Mutex::new(state)),
            end: end_tx,
            room: Notify::new(),
            quarantined,
            current: Mutex::new(None),
            unsynced: AtomicBool::new(false),
            queue: CachePadded::new(Mutex::new(Queue {
                bytes: Vec::new(),
                frames: Vec::new(),
                next: end,
                group: Arc::default(),
                failed: None,
                writer_idle: false,
                closed: false,
            })),
            queued: Condvar::new(),
        });
        let new_log = {
            let state = shared.state.lock().expect("log state");
            state.segments.is_empty() && state.spares.is_empty()
        };
        if new_log && shared.options.preallocate {
            // The first segment is written ahead too, as the keeper thread
            // does every later one (see `Keeper::write_spare_ahead`).
            match write_spare(&shared, || false) {
                Ok(spare) => shared.state.lock().expect("log state").spares.extend(spare),
                Err(e) => tracing::warn!("could not write the first segment ahead: {e}"),
            }
        }
        let writer = Writer::new(shared.clone(), end)?;
        let writer = std::thread::Builder::new()
            .name("flumen-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| io("start the writer thread", e))?;
        let closing = Arc::new(Closing::default());
        let mut keeper = Keeper {
            shared: shared.clone(),
            released_on_disk: released,
            spare_tried_for: None,
        };
        let keeper = closing
            .tick_on_thread("flumen-log-keeper", move || keeper.keep())
            .map_err(|e| io("start the keeper thread", e))?;
        let syncer = match shared.options.fsync {
            FsyncPolicy::Interval => {
                let shared = shared.clone();
                let syncer = closing
                    .tick_on_thread("flumen-log-syncer", move || sync_current(&shared))
                    .map_err(|e| io("start the syncer thread", e))?;
                Some(syncer)
            }
            FsyncPolicy::Always | FsyncPolicy::Never => None,
        };
        let threads = Arc::new(Threads {
            shared: shared.clone(),
            closing,
            writer: Some(writer),
            keeper: Some(keeper),
            syncer,
        });
        Ok(DurableLog {
            shared,
            _threads: threads,
        })
    }

    /// Opens the log in `dir` after cutting off every record at offset
    /// `end` and after: a restore to a checkpoint taken when the log ended
    /// there (what came after will be appended again).
    pub fn open_truncated(dir: &Path, options: LogOptions, end: u64) -> Result<DurableLog> {
        let io = |e: std::io::Error| failure(format!("buffer {}: {e}", dir.display()));
        if dir.is_dir() {
            for (base, path) in segment::list(dir).map_err(io)? {
                if base >= end {
                    std::fs::remove_file(&path).map_err(io)?;
                    continue;
                }
                let scan = segment::scan(&path, base).map_err(io)?;
                if let Some(first_cut) = scan.frames.get((end - base) as usize) {
                    let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
                    file.set_len(first_cut.position)
                        .and_then(|_| file.sync_all())
                        .map_err(io)?;
                }
            }
        }
        DurableLog::open(dir, options)
    }

    /// Appends one record holding `events` events; the future returns its
    /// offset once it is durable (per the fsync policy). The record is
    /// queued, and its offset taken, by this call: appends made one after
    /// another are in that order whenever their futures are awaited.
    pub fn append(
        &self,
        events: u32,
        payload: impl AsRef<[u8]>,
    ) -> impl Future<Output = std::result::Result<u64, AppendError>> + Send + 'static {
        self.append_parts(events, &[payload.as_ref()])
    }

    /// [`DurableLog::append`]s one record made of `parts` back to back,
    /// without putting them together first.
    pub fn append_parts(
        &self,
        events: u32,
        parts: &[&[u8]],
    ) -> impl Future<Output = std::result::Result<u64, AppendError>> + Send + 'static + use<> {
        let queued = self.enqueue(events, parts);
        let shared = self.shared.clone();
        async move {
            let (offset, group, bytes) = queued?;
            match group.wait().await {
                Ok(()) => Ok(offset),
                Err(message) => {
                    shared.unreserve(events, bytes);
                    Err(failure(message).into())
                }
            }
        }
    }

    /// Reserves room for a record and frames it into the writer's queue:
    /// its offset, the group it waits on, and the bytes it takes.
    fn enqueue(
        &self,
        events: u32,
        parts: &[&[u8]],
    ) -> std::result::Result<(u64, Arc<Group>, u64), AppendError> {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let bytes = segment::FRAME_HEADER + length as u64;
        {
            let mut state = self.shared.state.lock().expect("log state");
            let usage = state.usage;
            let options = &self.shared.options;
            // One record always fits an empty log, however large.
            let fits = usage.records == 0
                || (usage.bytes + bytes <= options.max_bytes
                    && usage.events + u64::from(events) <= options.max_events);
            if !fits {
                return Err(AppendError::Full);
            }
            state.usage.records += 1;
            state.usage.bytes += bytes;
            state.usage.events += u64::from(events);
        }
        let appended_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut guard = self.shared.queue.lock().expect("log queue");
        let queue = &mut *guard;
        let position = queue.bytes.len() as u64;
        let framed = match &queue.failed {
            Some(message) => Err(message.clone()),
            None => segment::write_frame(&mut queue.bytes, queue.next, events, appended_at, parts)
                .map_err(|e| e.to_string()),
        };
        if let Err(message) = framed {
            drop(guard);
            self.shared.unreserve(events, bytes);
            return Err(failure(message).into());
        }
        queue.frames.push(Frame {
            position,
            length: length as u32,
            events,
            appended_at,
        });
        let offset = queue.next;
        queue.next += 1;
        if queue.writer_idle {
            queue.writer_idle = false;
            self.shared.queued.notify_one();
        }
        Ok((offset, queue.group.clone(), bytes))
    }

    /// Why the log takes no appends any more, if a write or sync of it
    /// failed. After a failed sync the system may have dropped pages it
    /// could not write, so no later sync can vouch for them: the log must
    /// be reopened (the process restarted), which checks every segment.
    pub fn broken(&self) -> Option<String> {
        self.shared.queue.lock().expect("log queue").failed.clone()
    }

    /// Waits until a release has made room (or `timeout` passed).
    pub async fn wait_for_room(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.room.notified()).await;
    }

    /// The offset after the last durable record.
    pub fn end(&self) -> u64 {
        *self.shared.end.borrow()
    }

    /// Offsets below this were released.
    pub fn released(&self) -> u64 {
        self.shared.state.lock().expect("log state").released
    }

    /// How full the log is.
    pub fn usage(&self) -> LogUsage {
        self.shared.state.lock().expect("log state").usage
    }

    /// The segments found damaged when the log was opened.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.shared.quarantined
    }

    /// Waits until the log holds a record at `offset` or beyond, or
    /// `timeout` passes. Returns whether it does.
    pub async fn wait_beyond(&self, offset: u64, timeout: Duration) -> bool {
        let mut end = self.shared.end.subscribe();
        let reached = tokio::time::timeout(timeout, end.wait_for(|end| *end > offset)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Up to `max_records` records (and about `max_bytes`) from `from` on.
    /// Offsets in a quarantined segment are skipped. Returns the records
    /// and the offset to read next.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<(Vec<LogRecord>, u64)> {
        let end = self.end();
        let mut records = Vec::new();
        let mut next = from.max(self.released());
        let mut bytes = 0u64;
        // Which frames to read, then the reads, outside the lock.
        let mut wanted: Vec<(PathBuf, u64, Frame)> = Vec::new();
        {
            let state = self.shared.state.lock().expect("log state");
            while next < end && wanted.len() < max_records && bytes < max_bytes {
                let segment = state.segments.range(..=next).next_back();
                match segment {
                    Some((base, index)) if next < index.end(*base) => {
                        let frame = index.frames[(next - base) as usize];
                        bytes += frame.size();
                        wanted.push((index.path.clone(), next, frame));
                        next += 1;
                    }
                    _ => {
                        // Released or quarantined: continue at the next
                        // segment, or at the end if there is none.
                        match state.segments.range(next + 1..).next() {
                            Some((base, _)) if *base < end => next = *base,
                            _ => {
                                next = next.max(end);
                                break;
                            }
                        }
                    }
                }
            }
        }
        // One read per segment for all its wanted frames.
        for run in wanted.chunk_by(|a, b| a.0 == b.0) {
            let path = &run[0].0;
            let frames: Vec<Frame> = run.iter().map(|(_, _, frame)| *frame).collect();
            let payloads = File::open(path)
                .and_then(|file| segment::read_payloads(&file, &frames, run[0].1))
                .map_err(|e| {
                    failure(format!(
                        "buffer segment {} (offsets {}..={}): {e}",
                        path.display(),
                        run[0].1,
                        run[run.len() - 1].1
                    ))
                })?;
            for ((_, offset, frame), payload) in run.iter().zip(payloads) {
                records.push(LogRecord {
                    offset: *offset,
                    events: frame.events,
                    appended_at: frame.appended_at,
                    payload,
                });
            }
        }
        Ok((records, next))
    }

    /// Everything before `offset` has been handled for good: forget it.
    /// The keeper thread records the new released offset on disk, then
    /// deletes the segments that hold nothing after it.
    pub fn release(&self, offset: u64) -> Result<()> {
        {
            let mut state = self.shared.state.lock().expect("log state");
            if offset <= state.released {
                return Ok(());
            }
            let freed = state.usage_between(state.released, offset);
            state.usage.records -= freed.records.min(state.usage.records);
            state.usage.bytes -= freed.bytes.min(state.usage.bytes);
            state.usage.events -= freed.events.min(state.usage.events);
            state.released = offset;
            // Every segment but the newest (still written) whose records
            // all come before `offset`.
            let newest = state.segments.keys().next_back().copied();
            let done: Vec<u64> = state
                .segments
                .iter()
                .filter(|(base, index)| Some(**base) != newest && index.end(**base) <= offset)
                .map(|(base, _)| *base)
                .collect();
            for base in done {
                if let Some(index) = state.segments.remove(&base) {
                    state.to_delete.push(index.path);
                }
            }
        }
        self.shared.room.notify_waiters();
        Ok(())
    }
}

impl State {
    /// What records at `from` and after hold.
    fn usage_from(&self, from: u64) -> LogUsage {
        self.usage_between(from, u64::MAX)
    }

    fn usage_between(&self, from: u64, to: u64) -> LogUsage {
        let mut usage = LogUsage::default();
        // Only the segments and frames in the range: a release looks at
        // what it releases, not at the whole log.
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(from, |(base, _)| *base);
        for (base, index) in self.segments.range(first..to) {
            let start = from.saturating_sub(*base) as usize;
            let stop = (to.saturating_sub(*base) as usize).min(index.frames.len());
            for frame in index.frames.get(start..stop).unwrap_or_default() {
                usage.records += 1;
                usage.bytes += frame.size();
                usage.events += u64::from(frame.events);
            }
        }
        usage
    }
}

/// Replaces `path`'s contents all at once (a crash leaves the old or the
/// new, never half).
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| failure(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
