//! The `serve:` section of a pipeline file.

use std::time::Duration;

use serde::Deserialize;

use flumen_clients::http::{AuthConfig, RateLimitConfig, TlsConfig};

/// Answers HTTP reads of the pipeline's embedded views (its `kv` sinks
/// with a `path`) and queries of its search indexes while it runs:
/// `GET /v1/views/{sink}/{key}`, `GET /v1/views/{sink}?prefix=&limit=&cursor=`
/// and `GET /v1/search/{sink}?q=&limit=&offset=`. Readers see committed
/// checkpoints only. It also serves the console: the pipeline's status
/// (`/v1/status`, `/v1/nodes`, `/v1/checkpoints`,
/// `/v1/dead_letters/recent`) and a live page at `/`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address and port to listen on: `127.0.0.1:8080`, `0.0.0.0:8080`.
    pub listen: String,

    /// The `kv` sinks to serve, by name. Default: every `kv` sink with a
    /// `path`.
    #[serde(default)]
    pub views: Option<Vec<String>>,

    /// Who may read: `bearer_tokens` (and `hmac_secrets`, signing the
    /// empty body), as for the HTTP source. Default: anyone who can reach
    /// `listen`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,

    /// Requests per second each client (bearer token, else IP address) may
    /// make; 429 with `Retry-After` past it. Default: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,

    /// Most entries one scan answers; a larger `limit` is cut to it.
    #[serde(default = "default_max_limit")]
    pub max_limit: usize,

    /// How long a client has to send a request's headers, from when it
    /// connects or was last answered; a connection idle this long is
    /// closed.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,

    /// Most connections open at once; past it a new one is answered 503
    /// with `Retry-After`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,

    /// Serve HTTPS with this certificate and key (PEM files). Default:
    /// plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,

    /// Keep serving this long after the pipeline finishes (a bounded one),
    /// e.g. `10m`; an interrupt ends the wait.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub linger: Option<Duration>,
}

fn default_max_limit() -> usize {
    1000
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    512
}

impl ServeConfig {
    /// Serves on `listen` with every default.
    pub fn new(listen: impl Into<String>) -> Self {
        ServeConfig {
            listen: listen.into(),
            views: None,
            auth: None,
            rate_limit: None,
            max_limit: default_max_limit(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
            tls: None,
            linger: None,
        }
    }
}
