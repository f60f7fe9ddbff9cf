//! The keeper thread: the released offset on disk, spare segments kept
//! or written ahead, released ones deleted gradually.

use crossbeam_channel::{Receiver, Sender};

use super::*;

/// The keeper thread: records the released offset on disk every
/// `SYNC_INTERVAL` if it moved (a reader may release after every read),
/// then keeps the segments released as spares or deletes them (deleting a
/// large file can take milliseconds, which no append should wait for).
pub(super) struct Keeper {
    pub(super) shared: Arc<Shared>,
    pub(super) released_on_disk: u64,
    /// The segment being written when a spare was last written ahead.
    pub(super) spare_tried_for: Option<u64>,
}

/// Where a spare segment is written before it is complete.
pub(super) const ZEROING_FILE: &str = "spare.zeroing";

/// How much of a spare segment is written (and synced) at a time.
pub(super) const ZEROING_STEP: usize = 1 << 20;

impl Keeper {
    pub(super) fn keep(&mut self) {
        let (released, to_delete) = {
            let mut state = self.shared.state.lock().expect("log state");
            (state.released, std::mem::take(&mut state.to_delete))
        };
        if released != self.released_on_disk {
            match write_atomically(
                &self.shared.dir.join(RELEASED_FILE),
                released.to_string().as_bytes(),
            ) {
                Ok(()) => self.released_on_disk = released,
                // Tried again next time; until then a restart reads from
                // the offset on disk, a little earlier.
                Err(e) => {
                    tracing::warn!("could not record the released offset: {e}");
                    let mut state = self.shared.state.lock().expect("log state");
                    state.to_delete.extend(to_delete);
                    return;
                }
            }
        }
        // Kept or deleted once the offset past them is on disk. (A
        // segment a crash leaves behind is released already, and goes the
        // same way at the next release after a restart.)
        for path in to_delete {
            if let Err(e) = self.keep_as_spare_or_delete(path) {
                tracing::warn!("could not keep or delete a released segment: {e}");
            }
        }
        self.write_spare_ahead();
    }

    /// Writes a spare segment of zeros, once the segment being written is
    /// half full and there is no spare for the next: the next segment's
    /// blocks are then allocated and written before any record goes in,
    /// so that the syncs of its records write only them, not the file
    /// system's record of a growing file (a fifth of each sync's time on a
    /// virtual disk). A fresh log so gets what a log that has released
    /// segments gets from reusing them.
    pub(super) fn write_spare_ahead(&mut self) {
        if !self.shared.options.preallocate {
            return;
        }
        let current = {
            let state = self.shared.state.lock().expect("log state");
            if !state.spares.is_empty() {
                return;
            }
            match state.segments.iter().next_back() {
                Some((base, index))
                    if index.records_end() >= self.shared.options.segment_bytes / 2 =>
                {
                    *base
                }
                _ => return,
            }
        };
        // One try per segment: a disk too full for a spare is not made
        // fuller by a retry every tick.
        if self.spare_tried_for == Some(current) || self.closing() {
            return;
        }
        self.spare_tried_for = Some(current);
        match write_spare(&self.shared, || self.closing()) {
            Ok(Some(spare)) => self
                .shared
                .state
                .lock()
                .expect("log state")
                .spares
                .push(spare),
            Ok(None) => {}
            Err(e) => tracing::warn!("could not write a spare segment ahead: {e}"),
        }
    }

    pub(super) fn closing(&self) -> bool {
        self.shared.queue.lock().expect("log queue").closed
    }

    /// Keeps a released segment to be written over when the writer next
    /// needs a segment, unless `SPARES` are kept already.
    pub(super) fn keep_as_spare_or_delete(&self, path: PathBuf) -> std::io::Result<()> {
        let spares = self.shared.state.lock().expect("log state").spares.len();
        let spare =
            segment::base_of(&path).map(|base| self.shared.dir.join(segment::spare_name(base)));
        match spare {
            Some(spare) if spares < SPARES => {
                std::fs::rename(&path, &spare)?;
                self.shared
                    .state
                    .lock()
                    .expect("log state")
                    .spares
                    .push(spare);
                Ok(())
            }
            _ => delete_gradually(&path),
        }
    }
}

