//! The Nexmark event model: which event an event number is, its ids and
//! times, as the Nexmark generator (Beam's and Flink's) defines them.
//!
//! Every event is a pure function of the seed and its event number, so any
//! range of events can be generated independently (and in parallel) and the
//! same seed always gives the same events.

/// Persons per 50 events.
pub const PERSON_PROPORTION: u64 = 1;
/// Auctions per 50 events.
pub const AUCTION_PROPORTION: u64 = 3;
/// Bids per 50 events.
pub const BID_PROPORTION: u64 = 46;
/// Events in one round of the proportions.
pub const PROPORTION_DENOMINATOR: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

/// The first person id; ids count up from here.
pub const FIRST_PERSON_ID: i64 = 1000;
/// The first auction id.
pub const FIRST_AUCTION_ID: i64 = 1000;
/// The first category id.
pub const FIRST_CATEGORY_ID: i64 = 10;
/// How many categories there are.
pub const NUM_CATEGORIES: u64 = 5;

/// Hot sellers are the first person of each group of this many.
pub const HOT_SELLER_RATIO: u64 = 100;
/// Hot auctions are the first auction of each group of this many.
pub const HOT_AUCTION_RATIO: u64 = 100;
/// Hot bidders are the second person of each group of this many.
pub const HOT_BIDDER_RATIO: u64 = 100;
/// How far past the newest person a random person id may reach.
pub const PERSON_ID_LEAD: u64 = 10;
/// How far past the newest auction a random auction id may reach.
pub const AUCTION_ID_LEAD: u64 = 10;

/// The three kinds of Nexmark event.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new user.
    Person,
    /// A new item for sale.
    Auction,
    /// A bid on an auction.
    Bid,
}

