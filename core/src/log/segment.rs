//! The on-disk format of a log segment, and reading one back.
//!
//! A segment is a file named by the offset of its first record
//! (`00000000000000000042.log`) holding records back to back, each framed
//! as:
//!
//! ```text
//! length u32 | events u32 | appended_at u64 (ms) | crc32 u32 | payload
//! ```
//!
//! all little-endian; the CRC-32 covers `events`, `appended_at` and the
//! payload. A frame cut short at the end of the newest segment is a write
//! the process died in (never acknowledged): it is cut off. Anything else
//! that does not check out makes the segment corrupt.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before each record's payload.
pub(crate) const FRAME_HEADER: u64 = 20;

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

/// A segment's good frames and what is wrong with the rest.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) frames: Vec<Frame>,
    pub(crate) damage: Option<Damage>,
    pub(crate) bytes: u64,
}

pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
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

/// Reads a segment through, checking every frame.
pub(crate) fn scan(path: &Path) -> std::io::Result<Scan> {
    let mut contents = Vec::new();
    File::open(path)?.read_to_end(&mut contents)?;
    let bytes = contents.len() as u64;
    let mut frames = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        if at == contents.len() {
            break None;
        }
        let Some(header) = contents.get(at..at + FRAME_HEADER as usize) else {
            break Some(Damage::TornTail {
                valid_bytes: at as u64,
            });
        };
        let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
        let end = at + FRAME_HEADER as usize + length as usize;
        let Some(payload) = contents.get(at + FRAME_HEADER as usize..end) else {
            break Some(Damage::TornTail {
                valid_bytes: at as u64,
            });
        };
        if checksum(&header[4..16], payload) != crc {
            break Some(Damage::Corrupt {
                at: at as u64,
                reason: "checksum mismatch".into(),
            });
        }
        frames.push(Frame {
            position: at as u64,
            length,
            events: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
            appended_at: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        });
        at = end;
    };
    Ok(Scan {
        frames,
        damage,
        bytes,
    })
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Writes one record's frame; returns its size.
pub(crate) fn write_frame(
    out: &mut impl Write,
    events: u32,
    appended_at: u64,
    payload: &[u8],
) -> std::io::Result<u64> {
    let length = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("a log record is larger than 4 GiB"))?;
    let mut header = [0u8; FRAME_HEADER as usize];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[4..8].copy_from_slice(&events.to_le_bytes());
    header[8..16].copy_from_slice(&appended_at.to_le_bytes());
    let crc = checksum(&header[4..16], payload);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    Ok(FRAME_HEADER + u64::from(length))
}

/// Reads records' payloads back with one read of the bytes they span,
/// checking each again (the disk may have changed under a running
/// process). `frames` are of one segment, in order.
pub(crate) fn read_payloads(file: &File, frames: &[Frame]) -> std::io::Result<Vec<Vec<u8>>> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Ok(Vec::new());
    };
    let start = first.position;
    let mut span = vec![0u8; (last.position + last.size() - start) as usize];
    file.read_exact_at(&mut span, start)?;
    frames
        .iter()
        .map(|frame| {
            let at = (frame.position - start) as usize;
            let header = &span[at..at + FRAME_HEADER as usize];
            let payload = &span[at + FRAME_HEADER as usize..at + frame.size() as usize];
            let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
            if checksum(&header[4..16], payload) != crc {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("checksum mismatch at byte {}", frame.position),
                ));
            }
            Ok(payload.to_vec())
        })
        .collect()
}
