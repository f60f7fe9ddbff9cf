//! Line-oriented files (JSON lines, CSV): a byte range of the file, cut at
//! line boundaries, decoded into batches.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::{Buf, Bytes};
use flumen_core::dead_letter::Rejected;
use flumen_core::prelude::*;
use flumen_core::storage::Location;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::task::JoinHandle;

use super::config::{CsvOptions, FileFormat};

/// Bytes fetched per request: large enough that per-request overhead
/// (a thread hop locally, a round trip to object storage) does not show.
pub(crate) const CHUNK_BYTES: u64 = 4 << 20;

/// Reads `start..end` of an object in chunks, keeping the next chunk's
/// request in flight while the current one is decoded.
struct ChunkReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    chunk_bytes: u64,
    next: u64,
    end: u64,
    in_flight: Option<JoinHandle<object_store::Result<Bytes>>>,
}

impl ChunkReader {
    fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        start: u64,
        end: u64,
        chunk_bytes: u64,
    ) -> Self {
        let mut reader = ChunkReader {
            store,
            path,
            chunk_bytes,
            next: start,
            end,
            in_flight: None,
        };
        reader.in_flight = reader.request();
        reader
    }

    fn request(&mut self) -> Option<JoinHandle<object_store::Result<Bytes>>> {
        if self.next >= self.end {
            return None;
        }
        let range = self.next..(self.next + self.chunk_bytes).min(self.end);
        self.next = range.end;
        let (store, path) = (self.store.clone(), self.path.clone());
        Some(tokio::spawn(
            async move { store.get_range(&path, range).await },
        ))
    }

    async fn next(&mut self) -> Result<Option<Bytes>> {
        let Some(request) = self.in_flight.take() else {
            return Ok(None);
        };
        let bytes = request
            .await
            .map_err(|e| Error::internal(format!("file read task failed: {e}")))?
            .map_err(|e| Error::connector("file", false, e))?;
        self.in_flight = self.request();
        Ok(Some(bytes))
    }
}

/// Where a split's bytes come from.
enum Chunks {
    /// A byte range of an object, fetched a chunk ahead.
    Store(ChunkReader),
    /// Standard input: whatever each read returns, up to this many bytes.
    Stdin { chunk_bytes: usize },
}

