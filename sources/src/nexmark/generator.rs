//! Writes Nexmark events straight into Arrow columns.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int64Array, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::model::*;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/faceb/item.htm?query=1",
    "https://www.nexmark.com/baidu/item.htm?query=1",
    "https://www.nexmark.com/apple/item.htm?query=1",
];
/// Half the bids come from a hot channel, the rest from this many others.
const CHANNELS: usize = 10_000;
const HOT_CHANNEL_RATIO: u64 = 2;
/// Seeds the URLs of the non-hot channels (the same in every run).
const CHANNEL_SEED: u64 = 0x006e_6578_6d61_726b;

/// Average encoded sizes the `extra` padding aims for, in bytes.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;

/// Knobs of the generator, with Nexmark's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorSettings {
    /// Seed: the same seed gives the same events.
    pub seed: u64,
    /// Event time of event 0, in milliseconds since the epoch.
    pub base_time: i64,
    /// Events per second of event time.
    pub event_rate: u64,
    /// One in this many auctions of a bid is random; the rest are hot.
    pub hot_auction_ratio: u64,
    /// One in this many bidders is random; the rest are hot.
    pub hot_bidder_ratio: u64,
    /// One in this many sellers is random; the rest are hot.
    pub hot_seller_ratio: u64,
    /// How many people are active (bid or sell) at a time.
    pub active_people: u64,
    /// How many auctions are open at a time.
    pub in_flight_auctions: u64,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSettings {
            seed: 0,
            base_time: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            event_rate: 10_000,
            hot_auction_ratio: 2,
            hot_bidder_ratio: 4,
            hot_seller_ratio: 4,
            active_people: 1000,
            in_flight_auctions: 100,
        }
    }
}

impl GeneratorSettings {
    /// Event time of event number `event`: time advances one second every
    /// `event_rate` events.
    pub fn timestamp(&self, event: u64) -> i64 {
        self.base_time + ((event as u128 * 1000) / self.event_rate as u128) as i64
    }
}

fn timestamp_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

