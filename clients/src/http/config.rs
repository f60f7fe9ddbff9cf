//! The settings an HTTP server of Flumen's shares: who may call it, at
//! what rate, and its certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use flumen_core::prelude::*;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    #[schemars(extend("format" = "path"))]
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(extend("format" = "path"))]
    pub key: PathBuf,
}

impl TlsConfig {
    /// Reads the files into a TLS acceptor.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::config("tls.cert", format!("{}: {e}", self.cert.display())))?;
        if certs.is_empty() {
            return Err(Error::config(
                "tls.cert",
                format!("{} holds no certificate", self.cert.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| Error::config("tls.key", format!("{}: {e}", self.key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::config("tls", format!("the certificate and key do not fit: {e}"))
            })?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Who may send requests.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens accepted in `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_tokens: Vec<String>,

    /// Secrets for signed requests (the Standard Webhooks scheme): the
    /// headers `webhook-id`, `webhook-timestamp` (Unix seconds) and
    /// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    /// A secret written `whsec_<base64>` is decoded; any other string is
    /// used as its bytes.
    #[serde(default)]
    pub hmac_secrets: Vec<String>,

    /// How far a signed request's timestamp may be from now. A signed
    /// request's `webhook-id` is remembered for twice as long once it is
    /// admitted, so that a replay is refused.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub tolerance: Duration,

    /// Failed attempts (no, wrong or malformed credentials) each client
    /// address may make. Past them it is answered 429 with `Retry-After`,
    /// before its credentials are looked at, until its allowance refills;
    /// a request with a valid bearer token is never held back. Default:
    /// 20 at once, then 1 per second.
    #[serde(default = "default_failed_attempts")]
    pub failed_attempts: RateLimitConfig,
}

/// A token bucket per client.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_failed_attempts() -> RateLimitConfig {
    RateLimitConfig {
        per_second: 1,
        burst: Some(20),
    }
}
