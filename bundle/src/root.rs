//! A bundle root: a directory of immutable bundle versions and a pointer to the
//! one to serve.
//!
//! ```text
//! ROOT/
//!   CURRENT                 the version to serve: one line, its name
//!   v1/                     a complete version (manifest.json with every file's checksum)
//!   v2/
//!   .tmp-v3-4711/           a build in progress (or killed): never loaded, removed by
//!                           the next build once process 4711 is gone
//! ```
//!
//! A builder writes a version into a `.tmp-` sibling, flushes every file, records
//! their checksums in the manifest, and renames the directory into place
//! (`recsys_bundle_builder::Staging`); only then may `CURRENT` name it, and
//! `CURRENT` itself is replaced atomically ([`BundleRoot::set_current`]). So a
//! build killed at any point leaves the earlier versions and the pointer as they
//! were, and no half version is ever named.
//!
//! [`BundleSource`] is what a node is told to serve: one version directory
//! (`--bundle`), a root whose pointer it follows (`--bundle-root`), or such a
//! root in an object store (`--bundle-root s3://...`, [`crate::remote`]), whose
//! versions are fetched into a local cache before they load.

use std::path::{Path, PathBuf};

use crate::remote::{LocatedVersion, RemoteSource, is_remote_url};
use crate::{BundleError, Manifest};

/// The pointer file inside a root.
pub const CURRENT_FILE: &str = "CURRENT";

/// Prefix of a version being built inside a root.
pub const STAGING_PREFIX: &str = ".tmp-";

/// Longest version name accepted.
pub const MAX_VERSION_LEN: usize = 128;

/// Checks that `version` can name a directory inside a root: 1 to 128 ASCII
/// letters, digits, `.`, `_` or `-`, not starting with `.` (hidden entries are
/// the builder's own).
pub fn check_version_name(version: &str) -> Result<(), BundleError> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && !version.starts_with('.')
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BundleError::invalid(
            "version",
            format!(
                "{version:?} cannot name a version directory: use 1 to {MAX_VERSION_LEN} ASCII letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        ))
    }
}

/// A bundle root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRoot {
    dir: PathBuf,
}

/// A version chosen to be served: its name and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBundle {
    /// The version's name (the manifest's `version`).
    pub version: String,
    /// Its directory, holding `manifest.json`.
    pub dir: PathBuf,
}

impl BundleRoot {
    /// The root at `dir` (not read until asked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The root's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `version` (whether or not it exists).
    pub fn version_dir(&self, version: &str) -> Result<PathBuf, BundleError> {
        check_version_name(version)?;
        Ok(self.dir.join(version))
    }

    /// The version `CURRENT` names.
    pub fn current(&self) -> Result<String, BundleError> {
        let path = self.dir.join(CURRENT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| BundleError::io(&path, e))?;
        let version = text.trim();
        check_version_name(version).map_err(|e| BundleError::corrupt(&path, e.to_string()))?;
        Ok(version.to_string())
    }

    /// The version `CURRENT` names and its directory, after checking that the
    /// directory holds a complete version of that name ([`BundleRoot::complete`]).
    pub fn resolve_current(&self) -> Result<ResolvedBundle, BundleError> {
        let version = self.current()?;
        let dir = self.complete(&version)?;
        Ok(ResolvedBundle { version, dir })
    }

    /// Checks that `version` is complete in this root (a directory whose manifest
    /// loads, carries that version name and lists its files' checksums) and
    /// returns its directory. Files are not hashed here: that is
    /// [`crate::verify`]'s work, done by whoever reads them.
    pub fn complete(&self, version: &str) -> Result<PathBuf, BundleError> {
        let dir = self.version_dir(version)?;
        let manifest = Manifest::load(&dir)?;
        let manifest_path = dir.join(crate::MANIFEST_FILE);
        if manifest.version != version {
            return Err(BundleError::corrupt(
                manifest_path,
                format!(
                    "names version {:?} but lies in the root's directory {version:?}",
                    manifest.version
                ),
            ));
        }
        if manifest.files.is_empty() {
            return Err(BundleError::corrupt(
                manifest_path,
                "lists no file checksums: not a complete version",
            ));
        }
        Ok(dir)
    }

