//! Who may call a server: bearer tokens and signed requests.
//!
//! Signatures follow the Standard Webhooks scheme: HMAC-SHA256 over
//! `webhook-id.webhook-timestamp.body`, sent as `v1,<base64>` in
//! `webhook-signature` (several may be listed, space-separated, while a
//! secret is being rotated). A timestamp further than the tolerance from
//! now is refused; an id already admitted is to be refused too (a
//! replay): the server remembers the [`Signed::id`]s it admitted (HTTP
//! ingest keeps them with its idempotency keys).
//!
//! Checking credentials must cost an attacker more than it costs the
//! server:
//! - a bearer token is checked from the headers, before the body is read;
//! - a signed request's MAC is computed once per secret, however many
//!   signatures it lists, and it may list at most [`MAX_SIGNATURES`];
//! - an address that keeps failing is refused (429) before its
//!   credentials are looked at, unless it brings a valid token.
//!
//! Every comparison of secrets is constant-time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use hyper::http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::config::{AuthConfig, RateLimitConfig};

/// Most signatures a signed request may list (a sender rotating secrets
/// lists two or three).
pub const MAX_SIGNATURES: usize = 8;

/// Longest `webhook-id` taken, in bytes.
const MAX_WEBHOOK_ID: usize = 255;

/// Checks requests against the configured tokens and secrets.
pub struct Authenticator {
    tokens: Vec<Vec<u8>>,
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
    failures: FailureLimit,
}

/// Who a request is from, once authenticated: what its rate limit, its
/// idempotency keys and its request ids belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// The bearer token at this index of `bearer_tokens`.
    Token(usize),
    /// Signed with the secret at this index of `hmac_secrets`.
    Signer(usize),
    /// No authentication is configured.
    Anyone,
}

/// A signed request's headers, read; its signature waits for the body.
#[derive(Debug)]
pub struct Signed {
    /// The `webhook-id`: what a replay repeats.
    pub id: String,
    timestamp: String,
    signatures: Vec<Vec<u8>>,
}

/// What a request's headers say about its sender.
#[derive(Debug)]
pub enum Screened {
    /// Known from the headers alone.
    Client(Client),
    /// A signed request, to verify against its body.
    Signed(Signed),
}

/// Why a request's credentials were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401, saying why.
    Unauthorized(String),
    /// 429: the address failed too often; it may try again after this.
    TooManyFailures(Duration),
}