impl EventKind {
    /// The kind of event number `event`.
    pub fn of(event: u64) -> EventKind {
        let rem = event % PROPORTION_DENOMINATOR;
        if rem < PERSON_PROPORTION {
            EventKind::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    /// How many of the events `0..events` are of this kind.
    pub fn count_in(self, events: u64) -> u64 {
        let (rounds, rest) = (
            events / PROPORTION_DENOMINATOR,
            events % PROPORTION_DENOMINATOR,
        );
        let (start, len) = match self {
            EventKind::Person => (0, PERSON_PROPORTION),
            EventKind::Auction => (PERSON_PROPORTION, AUCTION_PROPORTION),
            EventKind::Bid => (PERSON_PROPORTION + AUCTION_PROPORTION, BID_PROPORTION),
        };
        rounds * len + rest.saturating_sub(start).min(len)
    }
}

/// Base-0 id of the newest person at event `event`.
pub fn last_base0_person_id(event: u64) -> u64 {
    let epoch = event / PROPORTION_DENOMINATOR;
    let offset = event % PROPORTION_DENOMINATOR;
    // Past this round's persons: the round's last person.
    let offset = if offset >= PERSON_PROPORTION {
        PERSON_PROPORTION - 1
    } else {
        offset
    };
    epoch * PERSON_PROPORTION + offset
}

/// Base-0 id of the newest auction at event `event`.
pub fn last_base0_auction_id(event: u64) -> u64 {
    let mut epoch = event / PROPORTION_DENOMINATOR;
    let mut offset = event % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // Before this round's first auction: the last one of the previous
        // round. (Event 0 has none; it maps to auction 0 as in Beam.)
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

/// A random person among the recently active ones (or slightly ahead).
pub fn next_base0_person_id(event: u64, rng: &mut EventRng, active_people: u64) -> u64 {
    let people = last_base0_person_id(event) + 1;
    let active = people.min(active_people);
    let n = rng.below(active + PERSON_ID_LEAD);
    people - active + n
}

/// A random auction among those in flight (or slightly ahead).
pub fn next_base0_auction_id(event: u64, rng: &mut EventRng, in_flight: u64) -> u64 {
    let max = last_base0_auction_id(event);
    let min = max.saturating_sub(in_flight);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

/// A log-uniform price in cents between 1.00 and 1,000,000.00.
pub fn next_price(rng: &mut EventRng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// A small, fast random generator seeded per event (splitmix64), so that
/// each event depends only on the seed and its number.
///
/// Nexmark's reference generator seeds `java.util.Random` with the event
/// id; this is the same idea with a generator that costs a few cycles.
#[derive(Debug, Clone)]
pub struct EventRng {
    state: u64,
}

impl EventRng {
    /// The generator for event `event` under `seed`.
    pub fn for_event(seed: u64, event: u64) -> Self {
        // Scramble the starting point, so that neighbouring events do not
        // walk the same sequence one step apart.
        let mut start = EventRng {
            state: seed ^ event.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        EventRng {
            state: start.next_u64(),
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Appends `len` random lowercase letters to `out`.
    pub fn letters(&mut self, len: usize, out: &mut String) {
        let mut left = len;
        while left > 0 {
            let bits = self.next_u64().to_le_bytes();
            for byte in bits.iter().take(left) {
                // Scale a byte to 0..26: close enough to uniform.
                out.push((b'a' + ((*byte as u32 * 26) >> 8) as u8) as char);
            }
            left = left.saturating_sub(8);
        }
    }

    /// Nexmark's `nextString`: 3 to `max_len - 1` letters with the odd
    /// space, trimmed.
    pub fn words(&mut self, max_len: u64, out: &mut String) {
        let len = 3 + self.below(max_len - 3);
        let start = out.len();
        for _ in 0..len {
            let r = self.next_u64();
            if r.is_multiple_of(13) {
                out.push(' ');
            } else {
                out.push((b'a' + ((r >> 32) % 26) as u8) as char);
            }
        }
        let trimmed = out[start..].trim();
        if trimmed.len() != out.len() - start {
            let trimmed = trimmed.to_string();
            out.truncate(start);
            out.push_str(&trimmed);
        }
    }

    /// Nexmark's `nextExtra`: padding so that the event's average size is
    /// `average`, given that its other fields take `current` bytes.
    pub fn extra(&mut self, current: usize, average: usize, out: &mut String) {
        if current > average {
            return;
        }
        let wanted = average - current;
        let delta = (wanted as f64 * 0.2).round() as usize;
        let min = wanted - delta;
        let len = if delta == 0 {
            min
        } else {
            min + self.below(2 * delta as u64) as usize
        };
        self.letters(len, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_proportions() {
        let kinds: Vec<EventKind> = (0..50).map(EventKind::of).collect();
        assert_eq!(kinds[0], EventKind::Person);
        assert!(kinds[1..4].iter().all(|k| *k == EventKind::Auction));
        assert!(kinds[4..].iter().all(|k| *k == EventKind::Bid));
        for n in [0, 1, 3, 4, 49, 50, 51, 1234] {
            for kind in [EventKind::Person, EventKind::Auction, EventKind::Bid] {
                let counted = (0..n).filter(|e| EventKind::of(*e) == kind).count() as u64;
                assert_eq!(kind.count_in(n), counted, "{kind:?} in {n}");
            }
        }
    }

    #[test]
    fn ids_count_up_with_the_events() {
        // Event 50 is the second round's person: person 1.
        assert_eq!(last_base0_person_id(50), 1);
        assert_eq!(last_base0_person_id(99), 1);
        // Events 51..54 are auctions 3, 4, 5.
        assert_eq!(last_base0_auction_id(51), 3);
        assert_eq!(last_base0_auction_id(53), 5);
        // A bid at event 60 sees auction 5 as the newest.
        assert_eq!(last_base0_auction_id(60), 5);
        // The person at event 100 sees the previous round's last auction.
        assert_eq!(last_base0_auction_id(100), 5);
    }

    #[test]
    fn prices_are_log_uniform_between_1_and_1m_dollars() {
        let mut rng = EventRng::for_event(1, 1);
        let prices: Vec<i64> = (0..100_000).map(|_| next_price(&mut rng)).collect();
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        // Log-uniform: about a sixth of prices in each decade.
        let under_10_dollars = prices.iter().filter(|p| **p < 1_000).count();
        assert!(
            (15_000..18_500).contains(&under_10_dollars),
            "{under_10_dollars}"
        );
    }

    #[test]
    fn neighbouring_events_draw_unrelated_numbers() {
        let draws = |event| {
            let mut rng = EventRng::for_event(0, event);
            [rng.next_u64(), rng.next_u64(), rng.next_u64()]
        };
        for event in 0..1000 {
            let (a, b) = (draws(event), draws(event + 1));
            assert!(
                a.iter().all(|x| !b.contains(x)),
                "events {event} and {}",
                event + 1
            );
        }
    }

    #[test]
    fn rng_is_deterministic_per_seed_and_event() {
        let a: Vec<u64> = (0..4)
            .map(|_| EventRng::for_event(7, 42).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            EventRng::for_event(7, 42).next_u64(),
            EventRng::for_event(8, 42).next_u64()
        );
        assert_ne!(
            EventRng::for_event(7, 42).next_u64(),
            EventRng::for_event(7, 43).next_u64()
        );
    }
}
