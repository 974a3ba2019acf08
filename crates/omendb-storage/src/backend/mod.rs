//! Backends: an `Arc<dyn ObjectStore>` chosen from a URL, wrapped in retry, timeout and metrics.
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/path` | `object_store`'s local filesystem under that directory, fsync on |
//! | `memory://` | a new in-memory store (for tests and ephemeral data) |
//! | `s3://bucket[/prefix]` | Amazon S3 or any S3-compatible server |
//! | `opendal+fs:///abs/path`, `opendal+memory://` | OpenDAL services through `object_store_opendal` |
//!
//! S3 options come from the standard `AWS_*` environment variables, then from
//! [`BackendOptions::options`], whose keys are `object_store`'s S3 configuration keys
//! (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `allow_http`, ...).

mod layer;
mod metered;
mod opendal_bridge;
mod retry;
mod timeout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use url::Url;

pub use layer::{Idempotence, Layer, Layered, ListStart, Op};
pub use metered::Metered;
pub use opendal_bridge::OpenDalStore;
pub use retry::{Retry, RetryPolicy};
pub use timeout::{TimedOut, Timeout};

use crate::error::{Error, Result};

/// How to open a backend: store-specific options and the wrappers every backend gets.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Store-specific options (S3: `endpoint`, `region`, `access_key_id`, ...). A key the chosen
    /// store does not know is an error.
    pub options: BTreeMap<String, String>,
    /// Retry policy for transient errors.
    pub retry: RetryPolicy,
    /// The longest a single request may take before it fails (and is retried); `None` for none.
    pub request_timeout: Option<Duration>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            options: BTreeMap::new(),
            retry: RetryPolicy::default(),
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl BackendOptions {
    /// Sets one store-specific option.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }
}

/// The kind of store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `file://`
    File,
    /// `memory://`
    Memory,
    /// `s3://`
    S3,
    /// `opendal+<service>://`
    OpenDal,
}

impl Scheme {
    /// The scheme's name, used as the `backend` label of metrics.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Memory => "memory",
            Scheme::S3 => "s3",
            Scheme::OpenDal => "opendal",
        }
    }
}

/// An opened backend: the store every OmenDB component uses, with its wrappers.
#[derive(Clone, Debug)]
pub struct Backend {
    scheme: Scheme,
    store: Arc<dyn ObjectStore>,
}

impl Backend {
    /// Opens the store `url` names, wrapped in retry, timeout and metrics.
    pub fn open(url: &str, options: &BackendOptions) -> Result<Self> {
        let (scheme, store) = open_raw(url, options)?;
        Ok(Self {
            scheme,
            store: wrap(scheme, store, options),
        })
    }

    /// Wraps an existing store (built by the caller) in retry, timeout and metrics.
    pub fn from_store(
        scheme: Scheme,
        store: Arc<dyn ObjectStore>,
        options: &BackendOptions,
    ) -> Self {
        Self {
            scheme,
            store: wrap(scheme, store, options),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The kind of store.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
}

/// Wraps `store` as `metrics(retry(timeout(store)))`: every attempt is timed out on its own, a
/// timed-out attempt is retried, and the metrics see each request once, retries included.
pub fn wrap(
    scheme: Scheme,
    store: Arc<dyn ObjectStore>,
    options: &BackendOptions,
) -> Arc<dyn ObjectStore> {
    let timed: Arc<dyn ObjectStore> = match options.request_timeout {
        Some(after) => Arc::new(Layered::new(Timeout::new(after), store)),
        None => store,
    };
    let retried = Arc::new(Layered::new(Retry::new(options.retry.clone()), timed));
    Arc::new(Layered::new(Metered::new(scheme.name()), retried))
}

/// Opens the store `url` names, without wrappers.
pub fn open_raw(url: &str, options: &BackendOptions) -> Result<(Scheme, Arc<dyn ObjectStore>)> {
    let shown = shown(url);
    let bad_url = |reason: &str| Error::BadUrl {
        url: shown.clone(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|err| bad_url(&err.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad_url(
            "a store URL takes no user or password: give credentials as options or in the \
             AWS_* environment variables",
        ));
    }
    match parsed.scheme() {
        "file" => {
            no_options(options, "file")?;
            let dir = local_dir(&parsed).map_err(&bad_url)?;
            std::fs::create_dir_all(&dir).map_err(|err| {
                bad_url(&format!("cannot create directory {}: {err}", dir.display()))
            })?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|err| bad_url(&err.to_string()))?
                .with_fsync(true);
            Ok((Scheme::File, Arc::new(store)))
        }
        "memory" => {
            no_options(options, "memory")?;
            if parsed.path().len() > 1 || parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad_url("memory:// takes no path"));
            }
            Ok((Scheme::Memory, Arc::new(InMemory::new())))
        }
        "s3" => Ok((
            Scheme::S3,
            s3(&parsed, options).map_err(|err| match err {
                Error::BadUrl { reason, .. } => bad_url(&reason),
                other => other,
            })?,
        )),
        scheme => match scheme.strip_prefix("opendal+") {
            Some(service) => Ok((Scheme::OpenDal, opendal(service, &parsed, options, &shown)?)),
            None => Err(bad_url(&format!(
                "unknown scheme {scheme:?} (expected file, memory, s3 or opendal+<service>)"
            ))),
        },
    }
}

