//! Index parameters stored in the manifest, as plain data (`recsys-index` turns
//! them into usearch's options).
//!
//! Scores on the wire are similarities (higher is better) whatever the metric, so
//! that the gateway can merge shards without knowing the metric.

use serde::{Deserialize, Serialize};

use crate::BundleError;

/// Similarity between a query and an item embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Inner product, as TFRS's `BruteForce` and `ScaNN` layers score (`tf.linalg.matmul`).
    Ip,
    /// Cosine similarity.
    Cos,
    /// Squared Euclidean distance; the score is its negation.
    L2,
}

impl Metric {
    /// Parses `ip`, `cos` or `l2`.
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        match text.to_ascii_lowercase().as_str() {
            "ip" | "dot" => Ok(Self::Ip),
            "cos" | "cosine" => Ok(Self::Cos),
            "l2" | "l2sq" => Ok(Self::L2),
            other => Err(BundleError::invalid(
                "metric",
                format!("{other:?} is not one of ip, cos, l2"),
            )),
        }
    }

    /// The name used in manifests and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Cos => "cos",
            Self::L2 => "l2",
        }
    }

    /// The score of `item` for `query` computed directly, for reference checks.
    pub fn score(self, query: &[f32], item: &[f32]) -> f32 {
        let dot: f32 = query.iter().zip(item).map(|(a, b)| a * b).sum();
        match self {
            Self::Ip => dot,
            Self::Cos => {
                let nq: f32 = query.iter().map(|a| a * a).sum::<f32>().sqrt();
                let ni: f32 = item.iter().map(|a| a * a).sum::<f32>().sqrt();
                if nq == 0.0 || ni == 0.0 {
                    0.0
                } else {
                    dot / (nq * ni)
                }
            }
            Self::L2 => -query
                .iter()
                .zip(item)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>(),
        }
    }
}

/// How the index stores vectors. Lower precision makes traversal cheaper and the
/// file smaller, at some cost in recall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 32-bit floats: exact scores.
    F32,
    /// IEEE half precision.
    F16,
    /// 8-bit integers (usearch scales cosine-normalized values into `i8`).
    I8,
}

impl Quantization {
    /// Parses `f32`, `f16` or `i8`.
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        match text.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "i8" => Ok(Self::I8),
            other => Err(BundleError::invalid(
                "quantization",
                format!("{other:?} is not one of f32, f16, i8"),
            )),
        }
    }

    /// The name used in manifests and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::I8 => "i8",
        }
    }
}

/// HNSW parameters of every shard of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Similarity between query and item.
    pub metric: Metric,
    /// Stored scalar type.
    pub quantization: Quantization,
    /// Graph degree (HNSW `M`).
    pub connectivity: usize,
    /// Beam width while inserting (HNSW `efConstruction`).
    pub expansion_add: usize,
    /// Beam width while searching (HNSW `ef`); the node uses at least `k`.
    pub expansion_search: usize,
}

/// M 32 with ef 160: on GloVe-50 (390k items, k = 100) the fastest setting that
/// reaches recall@100 0.96, ahead of M 16 at any ef with that recall; with the
/// builder's locality order an M 32 shard builds in about as long as M 16 used
/// to (docs/benchmarks.md). The price is a larger file (1.4x at 50 dimensions).
impl Default for IndexParams {
    fn default() -> Self {
        Self {
            metric: Metric::Ip,
            quantization: Quantization::F32,
            connectivity: 32,
            expansion_add: 128,
            expansion_search: 160,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
            assert_eq!(Metric::parse(metric.as_str()).unwrap(), metric);
        }
        for q in [Quantization::F32, Quantization::F16, Quantization::I8] {
            assert_eq!(Quantization::parse(q.as_str()).unwrap(), q);
        }
        assert!(Metric::parse("manhattan").is_err());
    }

    #[test]
    fn scores_are_higher_for_closer_items() {
        let q = [1.0, 0.0];
        for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
            assert!(metric.score(&q, &[0.9, 0.1]) > metric.score(&q, &[0.1, 0.9]));
        }
    }
}