/// The secret's bytes: `whsec_<base64>` decoded, anything else as is.
pub fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|e| format!("`whsec_` secret is not valid base64: {e}")),
        None if secret.is_empty() => Err("is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

impl Authenticator {
    /// Checks requests against `config`'s tokens and secrets. A secret
    /// that does not decode is left out: check them first with
    /// [`secret_bytes`].
    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            tokens: config
                .bearer_tokens
                .iter()
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            secrets: config
                .hmac_secrets
                .iter()
                .filter_map(|s| secret_bytes(s).ok())
                .collect(),
            tolerance: config.tolerance,
            failures: FailureLimit::new(&config.failed_attempts),
        }
    }

    /// The credential a client authenticated with, and what kind it is:
    /// what its scope is derived from.
    pub fn credential(&self, client: Client) -> (&'static str, &[u8]) {
        match client {
            Client::Token(index) => ("token", &self.tokens[index]),
            Client::Signer(index) => ("secret", &self.secrets[index]),
            Client::Anyone => ("anyone", &[]),
        }
    }

    /// Looks at a request's headers, before its body is read.
    pub fn screen(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Screened, Refusal> {
        if let Some(authorization) = headers.get(hyper::http::header::AUTHORIZATION) {
            let token = bearer(authorization.as_bytes());
            let valid = token.and_then(|token| {
                self.tokens
                    .iter()
                    .position(|known| bool::from(known.as_slice().ct_eq(token)))
            });
            if let Some(index) = valid {
                return Ok(Screened::Client(Client::Token(index)));
            }
            self.held_back(peer)?;
            return Err(self.fail(
                peer,
                match token {
                    Some(_) => "the bearer token is not valid",
                    None => "send `Authorization: Bearer <token>`; no other scheme is taken",
                },
            ));
        }
        self.held_back(peer)?;
        if headers.contains_key("webhook-signature") {
            return self
                .signed_headers(headers)
                .map(Screened::Signed)
                .map_err(|message| self.fail(peer, message));
        }
        Err(self.fail(
            peer,
            "no credentials: send `Authorization: Bearer <token>` or a signed request",
        ))
    }

    /// Verifies a signed request against its body: one MAC per secret,
    /// compared with each signature listed.
    pub fn verify(&self, signed: &Signed, body: &[u8], peer: IpAddr) -> Result<Client, Refusal> {
        for (index, secret) in self.secrets.iter().enumerate() {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
            mac.update(signed.id.as_bytes());
            mac.update(b".");
            mac.update(signed.timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            if signed
                .signatures
                .iter()
                .any(|signature| bool::from(expected.as_slice().ct_eq(signature)))
            {
                return Ok(Client::Signer(index));
            }
        }
        Err(self.fail(peer, "the signature does not match"))
    }

    /// Refuses `peer` if it has failed too often lately.
    fn held_back(&self, peer: IpAddr) -> Result<(), Refusal> {
        match self.failures.blocked(peer) {
            Some(wait) => Err(Refusal::TooManyFailures(wait)),
            None => Ok(()),
        }
    }

    /// Records a failure of `peer` and says why it was refused.
    fn fail(&self, peer: IpAddr, message: &str) -> Refusal {
        self.failures.record(peer);
        Refusal::Unauthorized(message.to_string())
    }

    fn signed_headers(&self, headers: &HeaderMap) -> Result<Signed, &'static str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let id = header("webhook-id").ok_or("a signed request needs the `webhook-id` header")?;
        if id.is_empty() || id.len() > MAX_WEBHOOK_ID {
            return Err("`webhook-id` must be 1 to 255 characters");
        }
        let timestamp = header("webhook-timestamp")
            .ok_or("a signed request needs the `webhook-timestamp` header")?;
        let sent: u64 = timestamp
            .parse()
            .map_err(|_| "`webhook-timestamp` is not Unix seconds")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.abs_diff(sent) > self.tolerance.as_secs() {
            return Err("`webhook-timestamp` is too far from now (see `auth.tolerance`)");
        }
        let listed = header("webhook-signature").ok_or("`webhook-signature` is not text")?;
        let entries: Vec<&str> = listed.split_whitespace().take(MAX_SIGNATURES + 1).collect();
        if entries.len() > MAX_SIGNATURES {
            return Err("`webhook-signature` lists more than 8 signatures");
        }
        // Other versions (`v1a`, asymmetric) are not ours to check.
        let signatures: Vec<Vec<u8>> = entries
            .iter()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .filter(|signature| signature.len() == 32)
            .collect();
        if signatures.is_empty() {
            return Err("`webhook-signature` holds no `v1,<base64 HMAC-SHA256>` signature");
        }
        Ok(Signed {
            id: id.to_string(),
            timestamp: timestamp.to_string(),
            signatures,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// case does not matter (RFC 9110, 11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Failed attempts per client address: a token bucket each, which a
/// failure drains and time refills. An address with an empty bucket is
/// refused before its credentials are looked at.
struct FailureLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Addresses tracked at most; past it, those whose buckets have refilled
/// are forgotten.
const MAX_TRACKED: usize = 65_536;

impl FailureLimit {
    fn new(config: &RateLimitConfig) -> FailureLimit {
        let per_second = f64::from(config.per_second.max(1));
        FailureLimit {
            per_second,
            burst: config.burst.map_or(per_second, f64::from).max(1.0),
            buckets: Mutex::default(),
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// How long `peer` must wait before its credentials are looked at
    /// again, if it must.
    fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        let buckets = self.buckets.lock().expect("failure buckets");
        let tokens = self.refilled(buckets.get(&peer)?, Instant::now());
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.per_second))
    }

    fn record(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("failure buckets");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&peer) {
            buckets.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        }
        let tokens = buckets
            .get(&peer)
            .map_or(self.burst, |bucket| self.refilled(bucket, now));
        buckets.insert(
            peer,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

/// Signs a request as a client would: the `webhook-signature` value.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use hyper::http::HeaderValue;

    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthConfig {
            bearer_tokens: vec!["token-a".into()],
            hmac_secrets: vec!["secret-a".into(), "secret-b".into()],
            tolerance: Duration::from_secs(300),
            failed_attempts: RateLimitConfig {
                per_second: 1,
                burst: Some(3),
            },
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let auth = authenticator();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let screened = auth.screen(
                &headers(&[("authorization", &format!("{scheme} token-a"))]),
                PEER,
            );
            assert!(
                matches!(screened, Ok(Screened::Client(Client::Token(0)))),
                "{scheme}"
            );
        }
    }

    #[test]
    fn a_signature_is_checked_once_per_secret_whichever_entry_matches() {
        let auth = authenticator();
        let at = now().to_string();
        let good = sign(b"secret-b", "msg_1", now(), b"{}");
        let listed = format!("v1a,ignored v1,AAAA {good}");
        let request = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &at),
            ("webhook-signature", &listed),
        ]);
        let Ok(Screened::Signed(signed)) = auth.screen(&request, PEER) else {
            panic!("not screened as signed");
        };
        assert_eq!(auth.verify(&signed, b"{}", PEER), Ok(Client::Signer(1)));
        assert!(auth.verify(&signed, b"{ }", PEER).is_err());
    }

    #[test]
    fn malformed_signed_requests_are_refused_before_any_mac() {
        let auth = authenticator();
        let at = now().to_string();
        let entries = ["v1,"; 9].join(" ");
        for (case, request) in [
            (
                "empty id",
                headers(&[
                    ("webhook-id", ""),
                    ("webhook-timestamp", &at),
                    ("webhook-signature", "v1,x"),
                ]),
            ),
            (
                "too many",
                headers(&[
                    ("webhook-id", "m"),
                    ("webhook-timestamp", &at),
                    ("webhook-signature", &entries),
                ]),
            ),
            (
                "no v1",
                headers(&[
                    ("webhook-id", "m"),
                    ("webhook-timestamp", &at),
                    ("webhook-signature", "v1,"),
                ]),
            ),
        ] {
            assert!(
                matches!(auth.screen(&request, PEER), Err(Refusal::Unauthorized(_))),
                "{case}"
            );
        }
    }

    #[test]
    fn an_address_that_keeps_failing_is_held_back_but_a_valid_token_is_not() {
        let auth = authenticator();
        let wrong = headers(&[("authorization", "Bearer nope")]);
        for _ in 0..3 {
            assert!(matches!(
                auth.screen(&wrong, PEER),
                Err(Refusal::Unauthorized(_))
            ));
        }
        assert!(matches!(
            auth.screen(&headers(&[]), PEER),
            Err(Refusal::TooManyFailures(_))
        ));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert!(matches!(
            auth.screen(&headers(&[]), other),
            Err(Refusal::Unauthorized(_))
        ));
        let right = headers(&[("authorization", "Bearer token-a")]);
        assert!(matches!(
            auth.screen(&right, PEER),
            Ok(Screened::Client(Client::Token(0)))
        ));
    }
}