/// Schema of person events.
pub fn person_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("email_address", DataType::Utf8, false),
                Field::new("credit_card", DataType::Utf8, false),
                Field::new("city", DataType::Utf8, false),
                Field::new("state", DataType::Utf8, false),
                timestamp_field("date_time"),
                Field::new("extra", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Schema of auction events.
pub fn auction_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("item_name", DataType::Utf8, false),
                Field::new("description", DataType::Utf8, false),
                Field::new("initial_bid", DataType::Int64, false),
                Field::new("reserve", DataType::Int64, false),
                timestamp_field("date_time"),
                timestamp_field("expires"),
                Field::new("seller", DataType::Int64, false),
                Field::new("category", DataType::Int64, false),
                Field::new("extra", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Schema of bid events.
pub fn bid_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("auction", DataType::Int64, false),
                Field::new("bidder", DataType::Int64, false),
                Field::new("price", DataType::Int64, false),
                Field::new("channel", DataType::Utf8, false),
                Field::new("url", DataType::Utf8, false),
                timestamp_field("date_time"),
                Field::new("extra", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// The schema of events of `kind`.
pub fn schema_of(kind: EventKind) -> SchemaRef {
    match kind {
        EventKind::Person => person_schema(),
        EventKind::Auction => auction_schema(),
        EventKind::Bid => bid_schema(),
    }
}

/// The non-hot channels and their URLs, built once.
fn channels() -> &'static [(String, String)] {
    static CHANNEL_URLS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CHANNEL_URLS.get_or_init(|| {
        (0..CHANNELS)
            .map(|i| {
                let mut rng = EventRng::for_event(CHANNEL_SEED, i as u64);
                let mut path = String::new();
                for _ in 0..3 {
                    rng.letters(5, &mut path);
                    path.push('/');
                }
                (
                    format!("channel-{i}"),
                    format!(
                        "https://www.nexmark.com/{path}item.htm?query=1&channel_id={}",
                        (i as u32).reverse_bits()
                    ),
                )
            })
            .collect()
    })
}

/// Generates Nexmark events into Arrow batches, one batch per kind.
#[derive(Debug, Clone)]
pub struct NexmarkGenerator {
    settings: GeneratorSettings,
    scratch: String,
}

/// The batches generated for a range of events. A kind not asked for is
/// `None`.
#[derive(Debug, Default)]
pub struct GeneratedBatches {
    /// Person events.
    pub persons: Option<RecordBatch>,
    /// Auction events.
    pub auctions: Option<RecordBatch>,
    /// Bid events.
    pub bids: Option<RecordBatch>,
}

impl NexmarkGenerator {
    /// A generator with these settings.
    pub fn new(settings: GeneratorSettings) -> Self {
        NexmarkGenerator {
            settings,
            scratch: String::with_capacity(256),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &GeneratorSettings {
        &self.settings
    }

    /// Generates events `events` of the kinds in `kinds`. Events of other
    /// kinds are skipped without cost.
    pub fn generate(&mut self, events: Range<u64>, kinds: &[EventKind]) -> GeneratedBatches {
        let wants = |kind| kinds.contains(&kind);
        let mut persons = wants(EventKind::Person).then(|| {
            PersonColumns::new(
                EventKind::Person.count_in(events.end) - EventKind::Person.count_in(events.start),
            )
        });
        let mut auctions = wants(EventKind::Auction).then(|| {
            AuctionColumns::new(
                EventKind::Auction.count_in(events.end) - EventKind::Auction.count_in(events.start),
            )
        });
        let mut bids = wants(EventKind::Bid).then(|| {
            BidColumns::new(
                EventKind::Bid.count_in(events.end) - EventKind::Bid.count_in(events.start),
            )
        });

        for event in events {
            match EventKind::of(event) {
                EventKind::Person => {
                    if let Some(columns) = &mut persons {
                        self.person(event, columns);
                    }
                }
                EventKind::Auction => {
                    if let Some(columns) = &mut auctions {
                        self.auction(event, columns);
                    }
                }
                EventKind::Bid => {
                    if let Some(columns) = &mut bids {
                        self.bid(event, columns);
                    }
                }
            }
        }
        GeneratedBatches {
            persons: persons.map(PersonColumns::finish),
            auctions: auctions.map(AuctionColumns::finish),
            bids: bids.map(BidColumns::finish),
        }
    }

    /// Generates events `events` and returns those of `kind`.
    pub fn generate_kind(&mut self, events: Range<u64>, kind: EventKind) -> RecordBatch {
        let batches = self.generate(events, &[kind]);
        match kind {
            EventKind::Person => batches.persons,
            EventKind::Auction => batches.auctions,
            EventKind::Bid => batches.bids,
        }
        .expect("the requested kind is generated")
    }

    fn person(&mut self, event: u64, out: &mut PersonColumns) {
        let mut rng = EventRng::for_event(self.settings.seed, event);
        let s = &mut self.scratch;
        out.id
            .push(last_base0_person_id(event) as i64 + FIRST_PERSON_ID);

        s.clear();
        s.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
        s.push(' ');
        s.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
        out.name.append_value(&*s);
        let mut size = s.len();

        s.clear();
        rng.words(7, s);
        s.push('@');
        rng.words(5, s);
        s.push_str(".com");
        out.email.append_value(&*s);
        size += s.len();

        s.clear();
        for group in 0..4 {
            if group > 0 {
                s.push(' ');
            }
            let digits = rng.below(10_000);
            push_4_digits(s, digits);
        }
        out.credit_card.append_value(&*s);
        size += s.len();

        let city = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
        let state = US_STATES[rng.below(US_STATES.len() as u64) as usize];
        out.city.append_value(city);
        out.state.append_value(state);
        size += 8 + city.len() + state.len();

        out.date_time.push(self.settings.timestamp(event));
        s.clear();
        rng.extra(size, AVG_PERSON_BYTES, s);
        out.extra.append_value(&*s);
    }

    fn auction(&mut self, event: u64, out: &mut AuctionColumns) {
        let settings = &self.settings;
        let mut rng = EventRng::for_event(settings.seed, event);
        let s = &mut self.scratch;
        let timestamp = settings.timestamp(event);
        out.id
            .push(last_base0_auction_id(event) as i64 + FIRST_AUCTION_ID);

        let seller = if rng.below(settings.hot_seller_ratio) > 0 {
            (last_base0_person_id(event) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            next_base0_person_id(event, &mut rng, settings.active_people)
        };
        out.seller.push(seller as i64 + FIRST_PERSON_ID);
        out.category
            .push(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
        let initial_bid = next_price(&mut rng);
        out.initial_bid.push(initial_bid);

        // Auctions stay open about as long as it takes for the next
        // `in_flight_auctions` auctions to be created.
        let events_for_auctions =
            settings.in_flight_auctions * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
        let horizon = settings.timestamp(event + events_for_auctions) - timestamp;
        out.expires
            .push(timestamp + 1 + rng.below((horizon * 2).max(1) as u64) as i64);
        out.date_time.push(timestamp);

        s.clear();
        rng.words(20, s);
        out.item_name.append_value(&*s);
        let mut size = 8 + s.len();
        s.clear();
        rng.words(100, s);
        out.description.append_value(&*s);
        size += s.len() + 40;

        out.reserve.push(initial_bid + next_price(&mut rng));
        s.clear();
        rng.extra(size, AVG_AUCTION_BYTES, s);
        out.extra.append_value(&*s);
    }

    fn bid(&mut self, event: u64, out: &mut BidColumns) {
        let settings = &self.settings;
        let mut rng = EventRng::for_event(settings.seed, event);
        let auction = if rng.below(settings.hot_auction_ratio) > 0 {
            (last_base0_auction_id(event) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            next_base0_auction_id(event, &mut rng, settings.in_flight_auctions)
        };
        out.auction.push(auction as i64 + FIRST_AUCTION_ID);
        let bidder = if rng.below(settings.hot_bidder_ratio) > 0 {
            // The second person of the group, so hot bidders and hot sellers
            // differ.
            (last_base0_person_id(event) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            next_base0_person_id(event, &mut rng, settings.active_people)
        };
        out.bidder.push(bidder as i64 + FIRST_PERSON_ID);
        out.price.push(next_price(&mut rng));

        if rng.below(HOT_CHANNEL_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            out.channel.append_value(HOT_CHANNELS[i]);
            out.url.append_value(HOT_URLS[i]);
        } else {
            let (channel, url) = &channels()[rng.below(CHANNELS as u64) as usize];
            out.channel.append_value(channel);
            out.url.append_value(url);
        }
        out.date_time.push(settings.timestamp(event));
        self.scratch.clear();
        rng.extra(32, AVG_BID_BYTES, &mut self.scratch);
        out.extra.append_value(&self.scratch);
    }
}

fn push_4_digits(s: &mut String, n: u64) {
    for divisor in [1000, 100, 10, 1] {
        s.push((b'0' + ((n / divisor) % 10) as u8) as char);
    }
}

fn strings(rows: usize, bytes_per_row: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes_per_row)
}

fn int64(values: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

fn timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values))
}

struct PersonColumns {
    id: Vec<i64>,
    name: StringBuilder,
    email: StringBuilder,
    credit_card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    date_time: Vec<i64>,
    extra: StringBuilder,
}

impl PersonColumns {
    fn new(rows: u64) -> Self {
        let rows = rows as usize;
        PersonColumns {
            id: Vec::with_capacity(rows),
            name: strings(rows, 12),
            email: strings(rows, 12),
            credit_card: strings(rows, 19),
            city: strings(rows, 8),
            state: strings(rows, 2),
            date_time: Vec::with_capacity(rows),
            extra: strings(rows, 140),
        }
    }

    fn finish(mut self) -> RecordBatch {
        let columns = vec![
            int64(self.id),
            Arc::new(self.name.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.credit_card.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.state.finish()),
            timestamps(self.date_time),
            Arc::new(self.extra.finish()),
        ];
        RecordBatch::try_new(person_schema(), columns).expect("columns match the person schema")
    }
}

struct AuctionColumns {
    id: Vec<i64>,
    item_name: StringBuilder,
    description: StringBuilder,
    initial_bid: Vec<i64>,
    reserve: Vec<i64>,
    date_time: Vec<i64>,
    expires: Vec<i64>,
    seller: Vec<i64>,
    category: Vec<i64>,
    extra: StringBuilder,
}

impl AuctionColumns {
    fn new(rows: u64) -> Self {
        let rows = rows as usize;
        AuctionColumns {
            id: Vec::with_capacity(rows),
            item_name: strings(rows, 11),
            description: strings(rows, 50),
            initial_bid: Vec::with_capacity(rows),
            reserve: Vec::with_capacity(rows),
            date_time: Vec::with_capacity(rows),
            expires: Vec::with_capacity(rows),
            seller: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            extra: strings(rows, 400),
        }
    }

    fn finish(mut self) -> RecordBatch {
        let columns = vec![
            int64(self.id),
            Arc::new(self.item_name.finish()),
            Arc::new(self.description.finish()),
            int64(self.initial_bid),
            int64(self.reserve),
            timestamps(self.date_time),
            timestamps(self.expires),
            int64(self.seller),
            int64(self.category),
            Arc::new(self.extra.finish()),
        ];
        RecordBatch::try_new(auction_schema(), columns).expect("columns match the auction schema")
    }
}

struct BidColumns {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: StringBuilder,
    url: StringBuilder,
    date_time: Vec<i64>,
    extra: StringBuilder,
}

impl BidColumns {
    fn new(rows: u64) -> Self {
        let rows = rows as usize;
        BidColumns {
            auction: Vec::with_capacity(rows),
            bidder: Vec::with_capacity(rows),
            price: Vec::with_capacity(rows),
            channel: strings(rows, 10),
            url: strings(rows, 70),
            date_time: Vec::with_capacity(rows),
            extra: strings(rows, 70),
        }
    }

    fn finish(mut self) -> RecordBatch {
        let columns = vec![
            int64(self.auction),
            int64(self.bidder),
            int64(self.price),
            Arc::new(self.channel.finish()),
            Arc::new(self.url.finish()),
            timestamps(self.date_time),
            Arc::new(self.extra.finish()),
        ];
        RecordBatch::try_new(bid_schema(), columns).expect("columns match the bid schema")
    }
}