impl Chunks {
    async fn next(&mut self) -> Result<Option<Bytes>> {
        match self {
            Chunks::Store(reader) => reader.next().await,
            Chunks::Stdin { chunk_bytes } => {
                let chunk_bytes = *chunk_bytes;
                // A blocking read on a thread of its own: standard input
                // may be a terminal or a pipe that waits.
                let read = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut buffer = vec![0; chunk_bytes];
                    let read = loop {
                        match std::io::stdin().lock().read(&mut buffer) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            read => break read?,
                        }
                    };
                    buffer.truncate(read);
                    Ok::<_, std::io::Error>(buffer)
                })
                .await
                .map_err(|e| Error::internal(format!("standard input read task failed: {e}")))?
                .map_err(|e| Error::connector("stdin", false, e))?;
                Ok((!read.is_empty()).then(|| Bytes::from(read)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitState {
    /// Skipping the end of a line that began in the previous split.
    SeekStart,
    /// Handing out our lines.
    Emit,
    Done,
}

/// The lines of one split of a file: those whose first byte lies in
/// `start..end`. The split before it finishes the line that crosses
/// `start`, so every line is read by exactly one split.
pub(crate) struct LineSplit {
    reader: Chunks,
    state: SplitState,
    /// File offset of the next byte the reader returns.
    offset: u64,
    end: u64,
}

impl LineSplit {
    pub(crate) fn new(
        location: &Location,
        start: u64,
        end: u64,
        size: u64,
        chunk_bytes: u64,
    ) -> Self {
        // Start one byte early: if that byte ends a line, our first line
        // starts exactly at `start`.
        let fetch_from = start.saturating_sub(1);
        LineSplit {
            reader: Chunks::Store(ChunkReader::new(
                location.store.clone(),
                location.path.clone(),
                fetch_from,
                size,
                chunk_bytes,
            )),
            state: if start == 0 {
                SplitState::Emit
            } else {
                SplitState::SeekStart
            },
            offset: fetch_from,
            end,
        }
    }

    /// The next piece of the split's lines, with its offset in the file.
    /// Standard input, read to its end.
    pub(crate) fn stdin(chunk_bytes: u64) -> Self {
        LineSplit {
            reader: Chunks::Stdin {
                chunk_bytes: chunk_bytes as usize,
            },
            state: SplitState::Emit,
            offset: 0,
            end: u64::MAX,
        }
    }

    pub(crate) async fn next(&mut self) -> Result<Option<(u64, Bytes)>> {
        while self.state != SplitState::Done {
            let Some(mut chunk) = self.reader.next().await? else {
                self.state = SplitState::Done;
                break;
            };
            let mut chunk_start = self.offset;
            self.offset += chunk.len() as u64;

            if self.state == SplitState::SeekStart {
                let Some(newline) = memchr(&chunk, 0) else {
                    continue;
                };
                chunk.advance(newline + 1);
                chunk_start += newline as u64 + 1;
                self.state = SplitState::Emit;
                if chunk_start >= self.end {
                    // The line crossing `start` also crosses `end`: the
                    // split owns no line.
                    self.state = SplitState::Done;
                    break;
                }
            }

            // Our last line is the one holding byte `end - 1`; it ends at the
            // first newline from there.
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end >= self.end {
                let from = (self.end - 1).saturating_sub(chunk_start) as usize;
                if let Some(newline) = memchr(&chunk, from) {
                    self.state = SplitState::Done;
                    return Ok(Some((chunk_start, chunk.slice(..newline + 1))));
                }
            }
            if !chunk.is_empty() {
                return Ok(Some((chunk_start, chunk)));
            }
        }
        Ok(None)
    }
}

fn memchr(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i + from)
}

/// Arrow's incremental decoders for the line formats.
pub(crate) enum RecordDecoder {
    Json(arrow::json::reader::Decoder),
    Csv(Box<arrow::csv::reader::Decoder>),
}

impl RecordDecoder {
    /// A decoder for one split. Only the split at the start of the file
    /// skips a CSV header.
    pub(crate) fn new(
        format: FileFormat,
        schema: SchemaRef,
        batch_size: usize,
        csv: &CsvOptions,
        first_split: bool,
    ) -> Result<Self> {
        Ok(match format {
            FileFormat::Json => RecordDecoder::Json(
                arrow::json::ReaderBuilder::new(schema)
                    .with_batch_size(batch_size)
                    .build_decoder()?,
            ),
            FileFormat::Csv => RecordDecoder::Csv(Box::new(
                arrow::csv::ReaderBuilder::new(schema)
                    .with_batch_size(batch_size)
                    .with_header(csv.header && first_split)
                    .with_delimiter(csv.delimiter as u8)
                    .build_decoder(),
            )),
            FileFormat::Parquet => return Err(Error::internal("Parquet is not a line format")),
        })
    }

    /// Decodes from `buf`; returns how many bytes were used. Returns 0 once a
    /// batch is full (or, with an empty `buf`, marks the end of input).
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow::error::ArrowError> {
        match self {
            RecordDecoder::Json(d) => d.decode(buf),
            RecordDecoder::Csv(d) => d.decode(buf),
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        match self {
            RecordDecoder::Json(d) => d.flush(),
            RecordDecoder::Csv(d) => d.flush(),
        }
    }
}

/// What a fresh decoder for a split needs.
pub(crate) struct DecoderSpec {
    pub(crate) format: FileFormat,
    pub(crate) schema: SchemaRef,
    pub(crate) batch_size: usize,
    pub(crate) csv: CsvOptions,
}

/// The longest piece of a rejected line kept in the dead-letter record.
const MAX_REJECTED_BYTES: usize = 64 << 10;

/// Decodes one split into batches. A line that does not decode is
/// rejected (with the file and its byte offset) and the others go on.
pub(crate) struct LineSplitReader {
    split: LineSplit,
    spec: DecoderSpec,
    decoder: RecordDecoder,
    pending: Bytes,
    /// File offset of `pending`'s first byte.
    pending_offset: u64,
    /// What the decoder has taken since its last batch, to re-read line by
    /// line if that batch turns out to hold a bad line.
    fed: Vec<Bytes>,
    fed_offset: u64,
    input_done: bool,
    /// `pending` holds the start of a line that failed to decode: read
    /// more of it before trying again.
    line_unfinished: bool,
    rejected: Vec<Rejected>,
    file: String,
    /// The line number of the line at `fed_offset`, when known: reading
    /// began at the start of the file (a split or a restored position that
    /// starts elsewhere knows byte offsets only).
    line_at_fed: Option<u64>,
}

/// How many lines `bytes` ends.
fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

impl LineSplitReader {
    pub(crate) fn new(
        split: LineSplit,
        spec: DecoderSpec,
        first_split: bool,
        file: String,
    ) -> Result<Self> {
        let decoder = RecordDecoder::new(
            spec.format,
            spec.schema.clone(),
            spec.batch_size,
            &spec.csv,
            first_split,
        )?;
        let line_at_fed = (split.offset == 0).then_some(1);
        Ok(LineSplitReader {
            line_at_fed,
            split,
            spec,
            decoder,
            pending: Bytes::new(),
            pending_offset: 0,
            fed: Vec::new(),
            fed_offset: 0,
            input_done: false,
            line_unfinished: false,
            rejected: Vec::new(),
            file,
        })
    }

    /// Lines rejected since the last call.
    pub(crate) fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    pub(crate) async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if (self.pending.is_empty() || self.line_unfinished) && !self.input_done {
                match self.split.next().await? {
                    Some((offset, bytes)) if self.line_unfinished => {
                        // The rest of the line follows what is pending.
                        let mut joined = Vec::with_capacity(self.pending.len() + bytes.len());
                        joined.extend_from_slice(&self.pending);
                        joined.extend_from_slice(&bytes);
                        debug_assert_eq!(offset, self.pending_offset + self.pending.len() as u64);
                        self.pending = joined.into();
                    }
                    Some((offset, bytes)) => {
                        self.pending = bytes;
                        self.pending_offset = offset;
                        if self.fed.is_empty() {
                            self.fed_offset = offset;
                        }
                    }
                    None => self.input_done = true,
                }
                self.line_unfinished = false;
            }
            let used = match self.decoder.decode(&self.pending) {
                Ok(used) => used,
                Err(_) => return self.line_by_line().map(Some),
            };
            self.fed.push(self.pending.slice(..used));
            self.pending.advance(used);
            self.pending_offset += used as u64;
            let batch_full = used == 0 && !self.pending.is_empty();
            if batch_full || (self.input_done && self.pending.is_empty()) {
                let batch = match self.decoder.flush() {
                    Ok(batch) => batch,
                    Err(_) => return self.line_by_line().map(Some),
                };
                if let Some(line) = &mut self.line_at_fed {
                    *line += self.fed.iter().map(|piece| newlines(piece)).sum::<u64>();
                }
                self.fed.clear();
                self.fed_offset = self.pending_offset;
                if batch.is_some() || self.input_done {
                    return Ok(batch);
                }
            }
        }
    }

    /// Re-reads the lines of the batch that failed one at a time: the good
    /// ones make the batch, the bad ones are rejected. Reading goes on with
    /// a fresh decoder after the last complete line.
    fn line_by_line(&mut self) -> Result<RecordBatch> {
        let mut bytes = Vec::new();
        for piece in self.fed.drain(..) {
            bytes.extend_from_slice(&piece);
        }
        bytes.extend_from_slice(&self.pending);
        let start = self.fed_offset;
        // A last line cut by the chunk boundary is finished by the next
        // chunk, unless the input is over.
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(newline) if !self.input_done => newline + 1,
            None if !self.input_done => 0,
            _ => bytes.len(),
        };
        self.pending = Bytes::copy_from_slice(&bytes[complete..]);
        // Without a whole line, trying again before more of it is read
        // would fail the same way, for ever.
        self.line_unfinished = complete == 0 && !self.input_done;
        self.pending_offset = start + complete as u64;
        self.fed_offset = self.pending_offset;
        self.decoder = self.fresh_decoder()?;

        let first_line = self.line_at_fed;
        if let Some(line) = &mut self.line_at_fed {
            *line += newlines(&bytes[..complete]);
        }
        let mut good = Vec::new();
        let mut line_start = 0;
        for (index, line) in bytes[..complete]
            .split_inclusive(|b| *b == b'\n')
            .enumerate()
        {
            let offset = start + line_start as u64;
            line_start += line.len();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut decoder = self.fresh_decoder()?;
            let decoded = decoder
                .decode(line)
                .and_then(|_| decoder.decode(b"\n"))
                .and_then(|_| decoder.flush());
            match decoded {
                Ok(Some(batch)) => good.push(batch),
                Ok(None) => {}
                Err(error) => {
                    let shown = &line[..line.len().min(MAX_REJECTED_BYTES)];
                    let position = match first_line {
                        Some(first) => {
                            let number = first + index as u64;
                            format!("{}, line {number}, byte {offset}", self.file)
                        }
                        None => format!("{}, byte {offset}", self.file),
                    };
                    self.rejected.push(Rejected {
                        error: self.why(line, &error),
                        record: String::from_utf8_lossy(shown).trim_end().to_string(),
                        position: Some(position),
                    });
                }
            }
        }
        Ok(arrow::compute::concat_batches(&self.spec.schema, &good)?)
    }

    /// Why `line` did not decode, in a pipeline file's words where the
    /// decoder's are Arrow's: ``column `likes`: declared string, found
    /// number 18``.
    fn why(&self, line: &[u8], error: &arrow::error::ArrowError) -> String {
        let described = match self.spec.format {
            FileFormat::Json => {
                crate::json_fit::describe_column_misfit(line.trim_ascii(), &self.spec.schema)
            }
            _ => None,
        };
        described.unwrap_or_else(|| match error {
            arrow::error::ArrowError::JsonError(message)
            | arrow::error::ArrowError::CsvError(message)
            | arrow::error::ArrowError::ParseError(message) => message.clone(),
            other => other.to_string(),
        })
    }

    fn fresh_decoder(&self) -> Result<RecordDecoder> {
        // Past the first line: no header to skip.
        RecordDecoder::new(
            self.spec.format,
            self.spec.schema.clone(),
            self.spec.batch_size,
            &self.spec.csv,
            false,
        )
    }
}
