//! The object store flags (feature `flags`): how to reach the store
//! ([`S3Flags`], also `recsys bundle publish`'s), and for servers where to cache
//! what they fetch ([`StoreFlags`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use recsys_bundle::flags::BundleFlags;
use recsys_bundle::remote::is_remote_url;
use recsys_bundle::{BundleSource, FileSet, RemoteSource};

use crate::{BundleCache, Store, StoreError, StoreOptions, StoreRoot, StoreUrl};

/// Default `--bundle-cache-max-bytes`: 10 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 10 << 30;

/// How to reach an S3-compatible store. Credentials come from the usual
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, Args)]
pub struct S3Flags {
    /// S3-compatible endpoint, e.g. http://minio:9000 (default: AWS S3).
    #[arg(long, env = "RECSYS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The store's region (default: AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "RECSYS_S3_REGION")]
    pub s3_region: Option<String>,
    /// Allow an http:// endpoint (a store on a private network or loopback).
    #[arg(long, env = "RECSYS_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// Longest one request may take, a whole shard's download included.
    #[arg(long, env = "RECSYS_S3_TIMEOUT_S", default_value_t = 300)]
    pub s3_timeout_s: u64,
}

impl S3Flags {
    /// The client options.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            allow_http: self.s3_allow_http,
            request_timeout: Duration::from_secs(self.s3_timeout_s.max(1)),
            access_key: None,
        }
    }

    /// A client of the root at `url`.
    pub fn open(&self, url: &str) -> Result<Store, StoreError> {
        Store::open(&StoreUrl::parse(url)?, &self.options())
    }
}

/// What a server needs to serve a root in a store: the store and a cache.
#[derive(Debug, Clone, Args)]
pub struct StoreFlags {
    /// How to reach the store.
    #[command(flatten)]
    pub s3: S3Flags,
    /// Where versions fetched from an object store root are kept (one
    /// directory per server process); needed with --bundle-root s3://...
    #[arg(long, env = "RECSYS_BUNDLE_CACHE")]
    pub bundle_cache: Option<PathBuf>,
    /// Most bytes the cache holds; least recently used versions not in use are
    /// evicted to fetch a new one. A rollout holds two versions at once.
    #[arg(long, env = "RECSYS_BUNDLE_CACHE_MAX_BYTES", default_value_t = DEFAULT_CACHE_MAX_BYTES)]
    pub bundle_cache_max_bytes: u64,
}

impl StoreFlags {
    /// The remote root `bundle` names, if it names one.
    fn remote_url(bundle: &BundleFlags) -> Option<String> {
        let root = bundle.bundle_root.as_ref()?.to_string_lossy().into_owned();
        is_remote_url(&root).then_some(root)
    }

    /// Checks the flags without touching the network or the disk
    /// (`--check-config`).
    pub fn check(&self, bundle: &BundleFlags) -> Result<(), StoreError> {
        if let Some(url) = Self::remote_url(bundle) {
            StoreUrl::parse(&url)?;
            self.cache_dir(&url)?;
        }
        Ok(())
    }

    fn cache_dir(&self, url: &str) -> Result<PathBuf, StoreError> {
        self.bundle_cache.clone().ok_or_else(|| StoreError::Url {
            url: url.to_string(),
            reason: "a root in an object store needs --bundle-cache DIR for the files fetched"
                .into(),
        })
    }

    /// What to serve: the local bundle or root the flags name, or the root in a
    /// store, whose versions are fetched (the files in `files`) into the cache.
    pub fn source(&self, bundle: &BundleFlags, files: FileSet) -> Result<BundleSource, StoreError> {
        let Some(url) = Self::remote_url(bundle) else {
            return Ok(bundle.source()?);
        };
        if bundle.bundle.is_some() {
            return Err(StoreError::Url {
                url,
                reason: "give --bundle DIR or --bundle-root, not both".into(),
            });
        }
        let store = self.s3.open(&url)?;
        let cache = BundleCache::open(self.cache_dir(&url)?, self.bundle_cache_max_bytes)?;
        Ok(BundleSource::Remote(RemoteSource {
            root: Arc::new(StoreRoot::new(store, cache)),
            files,
        }))
    }
}

impl StoreFlags {
    /// [`Self::source`], checked at once so that a wrong path or a store that
    /// cannot be read fails at start rather than as an endless "loading": a
    /// local source must name a version (its manifest, or its root's
    /// `CURRENT`); a root in a store must answer. A store root with no
    /// `CURRENT` yet is no error: the server starts NOT_SERVING, saying so,
    /// and loads the version once one is published (a cluster deployed before
    /// its first `recsys bundle publish --set-current`).
    pub fn open(&self, bundle: &BundleFlags, files: FileSet) -> Result<BundleSource, StoreError> {
        let Some(url) = Self::remote_url(bundle) else {
            let source = self.source(bundle, files)?;
            let resolved = source.resolve()?;
            tracing::info!(version = %resolved.version, dir = %resolved.dir.display(), "bundle version named at start");
            return Ok(source);
        };
        let source = self.source(bundle, files)?;
        let BundleSource::Remote(remote) = &source else {
            return Ok(source);
        };
        match remote.root.current() {
            Ok(version) => {
                tracing::info!(%version, root = %url, "bundle version named at start");
            }
            Err(recsys_bundle::BundleError::Remote { reason, .. })
                if reason.starts_with("not found") =>
            {
                tracing::warn!(root = %url, "no version is published as current yet; serving once one is");
            }
            Err(error) => return Err(error.into()),
        }
        Ok(source)
    }
}