/// `url` as errors show it: a user and password before the host left out (they were taken for
/// credentials, and errors end up in logs).
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn no_options(options: &BackendOptions, scheme: &str) -> Result<()> {
    match options.options.keys().next() {
        Some(key) => Err(Error::BadOption {
            key: key.clone(),
            reason: format!("the {scheme} backend takes no options"),
        }),
        None => Ok(()),
    }
}

/// The directory of a `file://` or `opendal+fs://` URL: absolute, no host, no query.
fn local_dir(url: &Url) -> std::result::Result<std::path::PathBuf, &'static str> {
    if url
        .host_str()
        .is_some_and(|host| !host.is_empty() && host != "localhost")
    {
        return Err("a local URL takes no host: write file:///absolute/path");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a local URL takes no query or fragment");
    }
    let dir = url
        .to_file_path()
        .map_err(|()| "not an absolute local path")?;
    if dir == std::path::Path::new("/") {
        return Err("refusing to use the filesystem root as a store");
    }
    Ok(dir)
}

fn s3(url: &Url, options: &BackendOptions) -> Result<Arc<dyn ObjectStore>> {
    let bad_url = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_owned(),
    };
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| bad_url("no bucket"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad_url(
            "an s3 URL takes no query or fragment; pass options instead",
        ));
    }
    if url.port().is_some() {
        // `s3://minio:9000/bucket` named the bucket `minio`, and the bucket a prefix.
        return Err(bad_url(
            "an s3 URL's host is the bucket and takes no port; give a server's address as \
             the endpoint option (endpoint = \"http://host:9000\")",
        ));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in &options.options {
        let config: AmazonS3ConfigKey =
            key.parse()
                .map_err(|err: object_store::Error| Error::BadOption {
                    key: key.clone(),
                    reason: err.to_string(),
                })?;
        if config == AmazonS3ConfigKey::Bucket {
            // It replaced the URL's bucket without a word.
            return Err(Error::BadOption {
                key: key.clone(),
                reason: "the bucket is the s3 URL's host (s3://bucket/prefix)".to_owned(),
            });
        }
        builder = builder.with_config(config, value);
    }
    // Our retry layer retries every backend alike; the client's own retries would multiply it.
    builder = builder.with_retry(object_store::RetryConfig {
        max_retries: 0,
        ..object_store::RetryConfig::default()
    });
    let store = builder.build().map_err(|err| bad_url(&err.to_string()))?;
    let prefix = url.path().trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        let prefix =
            object_store::path::Path::parse(prefix).map_err(|err| bad_url(&err.to_string()))?;
        Arc::new(PrefixStore::new(store, prefix))
    })
}

