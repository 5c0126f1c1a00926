//! Item embeddings brought by the user: raw little-endian f32 rows or `.npy`
//! files, with optional id and name files. This is the "bring your own
//! embeddings" path TFRS users have with `BruteForce.index(candidates, ids)`.

use std::collections::HashSet;
use std::path::Path;

use recsys_bundle::BundleError;
use recsys_bundle::lines::{f32_from_le_bytes, read_lines};

/// Row-major item embeddings with their ids and optional names.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemVectors {
    /// Embedding dimensions.
    pub dimensions: usize,
    /// `ids.len() * dimensions` values, row i belongs to `ids[i]`.
    pub data: Vec<f32>,
    /// Item ids, unique.
    pub ids: Vec<u64>,
    /// Display names parallel to `ids`, when known.
    pub names: Option<Vec<String>>,
}

impl ItemVectors {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The embedding of row `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.dimensions..(row + 1) * self.dimensions]
    }

    /// Builds from parts, checking shapes, finiteness and id uniqueness. `origin`
    /// names the input in errors.
    pub fn new(
        origin: &Path,
        dimensions: usize,
        data: Vec<f32>,
        ids: Option<Vec<u64>>,
        names: Option<Vec<String>>,
    ) -> Result<Self, BundleError> {
        if dimensions == 0 {
            return Err(BundleError::invalid("dim", "must be positive"));
        }
        if !data.len().is_multiple_of(dimensions) {
            return Err(BundleError::corrupt(
                origin,
                format!(
                    "{} values are not a whole number of {dimensions}-dimensional rows",
                    data.len()
                ),
            ));
        }
        let rows = data.len() / dimensions;
        if rows == 0 {
            return Err(BundleError::corrupt(origin, "holds no vectors"));
        }
        if let Some(position) = data.iter().position(|v| !v.is_finite()) {
            return Err(BundleError::corrupt(
                origin,
                format!(
                    "row {} column {} is {} (embeddings must be finite)",
                    position / dimensions,
                    position % dimensions,
                    data[position]
                ),
            ));
        }
        let ids = ids.unwrap_or_else(|| (0..rows as u64).collect());
        if ids.len() != rows {
            return Err(BundleError::invalid(
                "ids",
                format!("{} ids for {rows} vectors", ids.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(BundleError::invalid(
                "ids",
                format!("id {dup} appears twice"),
            ));
        }
        if let Some(names) = &names
            && names.len() != rows
        {
            return Err(BundleError::invalid(
                "names",
                format!("{} names for {rows} vectors", names.len()),
            ));
        }
        Ok(Self {
            dimensions,
            data,
            ids,
            names,
        })
    }

    /// Reads `path` as `.npy` when it ends so (its header gives the dimensions),
    /// otherwise as raw little-endian f32 rows of `dimensions` values.
    pub fn read(
        path: &Path,
        dimensions: Option<usize>,
        ids: Option<&Path>,
        names: Option<&Path>,
    ) -> Result<Self, BundleError> {
        let is_npy = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("npy"));
        let (dims, data) = if is_npy {
            let (dims, data) = read_npy(path)?;
            if let Some(wanted) = dimensions
                && wanted != dims
            {
                return Err(BundleError::invalid(
                    "dim",
                    format!("{wanted} given but {} has {dims} columns", path.display()),
                ));
            }
            (dims, data)
        } else {
            let dims = dimensions.ok_or_else(|| {
                BundleError::invalid(
                    "dim",
                    "required for raw f32 files (only .npy carries a shape)",
                )
            })?;
            (dims, read_raw_f32(path, dims)?)
        };
        let ids = ids.map(read_ids).transpose()?;
        let names = names.map(read_lines).transpose()?;
        Self::new(path, dims, data, ids, names)
    }
}

/// Reads a raw little-endian f32 file whose length is a whole number of rows.
pub fn read_raw_f32(path: &Path, dimensions: usize) -> Result<Vec<f32>, BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
    let row_bytes = dimensions * 4;
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(BundleError::corrupt(
            path,
            format!(
                "{} bytes are not a whole number of {dimensions}-dimensional f32 rows ({row_bytes} bytes each)",
                bytes.len()
            ),
        ));
    }
    Ok(f32_from_le_bytes(&bytes))
}

/// Reads a 2-D `.npy` of f32 or f64 in C or Fortran order into row-major f32.
///
/// Fortran order matters in practice: the GloVe matrix that PyPI ships is stored
/// column-major, and reading it as rows would silently scramble every vector.
pub fn read_npy(path: &Path) -> Result<(usize, Vec<f32>), BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
    parse_npy(&bytes).map_err(|reason| BundleError::corrupt(path, reason))
}

/// Parses `.npy` bytes; the error is a lowercase reason without the path.
pub fn parse_npy(bytes: &[u8]) -> Result<(usize, Vec<f32>), String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a valid .npy file: {e}"))?;
    let shape = npy.shape().to_vec();
    let (rows, cols) = match shape.as_slice() {
        [rows, cols] => (*rows as usize, *cols as usize),
        other => {
            return Err(format!(
                "shape {other:?} is not 2-dimensional (rows, dimensions)"
            ));
        }
    };
    if cols == 0 {
        return Err("has zero columns".into());
    }
    let order = npy.order();
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ty) => ty.to_string(),
        other => return Err(format!("dtype {} is not f4 or f8", other.descr())),
    };
    let expected = rows
        .checked_mul(cols)
        .ok_or_else(|| format!("shape ({rows}, {cols}) overflows"))?;
    let flat: Vec<f32> = match dtype.as_str() {
        "<f4" | ">f4" => npy.into_vec::<f32>(),
        "<f8" | ">f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
        other => return Err(format!("dtype {other} is not f4 or f8")),
    }
    .map_err(|e| format!("cannot read the data: {e}"))?;
    if flat.len() != expected {
        return Err(format!(
            "holds {} values, shape ({rows}, {cols}) needs {expected}",
            flat.len()
        ));
    }
    Ok(match order {
        npyz::Order::C => (cols, flat),
        npyz::Order::Fortran => {
            // Column-major: element (r, c) is at c * rows + r.
            let mut out = vec![0.0f32; expected];
            for c in 0..cols {
                let column = &flat[c * rows..(c + 1) * rows];
                for (r, value) in column.iter().enumerate() {
                    out[r * cols + c] = *value;
                }
            }
            (cols, out)
        }
    })
}

/// Reads one unsigned id per line.
pub fn read_ids(path: &Path) -> Result<Vec<u64>, BundleError> {
    read_lines(path)?
        .iter()
        .enumerate()
        .map(|(number, line)| {
            line.trim().parse::<u64>().map_err(|_| {
                BundleError::corrupt(
                    path,
                    format!("line {}: {line:?} is not an unsigned 64-bit id", number + 1),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal `.npy` writer for tests (format 1.0).
    fn npy_bytes(descr: &str, fortran: bool, rows: usize, cols: usize, payload: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({rows}, {cols}), }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn f32_payload(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_c_and_fortran_order_alike() {
        // The matrix [[1, 2, 3], [4, 5, 6]].
        let c = npy_bytes("<f4", false, 2, 3, &f32_payload(&[1., 2., 3., 4., 5., 6.]));
        let f = npy_bytes("<f4", true, 2, 3, &f32_payload(&[1., 4., 2., 5., 3., 6.]));
        let expected = (3, vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(parse_npy(&c).unwrap(), expected);
        assert_eq!(parse_npy(&f).unwrap(), expected);
    }

    #[test]
    fn reads_f64() {
        let payload: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = npy_bytes("<f8", false, 1, 2, &payload);
        assert_eq!(parse_npy(&bytes).unwrap(), (2, vec![1.5, -2.0]));
    }

    #[test]
    fn rejects_wrong_rank_dtype_and_short_data() {
        let short = npy_bytes("<f4", false, 2, 3, &[]);
        assert!(parse_npy(&short).is_err());
        let ints = npy_bytes("<i4", false, 1, 1, &[0, 0, 0, 0]);
        assert!(parse_npy(&ints).unwrap_err().contains("dtype"));
    }

    #[test]
    fn raw_file_must_hold_whole_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        std::fs::write(&path, f32_payload(&[1., 2., 3.])).unwrap();
        let err = read_raw_f32(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("v.f32") && err.contains("whole number"),
            "{err}"
        );
        assert_eq!(read_raw_f32(&path, 3).unwrap(), vec![1., 2., 3.]);
    }

    #[test]
    fn rejects_non_finite_values_naming_the_row() {
        let err = ItemVectors::new(Path::new("x"), 2, vec![0., 1., f32::NAN, 0.], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1 column 0"), "{err}");
    }

    #[test]
    fn rejects_duplicate_ids_and_count_mismatch() {
        let data = vec![0.0; 4];
        assert!(ItemVectors::new(Path::new("x"), 2, data.clone(), Some(vec![5, 5]), None).is_err());
        assert!(ItemVectors::new(Path::new("x"), 2, data, Some(vec![5]), None).is_err());
    }

    /// Bytes a damaged `.npy` header plausibly holds: digits, the header's
    /// punctuation, dtype letters, `True`/`False` initials, and two extremes.
    const HEADER_BYTES: &[u8] = b"0123456789 ,:()'{}<>|fiuTF\x00\xff";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The parser never panics on a damaged file, and what it accepts is whole
        /// rows. Starts from valid files of any shape, dtype and order and edits
        /// them (header bytes swapped for header-like ones or inserted, any byte
        /// overwritten, the file cut short): random bytes would almost never get
        /// past the magic string and test nothing behind it.
        #[test]
        fn parse_npy_never_panics(
            rows in 1usize..5,
            cols in 1usize..5,
            f64s in any::<bool>(),
            fortran in any::<bool>(),
            edits in proptest::collection::vec((0u8..4, any::<u16>(), any::<u8>()), 1..4),
        ) {
            let values: Vec<f64> = (0..rows * cols).map(|i| i as f64 - 1.5).collect();
            let (descr, payload): (&str, Vec<u8>) = if f64s {
                ("<f8", values.iter().flat_map(|v| v.to_le_bytes()).collect())
            } else {
                ("<f4", values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect())
            };
            let mut bytes = npy_bytes(descr, fortran, rows, cols, &payload);
            let (dims, data) = parse_npy(&bytes).expect("the unedited file parses");
            prop_assert_eq!((dims, data.len()), (cols, rows * cols));
            let header = bytes.len() - payload.len();
            for (kind, at, byte) in edits {
                // Earlier cuts may have shortened the file, even into the header.
                let (len, head) = (bytes.len(), header.min(bytes.len()));
                if head == 0 {
                    break;
                }
                let at = usize::from(at);
                let like_header = HEADER_BYTES[usize::from(byte) % HEADER_BYTES.len()];
                match kind {
                    0 => bytes[at % head] = like_header,
                    1 => bytes.insert(at % head, like_header),
                    2 => bytes[at % len] = byte,
                    _ => bytes.truncate(at % len),
                }
            }
            if let Ok((dims, data)) = parse_npy(&bytes) {
                prop_assert!(dims > 0 && data.len() % dims == 0, "{} values in rows of {}", data.len(), dims);
            }
        }

        /// Any header mangling of a valid file errors or parses, never panics.
        #[test]
        fn parse_npy_survives_corrupted_headers(position in 0usize..80, byte in any::<u8>()) {
            let mut bytes = npy_bytes("<f4", false, 2, 2, &f32_payload(&[1., 2., 3., 4.]));
            let position = position % bytes.len();
            bytes[position] = byte;
            let _ = parse_npy(&bytes);
        }

        /// Fortran and C layouts of the same matrix read identically.
        #[test]
        fn orders_agree(rows in 1usize..6, cols in 1usize..6, seed in any::<u32>()) {
            let values: Vec<f32> = (0..rows * cols).map(|i| (i as u32 ^ seed) as f32).collect();
            let mut column_major = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    column_major[c * rows + r] = values[r * cols + c];
                }
            }
            let c_order = parse_npy(&npy_bytes("<f4", false, rows, cols, &f32_payload(&values))).unwrap();
            let f_order = parse_npy(&npy_bytes("<f4", true, rows, cols, &f32_payload(&column_major))).unwrap();
            prop_assert_eq!(c_order, f_order);
        }
    }
}
