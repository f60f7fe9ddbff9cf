//! Line-oriented files (JSON lines, CSV): a byte range of the file, cut at
//! line boundaries, decoded into batches.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::{Buf, Bytes};
use flumen_core::prelude::*;
use flumen_core::storage::Location;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::task::JoinHandle;

use super::config::{CsvOptions, FileFormat};

/// Bytes fetched per request: large enough that per-request overhead
/// (a thread hop locally, a round trip to object storage) does not show.
pub(super) const CHUNK_BYTES: u64 = 4 << 20;

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
pub(super) struct LineSplit {
    reader: ChunkReader,
    state: SplitState,
    /// File offset of the next byte the reader returns.
    offset: u64,
    end: u64,
}

impl LineSplit {
    pub(super) fn new(
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
            reader: ChunkReader::new(
                location.store.clone(),
                location.path.clone(),
                fetch_from,
                size,
                chunk_bytes,
            ),
            state: if start == 0 {
                SplitState::Emit
            } else {
                SplitState::SeekStart
            },
            offset: fetch_from,
            end,
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<Bytes>> {
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
                    return Ok(Some(chunk.slice(..newline + 1)));
                }
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
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
pub(super) enum RecordDecoder {
    Json(arrow::json::reader::Decoder),
    Csv(Box<arrow::csv::reader::Decoder>),
}

impl RecordDecoder {
    /// A decoder for one split. Only the split at the start of the file
    /// skips a CSV header.
    pub(super) fn new(
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

/// Decodes one split into batches.
pub(super) struct LineSplitReader {
    split: LineSplit,
    decoder: RecordDecoder,
    pending: Bytes,
    input_done: bool,
    /// Offset in the file of the start of `pending`, for error messages.
    file: String,
}

impl LineSplitReader {
    pub(super) fn new(split: LineSplit, decoder: RecordDecoder, file: String) -> Self {
        LineSplitReader {
            split,
            decoder,
            pending: Bytes::new(),
            input_done: false,
            file,
        }
    }

    pub(super) async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.pending.is_empty() && !self.input_done {
                match self.split.next().await? {
                    Some(bytes) => self.pending = bytes,
                    None => self.input_done = true,
                }
            }
            let used = self
                .decoder
                .decode(&self.pending)
                .map_err(|e| self.bad_data(e))?;
            self.pending.advance(used);
            let batch_full = used == 0 && !self.pending.is_empty();
            if batch_full || (self.input_done && self.pending.is_empty()) {
                let batch = self.decoder.flush().map_err(|e| self.bad_data(e))?;
                if batch.is_some() || self.input_done {
                    return Ok(batch);
                }
            }
        }
    }

    fn bad_data(&self, error: arrow::error::ArrowError) -> Error {
        Error::Data(format!("{}: {error}", self.file))
    }
}