    /// Points `CURRENT` at `version`, which must be complete: written to a
    /// temporary file, flushed, renamed over the old pointer, directory flushed.
    pub fn set_current(&self, version: &str) -> Result<(), BundleError> {
        self.complete(version)?;
        crate::durable::write_atomic(
            &self.dir.join(CURRENT_FILE),
            format!("{version}\n").as_bytes(),
        )
    }

    /// The complete versions in the root, sorted by name; builds in progress,
    /// hidden entries and incomplete directories are left out.
    pub fn versions(&self) -> Result<Vec<String>, BundleError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| BundleError::io(&self.dir, e))?;
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| BundleError::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_version_name(&name).is_ok()
                && entry.path().is_dir()
                && self.complete(&name).is_ok()
            {
                versions.push(name);
            }
        }
        versions.sort();
        Ok(versions)
    }

    /// Where this process builds `version` before renaming it into place.
    pub fn staging_dir(&self, version: &str) -> Result<PathBuf, BundleError> {
        check_version_name(version)?;
        Ok(self
            .dir
            .join(format!("{STAGING_PREFIX}{version}-{}", std::process::id())))
    }

    /// Removes what killed builds left: `.tmp-*-PID` directories whose process is
    /// gone (a live one may be another build in progress). Returns what it removed.
    pub fn clean_abandoned(&self) -> Result<Vec<PathBuf>, BundleError> {
        clean_abandoned_in(&self.dir, STAGING_PREFIX)
    }
}