/// Writes a spare segment: `segment_bytes` of zeros, synced every
/// `ZEROING_STEP` so that no append's sync waits behind the whole of it.
/// Returns its path, or `None` if `stop` said to stop first.
pub(super) fn write_spare(
    shared: &Shared,
    stop: impl Fn() -> bool,
) -> std::io::Result<Option<PathBuf>> {
    let temporary = shared.dir.join(ZEROING_FILE);
    let write = || {
        let mut file = File::create(&temporary)?;
        let zeros = vec![0u8; ZEROING_STEP];
        let mut left = shared.options.segment_bytes;
        while left > 0 {
            if stop() {
                return Ok(false);
            }
            let step = left.min(ZEROING_STEP as u64);
            file.write_all(&zeros[..step as usize])?;
            file.sync_data()?;
            left -= step;
        }
        Ok(true)
    };
    let written = write();
    if !matches!(written, Ok(true)) {
        let _ = std::fs::remove_file(&temporary);
        return written.map(|_| None);
    }
    let spare = (0u64..)
        .map(|n| shared.dir.join(format!("zeroed-{n}.spare")))
        .find(|path| !path.exists())
        .expect("a free name");
    std::fs::rename(&temporary, &spare)?;
    Ok(Some(spare))
}

/// Beyond this, the writer's buffer for a group is freed once written,
/// not kept for the next one.
pub(super) const KEPT_QUEUE_BYTES: usize = 8 << 20;

/// How many released segments are kept to be written over. One is enough
/// for a steady stream; a second covers a release that comes late.
pub const SPARES: usize = 2;

/// `fsync: interval`'s sync, on the syncer thread: the segment being
/// written, if written to since the last time.
pub(super) fn sync_current(shared: &Shared) {
    if !shared.unsynced.swap(false, Ordering::AcqRel) {
        return;
    }
    let current = shared.current.lock().expect("current segment").clone();
    if let Some(file) = current
        && let Err(e) = file.sync_data()
    {
        shared.fail(format!("buffer sync: {e}"));
    }
}

/// Tells the log's ticking threads to stop.
pub(super) struct Closing {
    /// Dropped when the log closes, which every `closed` receiver sees at
    /// once, whatever it was waiting for.
    signal: Mutex<Option<Sender<()>>>,
    closed: Receiver<()>,
}

impl Default for Closing {
    fn default() -> Self {
        let (signal, closed) = crossbeam_channel::bounded(0);
        Closing {
            signal: Mutex::new(Some(signal)),
            closed,
        }
    }
}

impl Closing {
    /// Runs `tick` every `SYNC_INTERVAL` on a thread of its own, and once
    /// more when the log closes.
    pub(super) fn tick_on_thread(
        self: &Arc<Self>,
        name: &str,
        mut tick: impl FnMut() + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let closed = self.closed.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let ticks = crossbeam_channel::tick(SYNC_INTERVAL);
                loop {
                    crossbeam_channel::select! {
                        recv(ticks) -> _ => tick(),
                        recv(closed) -> _ => break,
                    }
                }
                tick();
            })
    }

    pub(super) fn close(&self) {
        self.signal.lock().expect("closing").take();
    }
}

/// Deletes a file a few megabytes at a time. Freeing a whole segment's
/// blocks at once keeps the disk busy for many milliseconds, and every
/// append's sync would wait behind it.
pub(super) fn delete_gradually(path: &Path) -> std::io::Result<()> {
    const STEP: u64 = 4 << 20;
    let file = OpenOptions::new().write(true).open(path)?;
    let mut length = file.metadata()?.len();
    while length > STEP {
        length -= STEP;
        file.set_len(length)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(file);
    std::fs::remove_file(path)
}

/// Makes a new file's directory entry durable.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}
