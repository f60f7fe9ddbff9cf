//! Reading the first records of a source before a pipeline runs, so that
//! a declared schema that does not fit the data, or an input that is not
//! there, is found by `flumen validate` rather than by a run that rejects
//! everything.

use std::sync::Arc;

use crate::component::{InstanceInfo, SourceContext, SourceFactory, SourceStep};
use crate::dead_letter::Rejected;
use crate::error::Result;

/// What the first records of a source turned out to be.
#[derive(Debug, Default)]
pub struct Sample {
    /// Rows read that fit the schema.
    pub rows: usize,
    /// Records read that did not, with why.
    pub rejected: Vec<Rejected>,
}

/// Reads about `records` records of `source` (one instance reading all of
/// its input), or all of them if there are fewer. An input that cannot be
/// opened is the error.
pub async fn sample(source: &dyn SourceFactory, records: usize) -> Result<Sample> {
    let mut instance = source.create(InstanceInfo::SINGLE)?;
    instance.open(&SourceContext {
        node: Arc::from("sample"),
        instance: InstanceInfo::SINGLE,
        checkpointing: false,
    })?;
    let mut sample = Sample::default();
    // A source that stays idle has nothing to show yet.
    let mut idle = 0;
    while sample.rows + sample.rejected.len() < records && idle < 10 {
        let step = instance.next().await?;
        sample.rejected.extend(instance.take_rejected());
        match step {
            SourceStep::Batch(batch) => sample.rows += batch.num_rows(),
            SourceStep::Idle => idle += 1,
            SourceStep::Finished => break,
        }
    }
    Ok(sample)
}
