//! Checking a bundle's files against the sizes and checksums its manifest
//! records, before anything reads them.
//!
//! `recsys bundle verify` checks a whole version ([`verify_bundle`]); each node
//! checks the files it reads ([`verify_files`] with its [`FileSet`]) before it
//! loads them, so a torn, truncated or bit-flipped file keeps the node
//! `NOT_SERVING` with the file named instead of reaching usearch or candle. A
//! manifest without checksums (a bundle built before they existed) is refused:
//! the point of the check is that nothing unverified is served.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::layout::RANKER_DIR;
use crate::ranker_variants::VARIANTS_DIR;
use crate::{BundleError, MANIFEST_FILE, Manifest};

/// Which of a bundle's files a process reads, and so checks at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSet {
    /// Every file: `recsys bundle verify`.
    All,
    /// One shard's index file: a retrieval node.
    Shard(u32),
    /// The ranker's directory: a ranking node.
    Ranker,
    /// Everything but the shards and the ranker (catalog, query model): a gateway.
    Gateway,
}

impl FileSet {
    /// Whether a process that checks this set also reads the file at `path`
    /// (relative to the bundle), and so must have it on its disk: the set
    /// itself, and for a gateway the ranker's config too (it reads the
    /// request features the ranker takes from it). What a node fetches from a
    /// bundle root in an object store (`recsys-bundle-store`).
    pub fn reads(self, manifest: &Manifest, path: &str) -> bool {
        self.contains(manifest, path)
            || (self == Self::Gateway
                && manifest
                    .ranker
                    .iter()
                    .chain(manifest.ranker_variants.values())
                    .any(|spec| spec.config == path))
    }

    /// Whether the file at `path` (relative to the bundle) belongs to the set.
    fn contains(self, manifest: &Manifest, path: &str) -> bool {
        let in_dir = |dir: &str| {
            path.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        // The manifest may place a ranker's files outside `ranker/`.
        let ranker_file = || {
            manifest
                .ranker
                .iter()
                .chain(manifest.ranker_variants.values())
                .any(|spec| {
                    [&spec.config, &spec.weights, &spec.item_features]
                        .into_iter()
                        .chain(spec.user_features.as_ref())
                        .any(|file| file == path)
                })
        };
        match self {
            Self::All => true,
            Self::Shard(shard) => manifest
                .shard(shard)
                .is_some_and(|entry| entry.file == path),
            Self::Ranker => in_dir(RANKER_DIR) || in_dir(VARIANTS_DIR) || ranker_file(),
            Self::Gateway => {
                !in_dir(RANKER_DIR)
                    && !in_dir(VARIANTS_DIR)
                    && !manifest.shards.iter().any(|entry| entry.file == path)
                    && !ranker_file()
            }
        }
    }
}

/// One file that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFile {
    /// Its path relative to the bundle.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// What a verification checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The version's name in its manifest.
    pub version: String,
    /// Every file checked, in path order.
    pub files: Vec<CheckedFile>,
    /// Their total size.
    pub bytes: u64,
    /// Time spent reading and hashing.
    pub elapsed: Duration,
}

/// Checks the files of `set` in the bundle at `dir`, described by `manifest`
/// (already loaded and validated): each file the manifest names for the set must
/// be listed with a checksum, and each listed file of the set must be there with
/// its recorded size and checksum. The first failure names its file.
pub fn verify_files(
    dir: &Path,
    manifest: &Manifest,
    set: FileSet,
) -> Result<VerifyReport, BundleError> {
    let started = Instant::now();
    if manifest.files.is_empty() {
        return Err(BundleError::corrupt(
            dir.join(MANIFEST_FILE),
            "lists no file checksums (built before bundles were checksummed, or not sealed): rebuild the bundle",
        ));
    }
    for path in manifest.referenced_files() {
        if set.contains(manifest, &path) && !manifest.files.contains_key(&path) {
            return Err(BundleError::corrupt(
                dir.join(&path),
                "named by the manifest but has no checksum in its files",
            ));
        }
    }
    if let FileSet::Shard(shard) = set
        && manifest.shard(shard).is_none()
    {
        return Err(BundleError::invalid(
            "shard",
            format!(
                "bundle {} has shards 0..{}, not {shard}",
                dir.display(),
                manifest.shard_count
            ),
        ));
    }
    let mut files = Vec::new();
    let mut bytes = 0;
    for (path, digest) in &manifest.files {
        if !set.contains(manifest, path) {
            continue;
        }
        digest.check(&dir.join(path))?;
        bytes += digest.bytes;
        files.push(CheckedFile {
            path: path.clone(),
            bytes: digest.bytes,
        });
    }
    Ok(VerifyReport {
        version: manifest.version.clone(),
        files,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Loads the manifest of the bundle at `dir` and checks all of its files:
/// `recsys bundle verify`. Beyond [`verify_files`], a file in the directory that
/// the manifest does not list is an error too (a version holds exactly what its
/// manifest says; anything else was put there after it was built).
pub fn verify_bundle(dir: &Path) -> Result<(Manifest, VerifyReport), BundleError> {
    let manifest = Manifest::load(dir)?;
    let report = verify_files(dir, &manifest, FileSet::All)?;
    for path in files_under(dir)? {
        if path != MANIFEST_FILE && !manifest.files.contains_key(&path) {
            return Err(BundleError::corrupt(
                dir.join(&path),
                "is not listed in the manifest's files",
            ));
        }
    }
    Ok((manifest, report))
}

/// Every regular file under `dir`, as `/`-separated paths relative to it, sorted.
/// Symbolic links are refused: a version's files are its own.
pub fn files_under(dir: &Path) -> Result<Vec<String>, BundleError> {
    let mut out = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&path).map_err(|e| BundleError::io(&path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BundleError::io(&path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(|e| BundleError::io(entry.path(), e))?;
            if kind.is_dir() {
                pending.push((entry.path(), relative));
            } else if kind.is_file() {
                out.push(relative);
            } else {
                return Err(BundleError::corrupt(
                    entry.path(),
                    "is neither a file nor a directory (links are not followed)",
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}
