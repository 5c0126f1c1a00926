//! Sealing a bundle: every file flushed to the disk and listed with its size and
//! checksum in the manifest, which is written last (atomically and flushed too).
//!
//! Every writer ends with [`seal`] (`build_bundle`, `build_synthetic`, the
//! trainer's export, `attach_ranker`), so a bundle any of them leaves behind is
//! one the nodes will load. A writer that calls another seals twice; files already
//! listed are not hashed again, so the second seal costs only the new files. A
//! writer that rewrites a listed file must drop its entry first (`attach_ranker`
//! drops `ranker/`).

use std::path::Path;

use recsys_bundle::durable::{sync_dir, sync_file};
use recsys_bundle::verify::files_under;
use recsys_bundle::{BundleError, FileDigest, MANIFEST_FILE, Manifest};

/// Lists every file under `dir` in `manifest.files` (hashing those not listed
/// yet, dropping entries whose file is gone), flushes every file and directory,
/// and saves the manifest. Hidden temporaries of an atomic write (`.*.tmp-*`)
/// are not part of a bundle and are refused.
pub fn seal(dir: &Path, manifest: &mut Manifest) -> Result<(), BundleError> {
    let files = files_under(dir)?;
    manifest.files.retain(|path, _| {
        files.binary_search(path).is_ok() && !path.starts_with(".manifest.json.tmp-")
    });
    let mut dirs = std::collections::BTreeSet::new();
    for path in &files {
        if path == MANIFEST_FILE {
            continue;
        }
        let absolute = dir.join(path);
        if path.starts_with(".manifest.json.tmp-") {
            // What a manifest save killed halfway leaves; the manifest is rewritten below.
            std::fs::remove_file(&absolute).map_err(|e| BundleError::io(&absolute, e))?;
            continue;
        }
        if path
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with('.'))
        {
            return Err(BundleError::corrupt(
                &absolute,
                "a hidden file in a bundle: a temporary left by an interrupted write?",
            ));
        }
        if !manifest.files.contains_key(path) {
            manifest
                .files
                .insert(path.clone(), FileDigest::of_file(&absolute)?);
        }
        sync_file(&absolute)?;
        let mut parent = Path::new(path.as_str()).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    // Deepest first, so each directory's entries are durable before its parent's.
    for relative in dirs.iter().rev() {
        sync_dir(&dir.join(relative))?;
    }
    manifest.save(dir)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format_version": recsys_bundle::FORMAT_VERSION,
            "version": "t",
            "dimensions": 4,
            "index": recsys_bundle::IndexParams::default(),
            "shard_count": 1,
            "shards": [{"shard": 0, "file": "shards/shard-0.usearch", "items": 0}],
            "items": 0,
            "catalog": null,
            "query_model": null,
            "source": "test",
        }))
        .unwrap()
    }

    #[test]
    fn seal_lists_every_file_and_verify_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shards")).unwrap();
        std::fs::write(dir.path().join("shards/shard-0.usearch"), b"index").unwrap();
        std::fs::write(dir.path().join("catalog.tsv"), b"1\tone\n").unwrap();
        let mut manifest = manifest();
        seal(dir.path(), &mut manifest).unwrap();
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            vec!["catalog.tsv", "shards/shard-0.usearch"]
        );
        let (loaded, report) = recsys_bundle::verify_bundle(dir.path()).unwrap();
        assert_eq!(loaded, manifest);
        assert_eq!(report.bytes, 5 + 6);

        // A file added afterwards is refused by verify until sealed again; a
        // removed one drops out of the list.
        std::fs::write(dir.path().join("extra.txt"), b"x").unwrap();
        let error = recsys_bundle::verify_bundle(dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("extra.txt"), "{error}");
        std::fs::remove_file(dir.path().join("catalog.tsv")).unwrap();
        seal(dir.path(), &mut manifest).unwrap();
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            vec!["extra.txt", "shards/shard-0.usearch"]
        );
        recsys_bundle::verify_bundle(dir.path()).unwrap();

        std::fs::write(dir.path().join("shards/.x.tmp-1"), b"x").unwrap();
        assert!(seal(dir.path(), &mut manifest).is_err());
    }
}
