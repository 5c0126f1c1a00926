//! Errors of a search. Opening and building report [`recsys_bundle::BundleError`],
//! which names the file, because their failures are about a bundle's files.

/// What can go wrong while searching a shard.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query has the wrong number of dimensions.
    #[error("query has {actual} dimensions, the index has {expected}")]
    Dimensions {
        /// The index's dimensions.
        expected: usize,
        /// The query's.
        actual: usize,
    },
    /// usearch refused the search.
    #[error("usearch: {0}")]
    Usearch(String),
}
