//! The writer thread: group commit of what appends queued.

use super::keeper::KEPT_QUEUE_BYTES;
use super::*;

/// The writer thread: takes what has queued up, writes it, syncs once,
/// tells all.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// The segment being written (shared with the syncer thread): its
    /// base, file and size.
    pub(super) base: u64,
    pub(super) file: Arc<File>,
    pub(super) size: u64,
    /// The offset of the next record written.
    pub(super) next: u64,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, end: u64) -> Result<Writer> {
        // Continue the newest segment if it is the one that ends at `end`,
        // else start a new one at `end`.
        let newest = {
            let state = shared.state.lock().expect("log state");
            state
                .segments
                .iter()
                .next_back()
                .filter(|(base, index)| index.end(**base) == end)
                .map(|(base, index)| (*base, index.path.clone(), index.records_end()))
        };
        let segment_failure = |path: &Path, e: std::io::Error| {
            failure(format!("buffer segment {}: {e}", path.display()))
        };
        let (base, path, file, size) = match newest {
            // Opening cut off whatever followed its records, but zeros
            // written ahead.
            Some((base, path, records_end)) => {
                let continued = || {
                    let mut file = OpenOptions::new().write(true).open(&path)?;
                    if file.metadata()?.len() == 0 {
                        // Created, and the process died before its start
                        // was written.
                        file.write_all(segment::MAGIC)?;
                    } else {
                        file.seek(SeekFrom::Start(records_end))?;
                    }
                    Ok(file)
                };
                let file = continued().map_err(|e| segment_failure(&path, e))?;
                (base, path, file, records_end)
            }
            None => {
                let path = shared.dir.join(segment::file_name(end));
                let file = start_segment(&shared, &path).map_err(|e| segment_failure(&path, e))?;
                (end, path, file, segment::MAGIC.len() as u64)
            }
        };
        {
            let mut state = shared.state.lock().expect("log state");
            state.segments.entry(base).or_insert(SegmentIndex {
                path,
                frames: Vec::new(),
            });
        }
        sync_dir(&shared.dir);
        let file = Arc::new(file);
        *shared.current.lock().expect("current segment") = Some(file.clone());
        Ok(Writer {
            shared,
            base,
            file,
            size,
            next: end,
        })
    }

    pub(super) fn run(mut self) {
        let mut stopped = WriterStopped {
            shared: self.shared.clone(),
            writing: None,
        };
        // Two sets of buffers: appends fill one while the writer writes
        // the other.
        let (mut bytes, mut frames) = (Vec::new(), Vec::new());
        loop {
            let (group, first, failed) = {
                let mut queue = self.shared.queue.lock().expect("log queue");
                while queue.frames.is_empty() && !queue.closed {
                    queue.writer_idle = true;
                    queue = self.shared.queued.wait(queue).expect("log queue");
                }
                if queue.frames.is_empty() {
                    break;
                }
                std::mem::swap(&mut queue.bytes, &mut bytes);
                std::mem::swap(&mut queue.frames, &mut frames);
                let first = queue.next - frames.len() as u64;
                (
                    std::mem::take(&mut queue.group),
                    first,
                    queue.failed.clone(),
                )
            };
            stopped.writing = Some(group.clone());
            let done = match failed {
                // Queued before the failure, and not written since.
                Some(message) => Err(message),
                None => self
                    .write_group(&bytes, &frames, first)
                    .map_err(|e| self.shared.fail(format!("buffer write: {e}"))),
            };
            group.finish(done);
            stopped.writing = None;
            bytes.clear();
            frames.clear();
            // A burst's buffer is not kept for good.
            if bytes.capacity() > KEPT_QUEUE_BYTES {
                bytes = Vec::new();
            }
        }
        drop(stopped);
        let _ = self.sync();
    }

    /// Writes a group of queued records (`bytes`, framed as `frames` say,
    /// the first being record `first`) and makes them durable.
    pub(super) fn write_group(
        &mut self,
        bytes: &[u8],
        frames: &[Frame],
        first: u64,
    ) -> std::io::Result<()> {
        let mut written: Vec<(u64, Frame)> = Vec::with_capacity(frames.len());
        // Where the bytes not yet written to a segment start.
        let mut unwritten = 0;
        for (offset, queued) in (first..).zip(frames) {
            self.next = offset;
            if self.size >= self.shared.options.segment_bytes {
                let at = queued.position as usize;
                (&*self.file).write_all(&bytes[unwritten..at])?;
                unwritten = at;
                // Readers may read what is written to the closed segment
                // once it is synced, not before.
                self.roll()?;
                self.publish(&mut written);
            }
            written.push((
                self.base,
                Frame {
                    position: self.size,
                    ..*queued
                },
            ));
            self.size += queued.size();
        }
        (&*self.file).write_all(&bytes[unwritten..])?;
        self.next = first + frames.len() as u64;
        match self.shared.options.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval => self.shared.unsynced.store(true, Ordering::Release),
            FsyncPolicy::Never => {}
        }
        self.publish(&mut written);
        Ok(())
    }

    /// Indexes written frames and moves the end past them.
    pub(super) fn publish(&self, written: &mut Vec<(u64, Frame)>) {
        if written.is_empty() {
            return;
        }
        {
            let mut state = self.shared.state.lock().expect("log state");
            for (base, frame) in written.drain(..) {
                if let Some(index) = state.segments.get_mut(&base) {
                    index.frames.push(frame);
                }
            }
        }
        self.shared.end.send_replace(self.next);
    }

    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if self.shared.options.fsync != FsyncPolicy::Never {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Closes the current segment and starts one at the next offset.
    pub(super) fn roll(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let path = self.shared.dir.join(segment::file_name(self.next));
        let file = start_segment(&self.shared, &path)?;
        // The new name must be on disk before any record in it is
        // acknowledged.
        sync_dir(&self.shared.dir);
        let file = Arc::new(file);
        *self.shared.current.lock().expect("current segment") = Some(file.clone());
        self.file = file;
        self.base = self.next;
        self.size = segment::MAGIC.len() as u64;
        let mut state = self.shared.state.lock().expect("log state");
        state.segments.insert(
            self.base,
            SegmentIndex {
                path,
                frames: Vec::new(),
            },
        );
        Ok(())
    }
}

/// Creates the segment file `path`, writing over a spare if there is one,
/// and writes its start.
pub(super) fn start_segment(shared: &Shared, path: &Path) -> std::io::Result<File> {
    let spare = shared.state.lock().expect("log state").spares.pop();
    if let Some(spare) = spare
        && let Err(e) = std::fs::rename(&spare, path)
    {
        tracing::warn!(spare = %spare.display(), "could not reuse a spare segment: {e}");
    }
    // A spare's old records are written over, not cut off: they are what
    // keeps the file's blocks allocated.
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    file.write_all(segment::MAGIC)?;
    Ok(file)
}

/// Fails the appends still waiting when the writer stops, whether it
/// stopped because the log closed (there are none then) or panicked, so
/// that no append waits forever.
pub(super) struct WriterStopped {
    pub(super) shared: Arc<Shared>,
    /// The group being written.
    pub(super) writing: Option<Arc<Group>>,
}

impl Drop for WriterStopped {
    fn drop(&mut self) {
        let message = "the buffer's writer stopped".to_string();
        if let Some(group) = self.writing.take() {
            group.finish(Err(message.clone()));
        }
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.failed.get_or_insert(message.clone());
        queue.group.finish(Err(message));
    }
}
