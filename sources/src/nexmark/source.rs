//! The Nexmark generator as a parallel source.

use std::time::{Duration, Instant};

use flumen_core::prelude::*;

use super::config::NexmarkConfig;
use super::generator::{GeneratorSettings, NexmarkGenerator, schema_of};

/// A source of Nexmark events. Built from a [`NexmarkConfig`].
///
/// With parallelism *p*, the event numbers are cut into chunks of
/// `batch_size` and instance *i* generates chunks *i*, *i + p*, ...: the
/// instances together produce exactly the events one instance would.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    config: NexmarkConfig,
    settings: GeneratorSettings,
}

impl NexmarkSource {
    pub(super) fn new(config: NexmarkConfig, settings: GeneratorSettings) -> Self {
        NexmarkSource { config, settings }
    }
}

impl SourceFactory for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        schema_of(self.config.kind)
    }

    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>> {
        let pacing = self.config.max_events_per_second.map(|rate| {
            let per_instance = (rate as f64 / instance.parallelism as f64).max(1.0);
            Pacing {
                events_per_second: per_instance,
                started: None,
                events_done: 0,
            }
        });
        // Rate-limited sources emit about ten batches a second.
        let chunk = match &pacing {
            Some(p) => {
                (self.config.batch_size as u64).min((p.events_per_second / 10.0).ceil() as u64)
            }
            None => self.config.batch_size as u64,
        }
        .max(1);
        Ok(Box::new(NexmarkInstance {
            generator: NexmarkGenerator::new(self.settings.clone()),
            kind: self.config.kind,
            chunk,
            next_chunk: instance.index as u64,
            step: instance.parallelism as u64,
            end: self.config.events,
            pacing,
        }))
    }

    fn default_event_time(&self) -> Option<EventTimeConfig> {
        Some(EventTimeConfig::new("date_time"))
    }

    fn expected_events(&self) -> Option<u64> {
        self.config
            .events
            .map(|events| self.config.kind.count_in(events))
    }
}

struct Pacing {
    events_per_second: f64,
    started: Option<Instant>,
    events_done: u64,
}

impl Pacing {
    /// How long until the next chunk is due, if it is not yet.
    fn wait(&mut self) -> Option<Duration> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due =
            started + Duration::from_secs_f64(self.events_done as f64 / self.events_per_second);
        due.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

struct NexmarkInstance {
    generator: NexmarkGenerator,
    kind: super::EventKind,
    chunk: u64,
    next_chunk: u64,
    step: u64,
    end: Option<u64>,
    pacing: Option<Pacing>,
}

#[async_trait]
impl Source for NexmarkInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        loop {
            let start = self.next_chunk * self.chunk;
            let end = match self.end {
                Some(total) if start >= total => return Ok(SourceStep::Finished),
                Some(total) => (start + self.chunk).min(total),
                None => start + self.chunk,
            };
            if let Some(pacing) = &mut self.pacing {
                if let Some(wait) = pacing.wait() {
                    // Sleep at most 100 ms so shutdown is noticed promptly.
                    tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
                    if pacing.wait().is_some() {
                        return Ok(SourceStep::Idle);
                    }
                }
                pacing.events_done += end - start;
            }
            self.next_chunk += self.step;
            let batch = self.generator.generate_kind(start..end, self.kind);
            if batch.num_rows() > 0 {
                return Ok(SourceStep::Batch(batch));
            }
        }
    }

    fn position(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "next_chunk": self.next_chunk }))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        // Events are a pure function of their number: resuming is skipping.
        self.next_chunk = position
            .get("next_chunk")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::internal(format!("not a Nexmark source position: {position}")))?;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        // This instance's share of the events of its kind not yet generated.
        let total = self.end?;
        let next = (self.next_chunk * self.chunk).min(total);
        Some((self.kind.count_in(total) - self.kind.count_in(next)) / self.step)
    }
}
