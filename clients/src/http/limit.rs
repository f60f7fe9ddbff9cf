//! Requests per second per client, as a server's `rate_limit` says.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::http::StatusCode;

use super::RateLimitConfig;
use super::auth::Client;
use super::server::{Response, refuse, retry_after};

/// A token bucket per client: per credential once authenticated, per
/// address otherwise.
pub struct ClientRateLimit {
    buckets: DefaultKeyedRateLimiter<(Client, Option<IpAddr>)>,
}

impl ClientRateLimit {
    /// Buckets refilling at `config.per_second`, holding `config.burst`.
    pub fn new(config: &RateLimitConfig) -> Self {
        let rate = NonZeroU32::new(config.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        ClientRateLimit {
            buckets: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// A 429 with `Retry-After` if `client` (from `peer`) is over its
    /// rate; otherwise takes a token.
    pub fn refuse_over_rate(&self, client: Client, peer: IpAddr) -> Option<Response> {
        let key = match client {
            Client::Anyone => (client, Some(peer)),
            known => (known, None),
        };
        let not_until = self.buckets.check_key(&key).err()?;
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        Some(retry_after(
            refuse(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"),
            wait,
        ))
    }
}
