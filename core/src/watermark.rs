//! The watermark of a node with several input channels: the minimum over
//! the channels that are neither idle nor ended.

use crate::message::{EventTime, Watermark};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Active(EventTime),
    Idle,
    Ended,
}

/// Combines the watermarks of a node's input channels.
///
/// The combined watermark is the minimum over active channels. An idle
/// channel does not hold it back; an ended one never will again. When every
/// open channel is idle, the node is idle itself. The combined watermark
/// never goes backwards.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    channels: Vec<ChannelState>,
    last_time: Option<EventTime>,
    idle: bool,
}

impl WatermarkTracker {
    /// A tracker for `channels` inputs, none of which has sent a watermark.
    pub fn new(channels: usize) -> Self {
        WatermarkTracker {
            channels: vec![ChannelState::Active(EventTime::MIN); channels],
            last_time: None,
            idle: false,
        }
    }

    /// Records a watermark from `channel`; returns the watermark the node
    /// should forward, if its combined watermark changed.
    pub fn update(&mut self, channel: usize, watermark: Watermark) -> Option<Watermark> {
        let state = &mut self.channels[channel];
        match (watermark, *state) {
            (_, ChannelState::Ended) => return None,
            (Watermark::Idle, _) => *state = ChannelState::Idle,
            (Watermark::EventTime(t), ChannelState::Active(prev)) => {
                *state = ChannelState::Active(prev.max(t))
            }
            (Watermark::EventTime(t), ChannelState::Idle) => *state = ChannelState::Active(t),
        }
        self.combine()
    }

    /// Records that `channel` ended; returns the watermark to forward if
    /// that let the combined watermark advance.
    pub fn end(&mut self, channel: usize) -> Option<Watermark> {
        self.channels[channel] = ChannelState::Ended;
        if self.all_ended() {
            return None;
        }
        self.combine()
    }

    /// Whether every channel has ended.
    pub fn all_ended(&self) -> bool {
        self.channels.iter().all(|c| *c == ChannelState::Ended)
    }

    /// The combined event-time watermark forwarded so far, if any.
    pub fn current(&self) -> Option<EventTime> {
        self.last_time
    }

    fn combine(&mut self) -> Option<Watermark> {
        let active_min = self
            .channels
            .iter()
            .filter_map(|c| match c {
                ChannelState::Active(t) => Some(*t),
                _ => None,
            })
            .min();
        match active_min {
            // Some active channel has not sent a watermark yet.
            Some(EventTime::MIN) => None,
            Some(min) => {
                let was_idle = std::mem::replace(&mut self.idle, false);
                let advanced = self.last_time.is_none_or(|last| min > last);
                if advanced || was_idle {
                    let time = self.last_time.map_or(min, |last| last.max(min));
                    self.last_time = Some(time);
                    return Some(Watermark::EventTime(time));
                }
                None
            }
            None if self.channels.contains(&ChannelState::Idle) && !self.idle => {
                self.idle = true;
                Some(Watermark::Idle)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const fn at(t: EventTime) -> Watermark {
        Watermark::EventTime(t)
    }

    #[test]
    fn minimum_over_inputs() {
        let mut tracker = WatermarkTracker::new(2);
        assert_eq!(tracker.update(0, at(10)), None, "input 1 has sent nothing");
        assert_eq!(tracker.update(1, at(5)), Some(at(5)));
        assert_eq!(tracker.update(1, at(20)), Some(at(10)));
        assert_eq!(tracker.update(0, at(15)), Some(at(15)));
        assert_eq!(tracker.update(0, at(12)), None, "never goes backwards");
    }

    #[test]
    fn idle_input_does_not_hold_back() {
        let mut tracker = WatermarkTracker::new(2);
        tracker.update(0, at(100));
        assert_eq!(tracker.update(1, Watermark::Idle), Some(at(100)));
        assert_eq!(tracker.update(0, at(200)), Some(at(200)));
        // The idle input comes back behind: it holds the watermark again
        // from here on, without moving it back.
        assert_eq!(tracker.update(1, at(150)), None);
        assert_eq!(tracker.update(0, at(300)), None, "input 1 holds it at 200");
        assert_eq!(tracker.current(), Some(200));
        assert_eq!(tracker.update(1, at(250)), Some(at(250)));
    }

    #[test]
    fn all_idle_makes_the_node_idle_until_data_returns() {
        let mut tracker = WatermarkTracker::new(2);
        tracker.update(0, at(1));
        tracker.update(1, at(2));
        assert_eq!(tracker.update(0, Watermark::Idle), Some(at(2)));
        assert_eq!(tracker.update(1, Watermark::Idle), Some(Watermark::Idle));
        assert_eq!(tracker.update(1, Watermark::Idle), None);
        assert_eq!(tracker.update(1, at(2)), Some(at(2)), "active again");
    }

    #[test]
    fn ended_input_releases_the_watermark() {
        let mut tracker = WatermarkTracker::new(2);
        tracker.update(0, at(50));
        tracker.update(1, at(10));
        assert_eq!(tracker.end(1), Some(at(50)));
        assert!(!tracker.all_ended());
        assert_eq!(tracker.end(0), None);
        assert!(tracker.all_ended());
    }

    proptest! {
        /// Whatever the inputs send, the forwarded watermark never goes
        /// backwards, never passes what some input sent, and catches up once
        /// every input reports the same time.
        #[test]
        fn forwarded_watermark_is_monotonic_and_never_invented(
            updates in prop::collection::vec((0usize..3, prop::option::of(0i64..1000)), 1..60),
            finally in 1000i64..2000,
        ) {
            let mut tracker = WatermarkTracker::new(3);
            let mut forwarded: Option<EventTime> = None;
            let mut highest_sent = EventTime::MIN;
            for (channel, update) in updates {
                if let Some(t) = update {
                    highest_sent = highest_sent.max(t);
                }
                let watermark = update.map_or(Watermark::Idle, Watermark::EventTime);
                if let Some(Watermark::EventTime(t)) = tracker.update(channel, watermark) {
                    prop_assert!(forwarded.is_none_or(|f| t >= f));
                    prop_assert!(t <= highest_sent);
                    forwarded = Some(t);
                }
            }
            for channel in 0..3 {
                tracker.update(channel, at(finally));
            }
            prop_assert_eq!(tracker.current(), Some(finally));
        }
    }
}
