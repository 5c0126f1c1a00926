//! The local cache of versions fetched from an object store, bounded in bytes.
//!
//! ```text
//! CACHE/
//!   .owner                  the pid of the process using the cache
//!   v1/manifest.json        written last: the version's files below are complete
//!   v1/shards/shard-0.usearch
//!   v1/shards/.shard-1.usearch.part   a download in progress (or killed)
//! ```
//!
//! Only the files a server reads are fetched, so a version's directory holds
//! that role's part of it. Files appear under their own name only once checked
//! against the manifest; leftovers of killed downloads are removed at open.
//!
//! Eviction is by whole versions, least recently used first, when a fetch
//! needs room. A version is never evicted while pinned: a server pins every
//! version it has loaded ([`CachePin`], held by the value it serves the
//! version with), so during a rollout the cache must hold two versions (size
//! `--bundle-cache-max-bytes` for that). A fetch that cannot fit beside the
//! pinned versions fails, naming the bound, and the server keeps what it serves.
//!
//! Pins live in this process's memory, so a cache directory belongs to one
//! process: a second one is refused while the first is alive (`.owner`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use recsys_bundle::root::check_version_name;

use crate::StoreError;

/// The file naming the process that owns a cache directory.
const OWNER_FILE: &str = ".owner";

/// Suffix of a file being downloaded.
pub const PART_SUFFIX: &str = ".part";

/// One version in the cache.
#[derive(Debug, Default, Clone)]
struct Entry {
    bytes: u64,
    last_used: u64,
    pins: usize,
}

#[derive(Debug, Default)]
struct State {
    versions: BTreeMap<String, Entry>,
    clock: u64,
}

impl State {
    fn used(&self) -> u64 {
        self.versions.values().map(|entry| entry.bytes).sum()
    }

    fn touch(&mut self, version: &str) -> &mut Entry {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.versions.entry(version.to_string()).or_default();
        entry.last_used = clock;
        entry
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left counts that are still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A bounded directory of fetched versions.
#[derive(Debug, Clone)]
pub struct BundleCache {
    inner: Arc<Inner>,
}

/// Keeps a version from being evicted until dropped.
#[derive(Debug)]
pub struct CachePin {
    inner: Arc<Inner>,
    version: String,
}

impl Drop for CachePin {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        let entry = state.touch(&self.version);
        entry.pins = entry.pins.saturating_sub(1);
        tracing::debug!(version = %self.version, pins = entry.pins, "bundle cache pin released");
    }
}

impl BundleCache {
    /// Opens (creating) the cache at `dir`, bounded to `max_bytes`: takes it
    /// for this process, removes unfinished downloads, and counts the
    /// versions already there (least recently used first by their age on disk).
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        take_ownership(&dir)?;
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if check_version_name(&name).is_err() {
                std::fs::remove_dir_all(&path).map_err(|e| StoreError::io(&path, e))?;
                continue;
            }
            let bytes = sweep(&path)?;
            let age = std::fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .ok();
            found.push((age, name, bytes));
        }
        found.sort();
        let mut state = State::default();
        for (_, name, bytes) in found {
            state.touch(&name).bytes = bytes;
        }
        tracing::info!(dir = %dir.display(), versions = state.versions.len(), bytes = state.used(), max_bytes, "bundle cache opened");
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                state: Mutex::new(state),
            }),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes the cached versions take.
    pub fn used_bytes(&self) -> u64 {
        self.inner.state().used()
    }

    /// The versions cached, by name.
    pub fn versions(&self) -> Vec<String> {
        self.inner.state().versions.keys().cloned().collect()
    }

    /// The directory of `version` in the cache (whether or not it is there).
    pub fn version_dir(&self, version: &str) -> Result<PathBuf, StoreError> {
        check_version_name(version)?;
        Ok(self.inner.dir.join(version))
    }

    /// Pins `version` (cached or about to be) until the pin is dropped.
    pub fn pin(&self, version: &str) -> CachePin {
        let mut state = self.inner.state();
        state.touch(version).pins += 1;
        CachePin {
            inner: self.inner.clone(),
            version: version.to_string(),
        }
    }

    /// How many pins `version` has.
    pub fn pins(&self, version: &str) -> usize {
        self.inner
            .state()
            .versions
            .get(version)
            .map_or(0, |entry| entry.pins)
    }

    /// Makes room for `needed` more bytes of `version` (pinned by the
    /// caller): evicts unpinned versions, least recently used first, until
    /// the cache fits its bound, or fails naming the versions in the way.
    pub fn reserve(&self, version: &str, needed: u64) -> Result<(), StoreError> {
        let limit = self.inner.max_bytes;
        // The lock is held while a victim's directory goes, so that nothing
        // pins it between its choice and its removal.
        let mut state = self.inner.state();
        while state.used().saturating_add(needed) > limit {
            let victim = state
                .versions
                .iter()
                .filter(|(name, entry)| entry.pins == 0 && name.as_str() != version)
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else {
                let held: Vec<&str> = state
                    .versions
                    .iter()
                    .filter(|(name, entry)| entry.pins > 0 && name.as_str() != version)
                    .map(|(name, _)| name.as_str())
                    .collect();
                let own = state.versions.get(version).map_or(0, |entry| entry.bytes);
                return Err(StoreError::CacheFull {
                    dir: self.inner.dir.clone(),
                    version: version.to_string(),
                    needed: own.saturating_add(needed),
                    pinned: state.used().saturating_sub(own),
                    held: held.join(", "),
                    limit,
                });
            };
            let path = self.version_dir(&victim)?;
            tracing::info!(version = %victim, dir = %path.display(), "evicting bundle version from the cache");
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::io(&path, error)),
            }
            state.versions.remove(&victim);
        }
        Ok(())
    }

    /// Empties `version`'s directory for a fresh fetch (its cached copy no
    /// longer matches the store), keeping the caller's pin.
    pub fn clear(&self, version: &str) -> Result<(), StoreError> {
        let path = self.version_dir(version)?;
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StoreError::io(&path, error)),
        }
        if let Some(entry) = self.inner.state().versions.get_mut(version) {
            entry.bytes = 0;
        }
        Ok(())
    }

    /// Counts `bytes` more in `version` (a file landed) or fewer (one removed).
    pub fn account(&self, version: &str, added: u64, removed: u64) {
        let mut state = self.inner.state();
        let entry = state.versions.entry(version.to_string()).or_default();
        entry.bytes = entry.bytes.saturating_add(added).saturating_sub(removed);
    }
}

