//! `flumen buffer inspect DIR`: what a durable buffer holds, read without
//! changing it.

use std::path::PathBuf;

use flumen_core::log::{SegmentDamage, inspect};

use super::Failure;

/// What to show.
#[derive(Debug, clap::Subcommand)]
pub enum BufferCommand {
    /// Size, segments, the oldest and newest records, and any damage
    /// found (checksums are checked, nothing is changed).
    Inspect {
        /// The buffer's directory (an HTTP source's `buffer.dir`).
        dir: PathBuf,
    },
}

pub fn run(command: BufferCommand) -> Result<(), Failure> {
    let BufferCommand::Inspect { dir } = command;
    let report = inspect(&dir).map_err(|e| Failure::Usage(e.to_string()))?;
    let released = report.released;
    let waiting: u64 = report
        .segments
        .iter()
        .map(|s| s.base + s.records)
        .max()
        .unwrap_or(released)
        .saturating_sub(released);
    let bytes: u64 = report.segments.iter().map(|s| s.bytes).sum();
    println!("buffer {}", dir.display());
    println!("  segments        {}", report.segments.len());
    println!(
        "  spare segments  {} (kept to be written over)",
        report.spares
    );
    println!("  bytes used      {bytes}");
    println!("  released below  offset {released}");
    println!("  waiting         {waiting} records");
    let oldest = report.segments.iter().find_map(|s| s.oldest);
    let newest = report.segments.iter().rev().find_map(|s| s.newest);
    println!("  oldest record   {}", time(oldest));
    println!("  newest record   {}", time(newest));
    println!();
    println!(
        "  {:<26} {:>10} {:>9} {:>10} {:>12}  problem",
        "segment", "offsets", "records", "events", "bytes"
    );
    let mut damaged = 0;
    for segment in &report.segments {
        let name = segment
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let problem = match &segment.damage {
            None => String::new(),
            Some(SegmentDamage::TornTail { valid_bytes }) => {
                format!("last write cut short after byte {valid_bytes} (cut off when opened)")
            }
            Some(SegmentDamage::Corrupt { at, reason }) => {
                damaged += 1;
                format!("CORRUPT at byte {at}: {reason} (quarantined when opened)")
            }
        };
        println!(
            "  {:<26} {:>10} {:>9} {:>10} {:>12}  {problem}",
            name,
            match segment.records {
                0 => "-".to_string(),
                n => format!("{}-{}", segment.base, segment.base + n - 1),
            },
            segment.records,
            segment.events,
            segment.bytes
        );
    }
    for path in &report.quarantined {
        println!("  quarantined: {}", path.display());
    }
    if damaged > 0 || !report.quarantined.is_empty() {
        println!();
        println!(
            "  {damaged} damaged segment(s), {} already quarantined",
            report.quarantined.len()
        );
    }
    Ok(())
}

fn time(millis: Option<u64>) -> String {
    millis
        .and_then(|m| chrono::DateTime::from_timestamp_millis(m as i64))
        .map_or("-".into(), |t| {
            t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        })
}
