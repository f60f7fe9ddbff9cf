//! The on-disk format of a log segment, and reading one back.
//!
//! A segment is a file named by the offset of its first record
//! (`00000000000000000042.log`): the 8 bytes `FLUMLOG2`, then records
//! back to back, each framed as:
//!
//! ```text
//! length u32 | events u32 | appended_at u64 (ms) | offset u64 | crc32 u32 | payload
//! ```
//!
//! all little-endian; the CRC-32 covers the header before it and the
//! payload. A record's frame carries its offset because segments are
//! reused: a released segment is renamed and written over rather than
//! deleted (allocating disk blocks makes every sync also write the file
//! system's record of them, and freeing them, on a disk mounted with
//! `discard`, makes it wait for the discard).
//! So after the records a segment holds, the bytes of its earlier use may
//! follow: a frame whose offset is not the next one ends the segment. A
//! segment may also be written ahead with zeros (preallocated), for the
//! same reason: zeros where a frame would start, and nothing but zeros up
//! to the end of the file, end the segment too. (No frame is all zeros: its
//! append time is not 0.)
//!
//! A frame that fails its checksum or is cut short at the end of the newest
//! segment is a write the process died in (never acknowledged): it is cut
//! off. A closed segment that does not hold every record up to the next
//! segment's first is corrupt.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What every segment starts with (the format's version is its last
/// character).
pub(crate) const MAGIC: &[u8; 8] = b"FLUMLOG2";

/// Bytes before each record's payload.
pub(crate) const FRAME_HEADER: u64 = 28;

/// Where the CRC sits in a frame's header.
const CRC_AT: usize = 24;

/// One record's frame, as found in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// Where the frame starts in the file.
    pub(crate) position: u64,
    pub(crate) length: u32,
    pub(crate) events: u32,
    pub(crate) appended_at: u64,
}

impl Frame {
    pub(crate) fn size(&self) -> u64 {
        FRAME_HEADER + u64::from(self.length)
    }
}

/// What a scan of a segment found wrong, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The last frame is cut short (a write the process died in).
    TornTail {
        /// Where the good frames end.
        valid_bytes: u64,
    },
    /// A frame fails its checksum or its length runs past the file.
    Corrupt {
        /// Where the bad frame starts.
        at: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// A segment's frames, up to the first that is not the next record.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) frames: Vec<Frame>,
    /// Why the frames end.
    pub(crate) stop: Stop,
    /// Where the last good frame ends.
    pub(crate) valid_bytes: u64,
    /// The file's size.
    pub(crate) bytes: u64,
}

/// What came after a segment's last good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The end of the file.
    End,
    /// A frame of the file's earlier use.
    Stale,
    /// Zeros from here to the end of the file: space written ahead.
    Zeroed,
    /// A frame cut short by the end of the file.
    Short,
    /// A frame that fails its checksum.
    Checksum,
}

impl Scan {
    /// What is wrong with the segment starting at `base`, given where the
    /// next one starts (`None` for the newest). Trims the frames of a
    /// closed segment to the records it should hold.
    pub(crate) fn damage(&mut self, base: u64, next_base: Option<u64>) -> Option<Damage> {
        let Some(next_base) = next_base else {
            return match self.stop {
                Stop::End | Stop::Stale | Stop::Zeroed => None,
                Stop::Short | Stop::Checksum => Some(Damage::TornTail {
                    valid_bytes: self.valid_bytes,
                }),
            };
        };
        let expected = next_base.saturating_sub(base);
        if self.frames.len() as u64 >= expected {
            self.frames.truncate(expected as usize);
            return None;
        }
        let found = base + self.frames.len() as u64;
        Some(Damage::Corrupt {
            at: self.valid_bytes,
            reason: match self.stop {
                Stop::Checksum => "checksum mismatch".into(),
                Stop::Short => "a record runs past the end of the file".into(),
                Stop::End | Stop::Stale | Stop::Zeroed => {
                    format!("records {found}..{next_base} are missing")
                }
            },
        })
    }
}

pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The name a released segment waits under until it is written over.
pub(crate) fn spare_name(base: u64) -> String {
    format!("{base:020}.spare")
}

/// The spare segments in `dir`.
pub(crate) fn spares(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut spares: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "spare"))
        .collect();
    spares.sort();
    Ok(spares)
}

/// The base offset of a segment file name, if it is one.
pub(crate) fn base_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

