//! [`StoreRoot`]: a bundle root in an object store, as servers see it
//! ([`recsys_bundle::RemoteRoot`]): `CURRENT`, and versions fetched into the
//! cache, verified, before they load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use recsys_bundle::root::{CURRENT_FILE, check_version_name};
use recsys_bundle::{
    BundleError, FileDigest, FileSet, LocatedVersion, MANIFEST_FILE, Manifest, RemoteRoot,
    VersionPin,
};

use crate::cache::PART_SUFFIX;
use crate::{BundleCache, Store, StoreError};

/// Largest `CURRENT` read.
const MAX_CURRENT_BYTES: u64 = 1024;
/// Largest manifest read (a manifest lists files; real ones are a few kB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Why a version's manifest may be missing.
pub const UNFINISHED: &str = "the version is not published, or its upload did not finish (recsys bundle publish uploads the manifest last)";

/// A root in a store and this process's cache of it.
#[derive(Debug)]
pub struct StoreRoot {
    store: Store,
    cache: BundleCache,
}

impl StoreRoot {
    /// The root `store` reaches, fetched into `cache`.
    pub fn new(store: Store, cache: BundleCache) -> Self {
        Self { store, cache }
    }

    /// The cache.
    pub fn cache(&self) -> &BundleCache {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The version `CURRENT` names.
    pub fn current_version(&self) -> Result<String, StoreError> {
        let url = self.store.url().url_of(CURRENT_FILE);
        let bytes = self
            .store
            .get_small(CURRENT_FILE, MAX_CURRENT_BYTES)?
            .ok_or(StoreError::NotFound {
                url: url.clone(),
                why: "no version is published as current (recsys bundle publish --set-current)",
            })?;
        let version = String::from_utf8_lossy(&bytes).trim().to_string();
        check_version_name(&version).map_err(|error| StoreError::Corrupt {
            url,
            reason: error.to_string(),
        })?;
        Ok(version)
    }

    /// The manifest of `version` in the store, checked (it names that
    /// version and lists its files' checksums), with its bytes.
    pub fn manifest(&self, version: &str) -> Result<(Manifest, bytes::Bytes), StoreError> {
        check_version_name(version)?;
        let relative = format!("{version}/{MANIFEST_FILE}");
        let url = self.store.url().url_of(&relative);
        let raw =
            self.store
                .get_small(&relative, MAX_MANIFEST_BYTES)?
                .ok_or(StoreError::NotFound {
                    url: url.clone(),
                    why: UNFINISHED,
                })?;
        let text = std::str::from_utf8(&raw).map_err(|_| StoreError::Corrupt {
            url: url.clone(),
            reason: "not UTF-8".into(),
        })?;
        let manifest = Manifest::parse(text, Path::new(&url))?;
        if manifest.version != version {
            return Err(StoreError::Corrupt {
                url,
                reason: format!("names version {:?}, not {version:?}", manifest.version),
            });
        }
        if manifest.files.is_empty() {
            return Err(StoreError::Corrupt {
                url,
                reason: "lists no file checksums: not a complete version".into(),
            });
        }
        Ok((manifest, raw))
    }

    /// Fetches the files of `files` for `version` into the cache, each checked
    /// against the manifest as it streams (a cached file is checked again
    /// and fetched anew if it no longer matches), writes the manifest last,
    /// and returns the directory with a pin on it.
    pub fn fetch_version(
        &self,
        version: &str,
        files: FileSet,
    ) -> Result<LocatedVersion, StoreError> {
        let started = Instant::now();
        let (manifest, raw) = self.manifest(version)?;
        let pin = self.cache.pin(version);
        let dir = self.cache.version_dir(version)?;
        let local_manifest = dir.join(MANIFEST_FILE);
        if let Ok(cached) = std::fs::read(&local_manifest)
            && cached != raw.as_ref()
        {
            // The same name with other content: versions are immutable, so
            // this is a republished version; refetch unless it is in use.
            if self.cache.pins(version) > 1 {
                return Err(StoreError::Corrupt {
                    url: self.store.url().url_of(&format!("{version}/{MANIFEST_FILE}")),
                    reason: "changed in the store while this server serves the version: publish a new version name instead".into(),
                });
            }
            tracing::warn!(%version, "cached manifest differs from the store's; fetching the version again");
            self.cache.clear(version)?;
        }
        let mut missing: Vec<(&String, &FileDigest)> = Vec::new();
        for (path, digest) in &manifest.files {
            if !files.reads(&manifest, path) {
                continue;
            }
            let local = dir.join(path);
            if local.exists() {
                match digest.check(&local) {
                    Ok(()) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "cached file does not match the manifest; fetching it again");
                        let bytes = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
                        std::fs::remove_file(&local).map_err(|e| StoreError::io(&local, e))?;
                        self.cache.account(version, 0, bytes);
                    }
                }
            }
            missing.push((path, digest));
        }
        let needed: u64 = missing.iter().map(|(_, digest)| digest.bytes).sum::<u64>()
            + if local_manifest.exists() {
                0
            } else {
                raw.len() as u64
            };
        self.cache.reserve(version, needed)?;
        for (path, digest) in &missing {
            let local = dir.join(path);
            let parent = local
                .parent()
                .map_or_else(|| dir.clone(), Path::to_path_buf);
            std::fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
            let part = part_path(&local);
            self.store
                .download(&format!("{version}/{path}"), digest, &part)?;
            std::fs::rename(&part, &local).map_err(|e| StoreError::io(&local, e))?;
            recsys_bundle::durable::sync_dir(&parent)?;
            self.cache.account(version, digest.bytes, 0);
        }
        if !local_manifest.exists() {
            recsys_bundle::durable::write_atomic(&local_manifest, &raw)?;
            self.cache.account(version, raw.len() as u64, 0);
        }
        tracing::info!(
            %version,
            fetched_files = missing.len(),
            fetched_bytes = needed,
            cache_bytes = self.cache.used_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "bundle version fetched into the cache"
        );
        Ok(LocatedVersion {
            dir,
            pin: VersionPin::new(pin),
        })
    }
}

/// Where `local` is downloaded to before it is checked and renamed.
fn part_path(local: &Path) -> PathBuf {
    let name = local
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(format!(".{name}{PART_SUFFIX}"))
}

impl RemoteRoot for StoreRoot {
    fn url(&self) -> String {
        self.store.url().to_string()
    }

    fn current(&self) -> Result<String, BundleError> {
        Ok(self.current_version()?)
    }

    fn fetch(&self, version: &str, files: FileSet) -> Result<LocatedVersion, BundleError> {
        Ok(self.fetch_version(version, files)?)
    }
}
