//! Where files live: a local path or an object-store URL (`file://`,
//! `s3://`), resolved to an [`ObjectStore`] and a path inside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// How to reach an object store. Settings left unset come from the standard
/// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...),
/// as the AWS tools read them. Local paths need none of this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageOptions {
    /// S3 endpoint, for S3-compatible servers (MinIO, moto, R2), e.g.
    /// `http://127.0.0.1:9000`. Default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,

    /// S3 region. Default: `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,

    /// S3 access key id. Write `${AWS_ACCESS_KEY_ID}` (or leave unset) to
    /// keep it out of the file.
    #[serde(default)]
    pub access_key_id: Option<String>,

    /// S3 secret access key; see `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,

    /// S3 session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,

    /// Allow `http://` endpoints. Default: when the endpoint is `http://`.
    #[serde(default)]
    pub allow_http: Option<bool>,

    /// Give up on one request after this long and retry it (e.g. `10s`).
    /// Default: 30s.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub request_timeout: Option<Duration>,

    /// How long to keep retrying a failed request (timeouts, throttling,
    /// server errors) before giving up, e.g. `5m`. Default: 3m.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<String>")]
    pub retry_timeout: Option<Duration>,

    /// Any other object_store setting, by its name (e.g.
    /// `virtual_hosted_style_request: "true"`).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// A location resolved to a store and a path inside it.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store holding the object.
    pub store: Arc<dyn ObjectStore>,
    /// The object's path inside the store.
    pub path: Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
}

/// Resolves `location`: a local path (relative to the working directory),
/// a `file://` URL, an `s3://bucket/key` URL, or `memory://name/key` (an
/// in-process store shared by name). `key` is the configuration
/// path used in errors; options under `{key}` siblings are reported as
/// `storage.*`.
pub fn resolve(location: &str, options: &StorageOptions, key: &str) -> Result<Location> {
    let url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        // No scheme (or a Windows drive letter): a local path.
        _ => {
            let absolute = std::path::absolute(location).map_err(|e| {
                Error::config(key, format!("`{location}` is not a usable path: {e}"))
            })?;
            // Object store paths have no `..`: resolve them by their names
            // (`a/b/../c` is `a/c`).
            let absolute =
                absolute
                    .components()
                    .fold(std::path::PathBuf::new(), |mut path, component| {
                        match component {
                            std::path::Component::ParentDir => {
                                path.pop();
                            }
                            std::path::Component::CurDir => {}
                            other => path.push(other),
                        }
                        path
                    });
            Url::from_file_path(&absolute)
                .map_err(|()| Error::config(key, format!("`{location}` is not a usable path")))?
        }
    };
    let located = |store: Arc<dyn ObjectStore>, path: Path| Location {
        store,
        path,
        display: location.to_string(),
    };
    match url.scheme() {
        "file" => {
            let path = Path::from_url_path(url.path())
                .map_err(|e| Error::config(key, format!("`{location}`: {e}")))?;
            // Deleting the last file of a directory removes the directory too.
            let store = LocalFileSystem::new().with_automatic_cleanup(true);
            Ok(located(Arc::new(store), path))
        }
        "memory" => {
            let path = Path::from_url_path(url.path())
                .map_err(|e| Error::config(key, format!("`{location}`: {e}")))?;
            Ok(located(
                memory_store(url.host_str().unwrap_or_default()),
                path,
            ))
        }
        #[cfg(feature = "s3")]
        "s3" | "s3a" => {
            let store = s3::build(&url, options)?;
            let path = Path::from_url_path(url.path())
                .map_err(|e| Error::config(key, format!("`{location}`: {e}")))?;
            Ok(located(store, path))
        }
        other => {
            let _ = options;
            Err(Error::config(
                key,
                format!(
                    "`{location}`: unsupported storage scheme `{other}://`; supported: {SUPPORTED}"
                ),
            ))
        }
    }
}

#[cfg(feature = "s3")]
const SUPPORTED: &str = "local paths, file://, s3://, memory://";
#[cfg(not(feature = "s3"))]
const SUPPORTED: &str = "local paths, file://, memory:// (s3:// needs the `s3` feature)";

/// The in-memory store `memory://NAME/...` names: one per name, shared by
/// everything in the process that uses it, gone when the process ends.
/// For tests and programs that embed Flumen.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
        .clone()
}

#[cfg(feature = "s3")]
mod s3 {
    use std::str::FromStr;
    use std::sync::Arc;

    use object_store::ClientConfigKey;
    use object_store::ObjectStore;
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use url::Url;

    use super::StorageOptions;
    use crate::error::{Error, Result};

    pub(super) fn build(url: &Url, options: &StorageOptions) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        let settings = [
            (AmazonS3ConfigKey::Endpoint, &options.endpoint),
            (AmazonS3ConfigKey::Region, &options.region),
            (AmazonS3ConfigKey::AccessKeyId, &options.access_key_id),
            (
                AmazonS3ConfigKey::SecretAccessKey,
                &options.secret_access_key,
            ),
            (AmazonS3ConfigKey::Token, &options.session_token),
        ];
        for (key, value) in settings {
            if let Some(value) = value {
                builder = builder.with_config(key, value);
            }
        }
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        let allow_http = options
            .allow_http
            .unwrap_or_else(|| endpoint.is_some_and(|e| e.starts_with("http://")));
        builder = builder.with_allow_http(allow_http);
        // Retries are bounded by time, not by count, so that a server that
        // is away for a while is waited out.
        builder = builder.with_retry(object_store::RetryConfig {
            max_retries: 1000,
            retry_timeout: options
                .retry_timeout
                .unwrap_or(std::time::Duration::from_secs(180)),
            ..Default::default()
        });
        if let Some(timeout) = options.request_timeout {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}ms", timeout.as_millis()),
            );
        }
        for (name, value) in &options.extra {
            let key = AmazonS3ConfigKey::from_str(name).map_err(|_| {
                Error::config(
                    format!("storage.extra.{name}"),
                    "is not an S3 setting object_store knows",
                )
            })?;
            builder = builder.with_config(key, value);
        }
        let store = builder
            .build()
            .map_err(|e| Error::config("storage", format!("cannot reach `{url}`: {e}")))?;
        Ok(Arc::new(store))
    }
}