/// Every segment in `dir`, by base offset.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter_map(|path| base_of(&path).map(|base| (base, path)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// Reads the segment starting at `base` through, checking every frame.
/// Fails if the file is not a segment of this format.
pub(crate) fn scan(path: &Path, base: u64) -> std::io::Result<Scan> {
    let mut contents = Vec::new();
    File::open(path)?.read_to_end(&mut contents)?;
    let bytes = contents.len() as u64;
    let scan = |frames, stop, valid_bytes| Scan {
        frames,
        stop,
        valid_bytes,
        bytes,
    };
    if contents.is_empty() {
        return Ok(scan(Vec::new(), Stop::End, 0));
    }
    if !contents.starts_with(MAGIC) {
        let start = &contents[..contents.len().min(MAGIC.len())];
        if MAGIC.starts_with(&contents) || start.iter().all(|b| *b == 0) {
            // Created (or a spare of zeros renamed into place), and the
            // process died before the start was written. Nothing in it
            // was acknowledged: a record is synced with the start before
            // it is.
            return Ok(scan(Vec::new(), Stop::Short, 0));
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not a buffer segment of this version of Flumen (it does not start with {:?})",
                path.display(),
                String::from_utf8_lossy(MAGIC)
            ),
        ));
    }
    let mut frames = Vec::new();
    let mut at = MAGIC.len();
    let stop = loop {
        if at == contents.len() {
            break Stop::End;
        }
        let rest = &contents[at..];
        if rest[..rest.len().min(FRAME_HEADER as usize)]
            .iter()
            .all(|b| *b == 0)
        {
            // Zeros where a frame should start: space written ahead if
            // nothing but zeros follows, else a write the process died in,
            // some of whose pages reached the disk but not the first.
            break if rest.iter().all(|b| *b == 0) {
                Stop::Zeroed
            } else {
                Stop::Checksum
            };
        }
        let Some(header) = contents.get(at..at + FRAME_HEADER as usize) else {
            break Stop::Short;
        };
        let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(header[CRC_AT..].try_into().expect("4 bytes"));
        let end = at + FRAME_HEADER as usize + length as usize;
        let Some(payload) = contents.get(at + FRAME_HEADER as usize..end) else {
            break Stop::Short;
        };
        if checksum(&header[..CRC_AT], payload) != crc {
            break Stop::Checksum;
        }
        if offset != base + frames.len() as u64 {
            break Stop::Stale;
        }
        frames.push(Frame {
            position: at as u64,
            length,
            events: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
            appended_at: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        });
        at = end;
    };
    Ok(scan(frames, stop, at as u64))
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Writes one record's frame, its payload being `parts` back to back;
/// returns its size.
pub(crate) fn write_frame(
    out: &mut impl Write,
    offset: u64,
    events: u32,
    appended_at: u64,
    parts: &[&[u8]],
) -> std::io::Result<u64> {
    let length = u32::try_from(parts.iter().map(|part| part.len()).sum::<usize>())
        .map_err(|_| std::io::Error::other("a log record is larger than 4 GiB"))?;
    let mut header = [0u8; FRAME_HEADER as usize];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[4..8].copy_from_slice(&events.to_le_bytes());
    header[8..16].copy_from_slice(&appended_at.to_le_bytes());
    header[16..24].copy_from_slice(&offset.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..CRC_AT]);
    for part in parts {
        hasher.update(part);
    }
    header[CRC_AT..].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.write_all(&header)?;
    for part in parts {
        out.write_all(part)?;
    }
    Ok(FRAME_HEADER + u64::from(length))
}

/// Reads records' payloads back with one read of the bytes they span,
/// checking each again (the disk may have changed under a running
/// process, or the segment been released and written over). `frames` are
/// of one segment, in order, the first holding record `first_offset`.
pub(crate) fn read_payloads(
    file: &File,
    frames: &[Frame],
    first_offset: u64,
) -> std::io::Result<Vec<bytes::Bytes>> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Ok(Vec::new());
    };
    let start = first.position;
    let mut span = vec![0u8; (last.position + last.size() - start) as usize];
    file.read_exact_at(&mut span, start)?;
    let span = bytes::Bytes::from(span);
    frames
        .iter()
        .zip(first_offset..)
        .map(|(frame, offset)| {
            let at = (frame.position - start) as usize;
            let header = &span[at..at + FRAME_HEADER as usize];
            let payload = &span[at + FRAME_HEADER as usize..at + frame.size() as usize];
            let crc = u32::from_le_bytes(header[CRC_AT..].try_into().expect("4 bytes"));
            if checksum(&header[..CRC_AT], payload) != crc {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("checksum mismatch at byte {}", frame.position),
                ));
            }
            let found = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
            if found != offset {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "byte {} holds record {found}, not {offset} (the segment was released)",
                        frame.position
                    ),
                ));
            }
            Ok(span.slice(at + FRAME_HEADER as usize..at + frame.size() as usize))
        })
        .collect()
}
