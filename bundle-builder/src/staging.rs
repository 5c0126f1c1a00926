//! Building a bundle where nothing can load it until it is complete: the files go
//! into a hidden sibling directory, and only a sealed bundle is renamed into place.
//!
//! Into a root ([`Staging::version`]): `ROOT/.tmp-<version>-<pid>/` becomes
//! `ROOT/<version>/` by one rename, which either happened or did not; a kill -9
//! at any point leaves the root's earlier versions and its `CURRENT` as they
//! were, plus at most a `.tmp-` directory that no reader looks at and the next
//! build removes. Versions are immutable: an existing one is never rebuilt.
//!
//! Into a plain directory ([`Staging::dir`], `recsys bundle --out DIR`, the demo's
//! cache): the new bundle is built beside `DIR` and swapped in by two renames
//! (the old one aside, the new one in), then the old one is removed. A kill
//! between the two renames leaves no `DIR` (the old bundle is in
//! `.old-<name>-<pid>`); a root has no such window, which is why serving
//! clusters use roots.

use std::path::{Path, PathBuf};

use recsys_bundle::durable::sync_dir;
use recsys_bundle::root::{BundleRoot, STAGING_PREFIX, clean_abandoned_in};
use recsys_bundle::verify::files_under;
use recsys_bundle::{BundleError, MANIFEST_FILE, Manifest};

/// Prefix of an old bundle set aside while a plain directory is replaced.
const OLD_PREFIX: &str = ".old-";

#[derive(Debug)]
enum Target {
    Version { root: BundleRoot, version: String },
    Dir(PathBuf),
}

/// A bundle being built in a temporary directory; removed when dropped
/// uncommitted (an error on the way), left for the next build to remove when
/// the process is killed.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    target: Target,
    committed: bool,
}

impl Staging {
    /// Starts building `version` in the root at `root` (created if missing):
    /// refuses a version that already exists there, removes what killed builds
    /// left, and creates the staging directory.
    pub fn version(root: &Path, version: &str) -> Result<Self, BundleError> {
        let root = BundleRoot::new(root);
        let target = root.version_dir(version)?;
        if target.exists() {
            return Err(BundleError::invalid(
                "version",
                format!(
                    "{} already exists: versions are immutable, build another version name",
                    target.display()
                ),
            ));
        }
        std::fs::create_dir_all(root.dir()).map_err(|e| BundleError::io(root.dir(), e))?;
        for removed in root.clean_abandoned()? {
            tracing::info!(dir = %removed.display(), "removed an abandoned build");
        }
        let path = root.staging_dir(version)?;
        Self::create(
            path,
            Target::Version {
                root,
                version: version.to_string(),
            },
        )
    }

    /// Starts building a bundle that will replace the directory `dir` (or create it).
    pub fn dir(dir: &Path) -> Result<Self, BundleError> {
        let (parent, name) = split(dir)?;
        std::fs::create_dir_all(&parent).map_err(|e| BundleError::io(&parent, e))?;
        for prefix in [STAGING_PREFIX, OLD_PREFIX] {
            for removed in clean_abandoned_in(&parent, &format!("{prefix}{name}-"))? {
                tracing::info!(dir = %removed.display(), "removed an abandoned build");
            }
        }
        let path = parent.join(format!("{STAGING_PREFIX}{name}-{}", std::process::id()));
        Self::create(path, Target::Dir(dir.to_path_buf()))
    }

