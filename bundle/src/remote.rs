//! A bundle root that is not on this machine's disk (an object store), seen
//! through a trait so that this crate links no storage client: the gateway
//! and the tools that only read local bundles stay small, and
//! `recsys-bundle-store` (S3-compatible stores, through `object_store`)
//! implements it.
//!
//! A remote root has the layout of a local one (`ROOT/CURRENT`,
//! `ROOT/<version>/manifest.json`, ...). A server never reads it in place: it
//! fetches the files its role needs for a version ([`crate::FileSet::reads`])
//! into a local cache, verified against the manifest's checksums, and loads
//! them from there. The cache keeps a version while a [`VersionPin`] on it
//! lives, so a server holds the pin as long as it serves the version.

use std::path::PathBuf;

use crate::{BundleError, FileSet};

/// A bundle root kept elsewhere. Calls block (they read the network and
/// write the cache): call them from a blocking thread, not an async task.
pub trait RemoteRoot: Send + Sync + std::fmt::Debug {
    /// Where the root is, for messages (`s3://bucket/prefix`).
    fn url(&self) -> String;

    /// The version the root's `CURRENT` names.
    fn current(&self) -> Result<String, BundleError>;

    /// The files of `files` for `version`, fetched into the local cache (or
    /// found there) and checked against the version's manifest: the local
    /// directory to load, and a pin that keeps it in the cache.
    fn fetch(&self, version: &str, files: FileSet) -> Result<LocatedVersion, BundleError>;
}

/// A version's local directory, ready to load, and what keeps it there.
#[derive(Debug)]
pub struct LocatedVersion {
    /// The directory holding `manifest.json` and the files the role reads.
    pub dir: PathBuf,
    /// Keeps the directory from being evicted from a cache while held.
    pub pin: VersionPin,
}

impl LocatedVersion {
    /// A directory that nothing can evict (a local bundle or root).
    pub fn local(dir: PathBuf) -> Self {
        Self {
            dir,
            pin: VersionPin::none(),
        }
    }
}

/// Keeps a fetched version in its cache until dropped. A server keeps it in
/// the value it serves the version with, so the pin goes when the version is
/// retired and the last request using it ends.
pub struct VersionPin(Option<Box<dyn Send + Sync>>);

impl VersionPin {
    /// A pin on nothing: local versions need none.
    pub fn none() -> Self {
        Self(None)
    }

    /// A pin whose `guard` releases the version when dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for VersionPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "VersionPin(held)"
        } else {
            "VersionPin(none)"
        })
    }
}

/// What a server fetches from a remote root: the root and the files its role reads.
#[derive(Debug, Clone)]
pub struct RemoteSource {
    /// The root.
    pub root: std::sync::Arc<dyn RemoteRoot>,
    /// The files the server reads (a shard, the ranker, the gateway's).
    pub files: FileSet,
}

impl PartialEq for RemoteSource {
    fn eq(&self, other: &Self) -> bool {
        self.root.url() == other.root.url() && self.files == other.files
    }
}

impl Eq for RemoteSource {}

/// Whether `root` names an object store (`s3://...`) rather than a directory.
pub fn is_remote_url(root: &str) -> bool {
    root.starts_with("s3://")
}