fn opendal(
    service: &str,
    url: &Url,
    options: &BackendOptions,
    raw: &str,
) -> Result<Arc<dyn ObjectStore>> {
    let bad_url = |reason: String| Error::BadUrl {
        url: raw.to_owned(),
        reason,
    };
    match service {
        "fs" => {
            no_options(options, "opendal+fs")?;
            let dir = local_dir(url).map_err(|reason| bad_url(reason.to_owned()))?;
            std::fs::create_dir_all(&dir).map_err(|err| {
                bad_url(format!("cannot create directory {}: {err}", dir.display()))
            })?;
            // Without a staging directory OpenDAL writes in place, so a reader could see half
            // an object; it lives inside the root (on the same file system), hidden from
            // listings.
            let store = OpenDalStore::on_local_dir(dir).map_err(|err| bad_url(err.to_string()))?;
            Ok(Arc::new(store))
        }
        "memory" => {
            no_options(options, "opendal+memory")?;
            if url.path().len() > 1 || url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad_url("opendal+memory:// takes no path".to_owned()));
            }
            let operator = opendal::Operator::new(opendal::services::Memory::default())
                .map_err(|err| bad_url(err.to_string()))?;
            Ok(Arc::new(OpenDalStore::new(operator)))
        }
        other => Err(bad_url(format!(
            "OpenDAL service {other:?} is not built in (available: fs, memory)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_err(url: &str) -> Error {
        match open_raw(url, &BackendOptions::default()) {
            Err(err) => err,
            Ok((scheme, _)) => panic!("{url} opened as {scheme:?}"),
        }
    }

    #[test]
    fn malformed_and_unknown_urls_are_bad_input() {
        for url in [
            "",
            "not a url",
            "ftp://host/x",
            "gs://bucket",
            "s3://",
            "s3://bucket/x?region=eu",
            "file://host/tmp/x",
            "file:///",
            "memory:///x",
            "opendal+ftp://x",
        ] {
            let err = open_err(url);
            assert!(matches!(err, Error::BadUrl { .. }), "{url}: {err}");
            assert_eq!(err.kind(), crate::ErrorKind::BadInput);
        }
    }

    #[test]
    fn unknown_options_are_named() {
        let options = BackendOptions::default().option("colour", "blue");
        for url in ["memory://", "s3://bucket"] {
            match open_raw(url, &options) {
                Err(Error::BadOption { key, .. }) => assert_eq!(key, "colour"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    /// A URL that would open another store than it reads as: a port (`s3://minio:9000/bucket`
    /// named the bucket `minio`), credentials in the URL (dropped, and echoed in errors), an
    /// option naming the bucket (it replaced the URL's).
    #[test]
    fn urls_that_mean_another_store_are_refused() {
        for url in ["s3://minio:9000/bucket", "s3://bucket:443/prefix"] {
            let err = open_err(url);
            assert!(
                matches!(&err, Error::BadUrl { reason, .. } if reason.contains("endpoint")),
                "{url}: {err}"
            );
        }
        for url in [
            "s3://AKID:hunter2@bucket/prefix",
            "s3://AKID@bucket",
            "file://user:hunter2@/tmp/x",
        ] {
            let err = open_err(url);
            assert!(matches!(err, Error::BadUrl { .. }), "{url}: {err}");
            let shown = err.to_string();
            assert!(
                !shown.contains("hunter2") && !shown.contains("AKID"),
                "{shown}"
            );
        }
        for key in ["bucket", "bucket_name", "aws_bucket", "aws_bucket_name"] {
            let options = BackendOptions::default().option(key, "other");
            match open_raw("s3://bucket", &options) {
                Err(Error::BadOption { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_scheme_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display();
        for (url, scheme) in [
            (format!("file://{path}/a"), Scheme::File),
            ("memory://".to_owned(), Scheme::Memory),
            (format!("opendal+fs://{path}/b"), Scheme::OpenDal),
            ("opendal+memory://".to_owned(), Scheme::OpenDal),
            ("s3://bucket/some/prefix".to_owned(), Scheme::S3),
        ] {
            let backend = Backend::open(&url, &BackendOptions::default()).unwrap();
            assert_eq!(backend.scheme(), scheme, "{url}");
        }
    }
}
