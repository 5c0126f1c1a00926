//! Errors of reading and writing bundles. Each names the file it concerns, because
//! the first thing an operator needs when a node refuses to start is which file.

use std::path::PathBuf;

/// Everything that can go wrong while building or loading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but its content is not what the format requires.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, lowercase.
        reason: String,
    },
    /// The caller asked for something the format cannot hold.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The option or input concerned.
        field: &'static str,
        /// What is wrong, lowercase.
        reason: String,
    },
    /// A bundle root in an object store could not be read or written
    /// (`recsys-bundle-store`): the object's URL and what went wrong.
    #[error("{url}: {reason}")]
    Remote {
        /// The object (or root) concerned, `s3://bucket/prefix/...`.
        url: String,
        /// What went wrong, lowercase.
        reason: String,
    },
    /// The index library refused an operation on an index file.
    #[error("{path}: usearch: {message}")]
    Index {
        /// The index file concerned.
        path: PathBuf,
        /// The library's own message.
        message: String,
    },
}

impl BundleError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A content error in `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An error the index library raised while working on `path`.
    pub fn index(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Self::Index {
            path: path.into(),
            message: error.to_string(),
        }
    }

    /// A failure reading or writing `url` in an object store.
    pub fn remote(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Remote {
            url: url.into(),
            reason: reason.into(),
        }
    }

    /// An invalid option or input.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
