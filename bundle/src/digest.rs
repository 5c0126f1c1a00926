//! A file's size and checksum, as the manifest records them for every file of a
//! bundle version.
//!
//! The checksum is XXH3-128 (`xxhash-rust`): it guards against what happens to
//! files at rest and in transit (a torn write, a flipped bit, a truncated copy),
//! not against someone who can write the bundle and would rewrite the manifest as
//! well. XXH3 hashes at memory speed, so verifying a shard at load costs its read
//! from the disk and little more (docs/benchmarks-history.md, "Bundle verification");
//! SHA-256 ran several times slower there.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BundleError;

/// Bytes read per step while hashing: large enough that a read is one syscall
/// per megabyte, small enough to stay in cache.
const CHUNK: usize = 1 << 20;

/// What the manifest records about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// The file's length.
    pub bytes: u64,
    /// XXH3-128 of the content, 32 lowercase hex digits.
    pub xxh3_128: String,
}

impl FileDigest {
    /// Reads `path` through and records its length and checksum.
    pub fn of_file(path: &Path) -> Result<Self, BundleError> {
        let mut file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buffer = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(BundleError::io(path, error)),
            };
            hasher.update(&buffer[..read]);
            bytes += read as u64;
        }
        Ok(Self {
            bytes,
            xxh3_128: format!("{:032x}", hasher.digest128()),
        })
    }

    /// Checks the file at `path` against this record: its length first (a
    /// truncated file is refused without reading it), then its checksum. The
    /// error names the file and both values.
    pub fn check(&self, path: &Path) -> Result<(), BundleError> {
        let length = std::fs::metadata(path)
            .map_err(|e| BundleError::io(path, e))?
            .len();
        if length != self.bytes {
            return Err(BundleError::corrupt(
                path,
                format!(
                    "file is {length} bytes, the manifest says {} (truncated or replaced)",
                    self.bytes
                ),
            ));
        }
        let actual = Self::of_file(path)?;
        if actual.bytes != self.bytes {
            return Err(BundleError::corrupt(
                path,
                format!(
                    "file changed while being read: {} bytes, the manifest says {}",
                    actual.bytes, self.bytes
                ),
            ));
        }
        if actual.xxh3_128 != self.xxh3_128 {
            return Err(BundleError::corrupt(
                path,
                format!(
                    "checksum mismatch: xxh3-128 is {}, the manifest says {}",
                    actual.xxh3_128, self.xxh3_128
                ),
            ));
        }
        Ok(())
    }

    /// Whether `xxh3_128` is the shape this build writes (32 lowercase hex digits).
    pub fn is_well_formed(&self) -> bool {
        self.xxh3_128.len() == 32
            && self
                .xxh3_128
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        // More than one chunk, so the streaming path is exercised.
        let content: Vec<u8> = (0..CHUNK * 2 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let digest = FileDigest::of_file(&path).unwrap();
        assert_eq!(digest.bytes, content.len() as u64);
        assert!(digest.is_well_formed());
        assert_eq!(
            digest.xxh3_128,
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&content))
        );
        digest.check(&path).unwrap();

        let mut flipped = content.clone();
        flipped[CHUNK + 5] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        let error = digest.check(&path).unwrap_err().to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
        assert!(error.contains("data"), "{error}");

        std::fs::write(&path, &content[..content.len() - 1]).unwrap();
        let error = digest.check(&path).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(digest.check(&path), Err(BundleError::Io { .. })));
    }

    #[test]
    fn well_formed_means_32_lowercase_hex_digits() {
        let digest = |hex: &str| FileDigest {
            bytes: 0,
            xxh3_128: hex.into(),
        };
        assert!(digest(&"0a".repeat(16)).is_well_formed());
        assert!(!digest(&"0A".repeat(16)).is_well_formed());
        assert!(!digest("00").is_well_formed());
    }
}
