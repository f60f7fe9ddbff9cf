//! What an HTTP server of Flumen's (HTTP ingest, the read API) shares:
//! TLS from a certificate and key, authentication (bearer tokens, signed
//! requests, a limit on failed attempts), rate limits per client, and
//! connection limits (how many at once, how long a client has to send a
//! request), in one serving loop that hands each request to the server's
//! handler.

pub mod auth;
mod config;
mod limit;
pub mod server;

pub use self::config::{AuthConfig, RateLimitConfig, TlsConfig};
pub use self::limit::ClientRateLimit;