    fn create(path: PathBuf, target: Target) -> Result<Self, BundleError> {
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| BundleError::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| BundleError::io(&path, e))?;
        Ok(Self {
            path,
            target,
            committed: false,
        })
    }

    /// The directory to write the bundle into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the bundle will be once committed.
    pub fn target(&self) -> PathBuf {
        match &self.target {
            Target::Version { root, version } => root.dir().join(version),
            Target::Dir(dir) => dir.clone(),
        }
    }

    /// Moves the finished bundle into place and returns its directory. It must be
    /// sealed (every writer seals): the manifest loads, lists a checksum for every
    /// file in the directory with the file's current size, and in a root carries
    /// the version's name. Files are not hashed again here.
    pub fn commit(mut self) -> Result<PathBuf, BundleError> {
        let manifest = Manifest::load(&self.path)?;
        check_sealed(&self.path, &manifest)?;
        let target = self.target();
        let parent = split(&target)?.0;
        match &self.target {
            Target::Version { version, .. } => {
                if &manifest.version != version {
                    return Err(BundleError::invalid(
                        "version",
                        format!(
                            "the bundle's manifest says {:?}, the root's directory would be {version:?}",
                            manifest.version
                        ),
                    ));
                }
                // rename(2) onto an existing non-empty directory fails, so a
                // version built at the same time by another process is never
                // overwritten.
                std::fs::rename(&self.path, &target).map_err(|e| BundleError::io(&target, e))?;
                self.committed = true;
                sync_dir(&parent)?;
            }
            Target::Dir(dir) => {
                let name = split(dir)?.1;
                let old = parent.join(format!("{OLD_PREFIX}{name}-{}", std::process::id()));
                let replacing = dir.exists();
                if replacing {
                    std::fs::rename(dir, &old).map_err(|e| BundleError::io(dir, e))?;
                }
                std::fs::rename(&self.path, dir).map_err(|e| BundleError::io(dir, e))?;
                self.committed = true;
                sync_dir(&parent)?;
                if replacing {
                    std::fs::remove_dir_all(&old).map_err(|e| BundleError::io(&old, e))?;
                }
            }
        }
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The manifest lists every file in `dir`, each with its current size.
fn check_sealed(dir: &Path, manifest: &Manifest) -> Result<(), BundleError> {
    if manifest.files.is_empty() {
        return Err(BundleError::corrupt(
            dir.join(MANIFEST_FILE),
            "lists no file checksums: the bundle was not sealed",
        ));
    }
    let present = files_under(dir)?;
    for path in &present {
        if path == MANIFEST_FILE {
            continue;
        }
        let Some(digest) = manifest.files.get(path) else {
            return Err(BundleError::corrupt(
                dir.join(path),
                "was written after the bundle was sealed",
            ));
        };
        let length = std::fs::metadata(dir.join(path))
            .map_err(|e| BundleError::io(dir.join(path), e))?
            .len();
        if length != digest.bytes {
            return Err(BundleError::corrupt(
                dir.join(path),
                format!(
                    "is {length} bytes, {} when sealed: changed after the bundle was sealed",
                    digest.bytes
                ),
            ));
        }
    }
    if let Some(missing) = manifest
        .files
        .keys()
        .find(|path| present.binary_search(path).is_err())
    {
        return Err(BundleError::corrupt(
            dir.join(missing),
            "is listed in the manifest but missing",
        ));
    }
    Ok(())
}

/// `dir`'s parent (`.` for a bare name) and its last component.
fn split(dir: &Path) -> Result<(PathBuf, String), BundleError> {
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| {
            BundleError::invalid("out", format!("{} names no directory", dir.display()))
        })?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a sealed one-file bundle of `version` into `dir`.
    fn write_sealed(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir.join("shards")).unwrap();
        std::fs::write(dir.join("shards/shard-0.usearch"), version.as_bytes()).unwrap();
        let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": recsys_bundle::FORMAT_VERSION,
            "version": version,
            "dimensions": 4,
            "index": recsys_bundle::IndexParams::default(),
            "shard_count": 1,
            "shards": [{"shard": 0, "file": "shards/shard-0.usearch", "items": 0}],
            "items": 0,
            "catalog": null,
            "query_model": null,
            "source": "test",
        }))
        .unwrap();
        crate::seal(dir, &mut manifest).unwrap();
    }

    #[test]
    fn a_version_appears_only_when_committed_and_never_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let staging = Staging::version(&root, "v1").unwrap();
        assert!(staging.path().starts_with(&root));
        write_sealed(staging.path(), "v1");
        assert!(!root.join("v1").exists());
        assert!(BundleRoot::new(&root).versions().unwrap().is_empty());
        assert_eq!(staging.commit().unwrap(), root.join("v1"));
        assert_eq!(BundleRoot::new(&root).versions().unwrap(), vec!["v1"]);
        // Immutable: the same version again is refused before anything is built.
        assert!(Staging::version(&root, "v1").is_err());
        // Only a staging directory is left by an abandoned (dropped) build.
        let staging = Staging::version(&root, "v2").unwrap();
        let path = staging.path().to_path_buf();
        std::fs::write(path.join("partial"), b"x").unwrap();
        drop(staging);
        assert!(!path.exists());
    }

    #[test]
    fn an_unsealed_or_mislabelled_bundle_is_not_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let staging = Staging::version(&root, "v1").unwrap();
        write_sealed(staging.path(), "v1");
        std::fs::write(staging.path().join("late.txt"), b"x").unwrap();
        let error = staging.commit().unwrap_err().to_string();
        assert!(error.contains("late.txt"), "{error}");
        assert!(!root.join("v1").exists());

        let staging = Staging::version(&root, "v1").unwrap();
        write_sealed(staging.path(), "v0");
        assert!(staging.commit().is_err());
        assert!(!root.join("v1").exists());
    }

    #[test]
    fn a_plain_directory_is_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("bundle");
        for version in ["a", "b"] {
            let staging = Staging::dir(&out).unwrap();
            write_sealed(staging.path(), version);
            assert_eq!(staging.commit().unwrap(), out);
            assert_eq!(Manifest::load(&out).unwrap().version, version);
        }
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bundle")]);
    }
}
