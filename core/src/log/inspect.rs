//! `flumen buffer inspect`: the segments as found on disk.

use super::*;

/// What `flumen buffer inspect` shows: the log's segments as found on
/// disk, without changing anything.
#[derive(Debug)]
pub struct Inspection {
    /// Every segment, oldest first.
    pub segments: Vec<SegmentReport>,
    /// Offsets below this were released.
    pub released: u64,
    /// Segments already moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
    /// Released segments kept to be written over.
    pub spares: usize,
}

/// One segment as found on disk.
#[derive(Debug)]
pub struct SegmentReport {
    /// The segment file.
    pub path: PathBuf,
    /// The offset of its first record.
    pub base: u64,
    /// Good records in it.
    pub records: u64,
    /// Events in those.
    pub events: u64,
    /// The bytes its records take (a reused segment's file may be
    /// larger).
    pub bytes: u64,
    /// Append time of its first record (ms since the epoch).
    pub oldest: Option<u64>,
    /// Append time of its last good record.
    pub newest: Option<u64>,
    /// What is wrong with it, if anything.
    pub damage: Option<Damage>,
}

/// Reads the log in `dir` through, changing nothing.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let io = |e: std::io::Error| failure(format!("buffer {}: {e}", dir.display()));
    if !dir.is_dir() {
        return Err(failure(format!("{} is not a directory", dir.display())));
    }
    let released = std::fs::read_to_string(dir.join(RELEASED_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut segments = Vec::new();
    let listed = segment::list(dir).map_err(io)?;
    for (i, (base, path)) in listed.iter().enumerate() {
        let next_base = listed.get(i + 1).map(|(b, _)| *b);
        let mut scan = segment::scan(path, *base).map_err(io)?;
        let damage = scan.damage(*base, next_base);
        segments.push(SegmentReport {
            base: *base,
            records: scan.frames.len() as u64,
            events: scan.frames.iter().map(|f| u64::from(f.events)).sum(),
            bytes: scan.valid_bytes,
            oldest: scan.frames.first().map(|f| f.appended_at),
            newest: scan.frames.last().map(|f| f.appended_at),
            damage,
            path: path.clone(),
        });
    }
    let quarantined = segment::list(&dir.join("quarantine"))
        .map(|list| list.into_iter().map(|(_, path)| path).collect())
        .unwrap_or_default();
    Ok(Inspection {
        segments,
        released,
        quarantined,
        spares: segment::spares(dir).map_or(0, |spares| spares.len()),
    })
}
