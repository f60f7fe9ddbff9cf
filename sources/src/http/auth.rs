//! Who may post: bearer tokens and signed requests.
//!
//! Signatures follow the Standard Webhooks scheme: HMAC-SHA256 over
//! `webhook-id.webhook-timestamp.body`, sent as `v1,<base64>` in
//! `webhook-signature` (several may be listed, space-separated, while a
//! secret is being rotated). A timestamp further than the tolerance from
//! now is refused, and so is an id already seen within it (a replay).
//! Every comparison of secrets is constant-time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use hyper::http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::config::AuthConfig;

/// Checks requests against the configured tokens and secrets.
pub(crate) struct Authenticator {
    tokens: Vec<Vec<u8>>,
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
    /// Signed request ids seen within the tolerance, with when.
    seen: Mutex<HashMap<String, Instant>>,
}

/// Who a request is from, once authenticated: what its rate limit is
/// keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    Token(usize),
    Signer(usize),
    Anyone,
}

/// The secret's bytes: `whsec_<base64>` decoded, anything else as is.
pub(crate) fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|e| format!("`whsec_` secret is not valid base64: {e}")),
        None if secret.is_empty() => Err("is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig) -> Authenticator {
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
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Who sent the request, or why it is refused.
    pub(crate) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Client, String> {
        if let Some(token) = bearer(headers) {
            return self
                .tokens
                .iter()
                .position(|known| bool::from(known.as_slice().ct_eq(token.as_bytes())))
                .map(Client::Token)
                .ok_or_else(|| "the bearer token is not valid".into());
        }
        if headers.contains_key("webhook-signature") {
            return self.check_signature(headers, body);
        }
        Err("no credentials: send `Authorization: Bearer <token>` or a signed request".into())
    }

    fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<Client, String> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("a signed request needs the `{name}` header"))
        };
        let (id, timestamp, signatures) = (
            header("webhook-id")?,
            header("webhook-timestamp")?,
            header("webhook-signature")?,
        );
        let sent: u64 = timestamp
            .parse()
            .map_err(|_| "`webhook-timestamp` is not Unix seconds".to_string())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.abs_diff(sent) > self.tolerance.as_secs() {
            return Err(format!(
                "`webhook-timestamp` is {}s from now; at most {}s is accepted",
                now.abs_diff(sent),
                self.tolerance.as_secs()
            ));
        }
        let signer = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .find_map(|signature| {
                self.secrets.iter().position(|secret| {
                    let mut mac =
                        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
                    mac.update(id.as_bytes());
                    mac.update(b".");
                    mac.update(timestamp.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                    // `verify_slice` compares in constant time.
                    mac.verify_slice(&signature).is_ok()
                })
            })
            .ok_or_else(|| "the signature does not match".to_string())?;
        // Only a valid signature marks its id as seen, so a forger cannot
        // block a real request by sending its id first.
        let mut seen = self.seen.lock().expect("seen ids");
        let tolerance = self.tolerance * 2;
        seen.retain(|_, at| at.elapsed() < tolerance);
        if seen.insert(id.to_string(), Instant::now()).is_some() {
            return Err(format!("request `{id}` was already received (a replay)"));
        }
        Ok(Client::Signer(signer))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(hyper::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Signs a request as a client would: the `webhook-signature` value.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}
