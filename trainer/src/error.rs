//! The trainer's one error type.
//!
//! Loader errors carry the file, the 1-based line and the field so that a bad
//! row in a 100 000-line file can be found with `sed -n LINEp FILE`. Messages are
//! lowercase and punctuation-free, as everywhere in recsys.

use std::path::PathBuf;

/// Everything the trainer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A field could not be parsed.
    #[error("{path} line {line} field {field}: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field's name (`rating`, `timestamp`, `genre 3`, …).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line has fewer fields than its format needs; `field` is the first one missing.
    #[error("{path} line {line} field {field}: missing ({found} fields, expected {expected})")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The first field the line lacks.
        field: String,
        /// Fields found.
        found: usize,
        /// Fields the format has.
        expected: usize,
    },
    /// A CSV header lacks a column the loader needs.
    #[error("{path} line 1 field {column}: no such column in the header")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// The same key appears twice in a file that must hold it once.
    #[error("{path} line {line} field {field}: duplicate {value} (first on line {first_line})")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line of the repeat.
        line: usize,
        /// The key field.
        field: String,
        /// The repeated value.
        value: String,
        /// Where it first appeared.
        first_line: usize,
    },
    /// A data set or split has nothing to train or evaluate on.
    #[error("empty data: {0}")]
    Empty(&'static str),
    /// A temporal split needs timestamps and an interaction has none.
    #[error("interaction {index} has no timestamp and the split is temporal")]
    MissingTimestamp {
        /// Index of the interaction in the data set.
        index: usize,
    },
    /// A configuration value is out of its range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A saved model's files disagree with each other.
    #[error("{path}: {reason}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A chosen feature the data set cannot provide.
    #[error("feature {feature}: {reason}")]
    MissingFeature {
        /// The feature's name.
        feature: &'static str,
        /// What it needs and what is missing.
        reason: String,
    },
    /// A ranking model needs ratings and an interaction has none.
    #[error("interaction {index} has no rating and the ranker is trained on ratings")]
    MissingRating {
        /// Index of the interaction in its set.
        index: usize,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Writing the exported bundle failed.
    #[error("bundle export: {0}")]
    Bundle(#[from] recsys_bundle::BundleError),
}

/// Shorthand for the trainer's results.
pub type Result<T> = std::result::Result<T, TrainerError>;

impl TrainerError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn field(
        path: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Field {
            path: path.into(),
            line,
            field: field.into(),
            reason: reason.into(),
        }
    }
}