/// Writes this process's pid into `dir/.owner`, unless a live other process
/// owns the directory.
fn take_ownership(dir: &Path) -> Result<(), StoreError> {
    let owner = dir.join(OWNER_FILE);
    let own = std::process::id();
    if let Ok(text) = std::fs::read_to_string(&owner)
        && let Ok(pid) = text.trim().parse::<u32>()
        && pid != own
        && Path::new("/proc").join(pid.to_string()).exists()
    {
        return Err(StoreError::CacheInUse {
            dir: dir.to_path_buf(),
            pid,
        });
    }
    recsys_bundle::durable::write_atomic(&owner, format!("{own}\n").as_bytes())?;
    Ok(())
}

/// Removes unfinished downloads under `dir` and returns the bytes of the
/// files that remain.
fn sweep(dir: &Path) -> Result<u64, StoreError> {
    let mut bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let entries = std::fs::read_dir(&path).map_err(|e| StoreError::io(&path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&path, e))?;
            let child = entry.path();
            let kind = entry.file_type().map_err(|e| StoreError::io(&child, e))?;
            if kind.is_dir() {
                pending.push(child);
            } else if entry.file_name().to_string_lossy().ends_with(PART_SUFFIX) {
                std::fs::remove_file(&child).map_err(|e| StoreError::io(&child, e))?;
            } else {
                bytes += entry
                    .metadata()
                    .map_err(|e| StoreError::io(&child, e))?
                    .len();
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cache: &BundleCache, version: &str, bytes: usize) {
        let dir = cache.version_dir(version).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), vec![0u8; bytes]).unwrap();
        cache.account(version, bytes as u64, 0);
    }

    #[test]
    fn evicts_least_recently_used_unpinned_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BundleCache::open(tmp.path(), 100).unwrap();
        let v1 = cache.pin("v1");
        fill(&cache, "v1", 40);
        let v2 = cache.pin("v2");
        fill(&cache, "v2", 40);
        drop(v1);
        drop(v2);
        // v1 was released first: it goes first.
        let v3 = cache.pin("v3");
        cache.reserve("v3", 40).unwrap();
        assert_eq!(cache.versions(), ["v2", "v3"]);
        assert!(!tmp.path().join("v1").exists());
        fill(&cache, "v3", 40);
        assert!(cache.used_bytes() <= 100);
        // v3 is pinned: v4 may push v2 out but no more.
        let _v4 = cache.pin("v4");
        let error = cache.reserve("v4", 70).unwrap_err().to_string();
        assert!(
            error.contains("v3") && error.contains("--bundle-cache-max-bytes"),
            "{error}"
        );
        assert!(!tmp.path().join("v2").exists());
        assert!(tmp.path().join("v3").exists());
        drop(v3);
        cache.reserve("v4", 70).unwrap();
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn reopening_counts_versions_and_removes_partial_downloads() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let cache = BundleCache::open(tmp.path(), 1000).unwrap();
            let _pin = cache.pin("v1");
            fill(&cache, "v1", 10);
        }
        std::fs::write(tmp.path().join("v1/.shard.part"), b"half").unwrap();
        std::fs::create_dir_all(tmp.path().join(".junk")).unwrap();
        let cache = BundleCache::open(tmp.path(), 1000).unwrap();
        assert_eq!(cache.versions(), ["v1"]);
        assert_eq!(cache.used_bytes(), 10);
        assert!(!tmp.path().join("v1/.shard.part").exists());
        assert!(!tmp.path().join(".junk").exists());
    }
}