/// Removes the entries of `dir` named `{prefix}...-PID` whose process is gone.
pub fn clean_abandoned_in(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, BundleError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err(BundleError::io(dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| BundleError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest
            .rsplit('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(process_alive) {
            continue;
        }
        let path = entry.path();
        let outcome = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        outcome.map_err(|e| BundleError::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether process `pid` exists. Where that cannot be told (no `/proc`), every
/// process counts as alive, so nothing that may be in use is removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// What a node serves: one version directory, or the current version of a
/// root on the local disk or in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A version directory (`--bundle DIR`), served as it is.
    Dir(PathBuf),
    /// A root (`--bundle-root ROOT`): the version `CURRENT` names.
    Root(BundleRoot),
    /// A root in an object store (`--bundle-root s3://bucket/prefix`): its
    /// versions are fetched into a local cache, verified, then loaded.
    Remote(RemoteSource),
}

impl From<&Path> for BundleSource {
    /// What `path` holds ([`BundleSource::at`]).
    fn from(path: &Path) -> Self {
        Self::at(path)
    }
}

impl From<&PathBuf> for BundleSource {
    /// What `path` holds ([`BundleSource::at`]).
    fn from(path: &PathBuf) -> Self {
        Self::at(path)
    }
}

impl From<&str> for BundleSource {
    /// What `path` holds ([`BundleSource::at`]).
    fn from(path: &str) -> Self {
        Self::at(path)
    }
}

impl From<PathBuf> for BundleSource {
    /// What `path` holds ([`BundleSource::at`]).
    fn from(path: PathBuf) -> Self {
        Self::at(path)
    }
}

impl BundleSource {
    /// From the two flags nodes take; exactly one must be given.
    pub fn from_flags(
        bundle: Option<PathBuf>,
        bundle_root: Option<PathBuf>,
    ) -> Result<Self, BundleError> {
        match (bundle, bundle_root) {
            (_, Some(root)) if is_remote_url(&root.to_string_lossy()) => Err(BundleError::invalid(
                "bundle_root",
                format!(
                    "{} is in an object store, which this command does not read: give a local root",
                    root.display()
                ),
            )),
            (Some(dir), None) => Ok(Self::Dir(dir)),
            (None, Some(root)) => Ok(Self::Root(BundleRoot::new(root))),
            (Some(_), Some(_)) => Err(BundleError::invalid(
                "bundle",
                "give --bundle DIR or --bundle-root ROOT, not both",
            )),
            (None, None) => Err(BundleError::invalid(
                "bundle",
                "say what to serve: --bundle DIR or --bundle-root ROOT",
            )),
        }
    }

    /// What `path` holds: a root when it has a `CURRENT` pointer, else a
    /// version directory. Servers are configured with one path either way.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.join(CURRENT_FILE).is_file() {
            Self::Root(BundleRoot::new(path))
        } else {
            Self::Dir(path)
        }
    }

    /// The version directory to load now. For a directory, its manifest's
    /// version (the manifest is read); for a root, what `CURRENT` names.
    pub fn resolve(&self) -> Result<ResolvedBundle, BundleError> {
        match self {
            Self::Dir(dir) => Ok(ResolvedBundle {
                version: Manifest::load(dir)?.version,
                dir: dir.clone(),
            }),
            Self::Root(root) => root.resolve_current(),
            Self::Remote(remote) => {
                let version = remote.root.current()?;
                let located = remote.root.fetch(&version, remote.files)?;
                Ok(ResolvedBundle {
                    version,
                    dir: located.dir,
                })
            }
        }
    }

    /// The local directory of `version`, complete and ready to load: the one
    /// place a server turns a version name into files, whether the version came
    /// from `CURRENT` or from the cluster's desired version in etcd. A root in
    /// an object store fetches the files the server reads into its local cache
    /// here, verified, and pins them there while the returned
    /// [`LocatedVersion`] (its `pin`) is held; this blocks, so servers call it
    /// from their loaders on the blocking pool. A single directory (`--bundle`)
    /// holds only its own version.
    pub fn locate(&self, version: &str) -> Result<LocatedVersion, BundleError> {
        match self {
            Self::Dir(dir) => {
                let own = Manifest::load(dir)?.version;
                if own == version {
                    Ok(LocatedVersion::local(dir.clone()))
                } else {
                    Err(BundleError::invalid(
                        "version",
                        format!(
                            "{version:?} is not in {}, which holds {own:?} alone: serve a bundle root (--bundle-root) to switch versions",
                            dir.display()
                        ),
                    ))
                }
            }
            Self::Root(root) => root.complete(version).map(LocatedVersion::local),
            Self::Remote(remote) => remote.root.fetch(version, remote.files),
        }
    }

    /// The version to serve as the source says now (`CURRENT`, or the
    /// directory's own), or `None` when it cannot be read at this moment:
    /// what a server without etcd polls.
    pub fn current_version(&self) -> Option<String> {
        let version = match self {
            Self::Dir(dir) => Manifest::load(dir).map(|manifest| manifest.version),
            Self::Root(root) => root.current(),
            Self::Remote(remote) => remote.root.current(),
        };
        match version {
            Ok(version) => Some(version),
            Err(error) => {
                tracing::debug!(%error, "cannot read the version to serve");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        for good in ["v1", "2026-12-06.1", "demo_1", &"a".repeat(MAX_VERSION_LEN)] {
            check_version_name(good).unwrap();
        }
        for bad in [
            "",
            ".tmp-v1-1",
            "..",
            "a/b",
            "v 1",
            "CURRENT\n",
            &"a".repeat(MAX_VERSION_LEN + 1),
        ] {
            assert!(check_version_name(bad).is_err(), "{bad:?}");
        }
    }

    /// A directory that looks like a sealed version named `version` (a manifest
    /// that validates and lists one file); no shard is readable, which the
    /// pointer logic never needs.
    fn fake_version(root: &Path, version: &str) {
        let dir = root.join(version);
        std::fs::create_dir_all(dir.join("shards")).unwrap();
        std::fs::write(dir.join("shards/shard-0.usearch"), b"x").unwrap();
        let manifest = serde_json::json!({
            "format_version": crate::FORMAT_VERSION,
            "version": version,
            "dimensions": 4,
            "index": crate::IndexParams::default(),
            "shard_count": 1,
            "shards": [{"shard": 0, "file": "shards/shard-0.usearch", "items": 0}],
            "items": 0,
            "catalog": null,
            "query_model": null,
            "source": "test",
            "files": {"shards/shard-0.usearch":
                crate::FileDigest::of_file(&dir.join("shards/shard-0.usearch")).unwrap()},
        });
        std::fs::write(dir.join(crate::MANIFEST_FILE), manifest.to_string()).unwrap();
    }

    #[test]
    fn current_pointer_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = BundleRoot::new(tmp.path());
        assert!(matches!(root.current(), Err(BundleError::Io { .. })));
        fake_version(tmp.path(), "v1");
        fake_version(tmp.path(), "v2");
        root.set_current("v1").unwrap();
        assert_eq!(root.resolve_current().unwrap().dir, tmp.path().join("v1"));
        root.set_current("v2").unwrap();
        let resolved = BundleSource::Root(root.clone()).resolve().unwrap();
        assert_eq!(resolved.version, "v2");
        assert_eq!(root.versions().unwrap(), vec!["v1", "v2"]);
    }

    #[test]
    fn incomplete_versions_are_never_named_or_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = BundleRoot::new(tmp.path());
        fake_version(tmp.path(), "v1");
        root.set_current("v1").unwrap();
        // A directory without a manifest, one whose manifest lists no checksums,
        // one whose manifest names another version, and a build in progress.
        std::fs::create_dir_all(tmp.path().join("v2/shards")).unwrap();
        fake_version(tmp.path(), "v3");
        let v3 = tmp.path().join("v3").join(crate::MANIFEST_FILE);
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&v3).unwrap()).unwrap();
        manifest["files"] = serde_json::json!({});
        std::fs::write(&v3, manifest.to_string()).unwrap();
        fake_version(tmp.path(), "v4");
        std::fs::rename(tmp.path().join("v4"), tmp.path().join("v5")).unwrap();
        fake_version(tmp.path(), ".tmp-v6-1");
        for version in ["v2", "v3", "v5", "v7"] {
            let error = root.set_current(version).unwrap_err();
            assert!(error.to_string().contains(version), "{error}");
        }
        assert!(root.set_current(".tmp-v6-1").is_err());
        assert_eq!(root.current().unwrap(), "v1");
        assert_eq!(root.versions().unwrap(), vec!["v1"]);
        // A pointer edited by hand to name an incomplete version resolves to an error.
        std::fs::write(tmp.path().join(CURRENT_FILE), "v3\n").unwrap();
        assert!(root.resolve_current().is_err());
        std::fs::write(tmp.path().join(CURRENT_FILE), "../v1\n").unwrap();
        let error = root.resolve_current().unwrap_err().to_string();
        assert!(error.contains(CURRENT_FILE), "{error}");
    }

    #[test]
    fn abandoned_builds_are_removed_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = BundleRoot::new(tmp.path());
        let own = root.staging_dir("v2").unwrap();
        std::fs::create_dir_all(&own).unwrap();
        // pid 0 is never a process that can own a directory.
        let dead = tmp.path().join(format!("{STAGING_PREFIX}v1-0"));
        std::fs::create_dir_all(dead.join("shards")).unwrap();
        fake_version(tmp.path(), "v3");
        let removed = root.clean_abandoned().unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![dead.clone()]);
            assert!(!dead.exists());
        }
        assert!(own.exists());
        assert!(tmp.path().join("v3").exists());
    }

    #[test]
    fn source_from_flags() {
        let dir = PathBuf::from("b");
        assert_eq!(
            BundleSource::from_flags(Some(dir.clone()), None).unwrap(),
            BundleSource::Dir(dir.clone())
        );
        assert!(BundleSource::from_flags(Some(dir.clone()), Some(dir.clone())).is_err());
        assert!(BundleSource::from_flags(None, None).is_err());
        let error = BundleSource::from_flags(None, Some("s3://bucket/models".into())).unwrap_err();
        assert!(error.to_string().contains("object store"), "{error}");
    }
}
