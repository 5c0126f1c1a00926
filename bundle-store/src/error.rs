//! Errors of reading and writing bundle roots in an object store; each names
//! the object or the cache directory concerned.

use std::path::PathBuf;

use recsys_bundle::BundleError;

/// Everything that can go wrong between a node, its cache and the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A root URL that is not `s3://bucket[/prefix]`.
    #[error("invalid bundle root {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong, lowercase.
        reason: String,
    },
    /// The store refused or failed a request.
    #[error("{url}: {source}")]
    Store {
        /// The object concerned.
        url: String,
        /// The client's error.
        source: object_store::Error,
    },
    /// An object that must exist does not.
    #[error("{url}: not found: {why}")]
    NotFound {
        /// The object concerned.
        url: String,
        /// What its absence means.
        why: &'static str,
    },
    /// An object's bytes are not what the manifest records.
    #[error("{url}: {reason}")]
    Corrupt {
        /// The object concerned.
        url: String,
        /// What is wrong, lowercase.
        reason: String,
    },
    /// A version needs more room than the cache may hold beside the versions in use.
    #[error(
        "bundle cache {dir}: version {version} needs {needed} bytes, {pinned} bytes are held by versions in use ({held}), the limit is {limit} (--bundle-cache-max-bytes)"
    )]
    CacheFull {
        /// The cache directory.
        dir: PathBuf,
        /// The version that did not fit.
        version: String,
        /// Its size.
        needed: u64,
        /// Bytes of versions that cannot be evicted.
        pinned: u64,
        /// Those versions.
        held: String,
        /// The bound.
        limit: u64,
    },
    /// Another live process owns the cache directory.
    #[error("bundle cache {dir} is used by process {pid}: give each server its own --bundle-cache")]
    CacheInUse {
        /// The cache directory.
        dir: PathBuf,
        /// The owner.
        pid: u32,
    },
    /// The store's runtime is gone (the process is stopping).
    #[error("the object store client has stopped")]
    Stopped,
    /// A local file or a manifest could not be read or written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl StoreError {
    /// An I/O error on a local path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Bundle(BundleError::io(path, source))
    }
}

impl From<StoreError> for BundleError {
    /// Servers see store failures as bundle errors (a failed load naming the
    /// object); a corrupt object stays `Corrupt`.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Bundle(inner) => inner,
            StoreError::Corrupt { url, reason } => BundleError::corrupt(url, reason),
            StoreError::Url { .. } => BundleError::invalid("bundle_root", error.to_string()),
            StoreError::CacheFull { .. } => {
                BundleError::invalid("bundle_cache_max_bytes", error.to_string())
            }
            StoreError::CacheInUse { .. } => {
                BundleError::invalid("bundle_cache", error.to_string())
            }
            StoreError::Store { url, source } => BundleError::remote(url, source.to_string()),
            StoreError::NotFound { url, why } => {
                BundleError::remote(url, format!("not found: {why}"))
            }
            StoreError::Stopped => BundleError::remote("object store", "the client has stopped"),
        }
    }
}
