//! `recsys bundle publish`: uploads a built version to a root in a store.
//!
//! The version is verified first (nothing corrupt is published), then every
//! file is uploaded, then the manifest, and only then, if asked, `CURRENT`: a
//! server fetches a version through its manifest, so an upload interrupted at
//! any point leaves no version that loads (servers say the manifest is
//! missing), and running the command again finishes it. A version name that
//! is already published with other content is refused: versions are immutable.

use std::path::Path;
use std::time::{Duration, Instant};

use recsys_bundle::root::CURRENT_FILE;
use recsys_bundle::{MANIFEST_FILE, verify_bundle};

use crate::remote_root::MAX_MANIFEST_BYTES;
use crate::{Store, StoreError};

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    /// The version's name.
    pub version: String,
    /// Files uploaded (the manifest included); 0 when it was there already.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Whether `CURRENT` now names the version.
    pub current: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Publishes the version at `dir` into `store`'s root, then points `CURRENT`
/// at it when `set_current`. Blocks: call it from a blocking thread.
pub fn publish(store: &Store, dir: &Path, set_current: bool) -> Result<PublishReport, StoreError> {
    let started = Instant::now();
    let (manifest, _) = verify_bundle(dir)?;
    let version = manifest.version.clone();
    recsys_bundle::root::check_version_name(&version)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let raw = std::fs::read(&manifest_path).map_err(|e| StoreError::io(&manifest_path, e))?;
    let remote_manifest = format!("{version}/{MANIFEST_FILE}");
    let (mut files, mut bytes) = (0, 0);
    match store.get_small(&remote_manifest, MAX_MANIFEST_BYTES)? {
        Some(existing) if existing.as_ref() == raw.as_slice() => {
            tracing::info!(%version, "version already published; not uploading it again");
        }
        Some(_) => {
            return Err(StoreError::Corrupt {
                url: store.url().url_of(&remote_manifest),
                reason: "is already published with other content: versions are immutable, build under a new version name".into(),
            });
        }
        None => {
            for (path, digest) in &manifest.files {
                tracing::info!(%version, file = %path, bytes = digest.bytes, "uploading");
                store.put_file(&format!("{version}/{path}"), &dir.join(path))?;
                files += 1;
                bytes += digest.bytes;
            }
            // Last: from now on the version is complete in the store.
            store.put_bytes(&remote_manifest, raw.clone())?;
            files += 1;
            bytes += raw.len() as u64;
        }
    }
    if set_current {
        store.put_bytes(CURRENT_FILE, format!("{version}\n").into_bytes())?;
    }
    Ok(PublishReport {
        version,
        files,
        bytes,
        current: set_current,
        elapsed: started.elapsed(),
    })
}
