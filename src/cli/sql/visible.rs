//! The files a table may read: a read-only view of a store without the
//! files sinks stage.

use super::*;

/// The files a table may read: a read-only view of a store whose listings
/// leave out every name below the listed prefix that starts with `.`, or
/// with `_` and holds no `=` (Spark's and Hive's rule for hidden files:
/// sinks stage files being written under such names). Objects asked for by
/// name are served as they are.
#[derive(Debug)]
pub(super) struct VisibleFiles {
    pub(super) inner: Arc<dyn ObjectStore>,
}

impl fmt::Display for VisibleFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VisibleFiles({})", self.inner)
    }
}

pub(super) fn hidden(name: &str) -> bool {
    name.starts_with('.') || (name.starts_with('_') && !name.contains('='))
}

/// Whether `location`, listed under `prefix`, is visible.
pub(super) fn visible(prefix: Option<&Path>, location: &Path) -> bool {
    let below: Vec<_> = match prefix {
        Some(prefix) => match location.prefix_match(prefix) {
            Some(parts) => parts.collect(),
            None => return true,
        },
        None => location.parts().collect(),
    };
    !below.iter().any(|part| hidden(part.as_ref()))
}

pub(super) fn read_only<T>() -> object_store::Result<T> {
    Err(object_store::Error::NotSupported {
        source: "flumen sql only reads".into(),
    })
}

#[async_trait]
impl ObjectStore for VisibleFiles {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        read_only()
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        read_only()
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| read_only()).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let owned = prefix.cloned();
        self.inner
            .list(prefix)
            .try_filter(move |meta| futures::future::ready(visible(owned.as_ref(), &meta.location)))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let owned = prefix.cloned();
        self.inner
            .list_with_offset(prefix, offset)
            .try_filter(move |meta| futures::future::ready(visible(owned.as_ref(), &meta.location)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result
            .common_prefixes
            .retain(|p| p.filename().is_none_or(|name| !hidden(name)));
        result
            .objects
            .retain(|o| o.location.filename().is_none_or(|name| !hidden(name)));
        Ok(result)
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        read_only()
    }
}
