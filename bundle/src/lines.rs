//! The small file formats bundles share: text files of one value per line
//! (vocabularies, ids) and little-endian f32 data (raw vector files, safetensors
//! payloads).

use std::io::{BufRead, Read};
use std::path::Path;

use crate::BundleError;

/// Writes `lines` one per line with a final newline, creating the parent directory:
/// the inverse of [`read_lines`].
pub fn write_lines(path: &Path, lines: &[String]) -> Result<(), BundleError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| BundleError::io(path, e))
}

/// Reads the lines of a text file (a trailing newline does not make an empty last line).
pub fn read_lines(path: &Path) -> Result<Vec<String>, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut raw = Vec::new();
    reader
        .read_to_end(&mut raw)
        .map_err(|e| BundleError::io(path, e))?;
    // Latin-1 and other legacy files (MovieLens titles) must not fail on one bad byte.
    let text = String::from_utf8_lossy(&raw);
    Ok(text.as_bytes().lines().map_while(Result::ok).collect())
}

/// Little-endian f32 values of `bytes` (a trailing partial value is dropped).
/// Copied rather than cast in place: neither raw files nor safetensors data are
/// aligned for f32.
pub fn f32_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
