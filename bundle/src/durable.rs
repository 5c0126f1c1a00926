//! Writes that survive a crash: a file or directory is flushed to the disk
//! (`fsync`) before anything points at it, and a small file is replaced through a
//! temporary sibling and a rename, so a reader sees the old content or the new,
//! never half of either. A rename is durable only once its directory is flushed
//! too (ext4 and xfs may otherwise lose it at power loss), hence [`sync_dir`].

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::BundleError;

/// Flushes the content of the file at `path` to the disk.
pub fn sync_file(path: &Path) -> Result<(), BundleError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| BundleError::io(path, e))
}

/// Flushes the directory `dir` (its entries: creations, renames, removals).
pub fn sync_dir(dir: &Path) -> Result<(), BundleError> {
    // Linux opens a directory read-only and fsyncs it like a file; other systems
    // may refuse either, and there the rename alone is what we can do.
    match File::open(dir).and_then(|file| file.sync_all()) {
        Ok(()) => Ok(()),
        Err(error) if cfg!(target_os = "linux") => Err(BundleError::io(dir, error)),
        Err(_) => Ok(()),
    }
}

/// Replaces `path` with `bytes`: written to a temporary sibling, flushed, renamed
/// over `path`, and the directory flushed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| BundleError::invalid("path", format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(|e| BundleError::io(&tmp, e));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    std::fs::rename(&tmp, path).map_err(|e| BundleError::io(path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pointer");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pointer")]);
        sync_file(&path).unwrap();
        sync_dir(dir.path()).unwrap();
    }
}
