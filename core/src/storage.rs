//! Where files live: a local path or an object-store URL, resolved to an
//! [`ObjectStore`] and a path inside it.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

use crate::error::{Error, Result};

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

/// Resolves `location`: a local path (relative to the working directory)
/// or a `file://` URL. `key` is the configuration path used in errors.
pub fn resolve(location: &str, key: &str) -> Result<Location> {
    let url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        // No scheme (or a Windows drive letter): a local path.
        _ => {
            let absolute = std::path::absolute(location).map_err(|e| {
                Error::config(key, format!("`{location}` is not a usable path: {e}"))
            })?;
            Url::from_file_path(&absolute)
                .map_err(|()| Error::config(key, format!("`{location}` is not a usable path")))?
        }
    };
    match url.scheme() {
        "file" => {
            let path = Path::from_url_path(url.path())
                .map_err(|e| Error::config(key, format!("`{location}`: {e}")))?;
            Ok(Location {
                store: Arc::new(LocalFileSystem::new()),
                path,
                display: location.to_string(),
            })
        }
        other => Err(Error::config(
            key,
            format!(
                "`{location}`: unsupported storage scheme `{other}://`; supported: local paths, file://"
            ),
        )),
    }
}
