//! Index parameters stored in the manifest and their usearch equivalents.
//!
//! Scores on the wire are similarities (higher is better) whatever the metric, so
//! that the gateway can merge shards without knowing the metric. usearch returns
//! distances; [`Metric::score_from_distance`] converts.

use serde::{Deserialize, Serialize};
use usearch::{IndexOptions, MetricKind, ScalarKind};

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

    /// usearch's metric kind.
    pub fn usearch_kind(self) -> MetricKind {
        match self {
            Self::Ip => MetricKind::IP,
            Self::Cos => MetricKind::Cos,
            Self::L2 => MetricKind::L2sq,
        }
    }

    /// Converts a usearch distance into a score where higher is better.
    ///
    /// usearch defines `ip = 1 - a·b` and `cos = 1 - cos(a, b)`.
    pub fn score_from_distance(self, distance: f32) -> f32 {
        match self {
            Self::Ip | Self::Cos => 1.0 - distance,
            Self::L2 => -distance,
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

    /// usearch's scalar kind.
    pub fn usearch_kind(self) -> ScalarKind {
        match self {
            Self::F32 => ScalarKind::F32,
            Self::F16 => ScalarKind::F16,
            Self::I8 => ScalarKind::I8,
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

impl IndexParams {
    /// usearch options for an index of `dimensions`.
    pub fn usearch_options(&self, dimensions: usize) -> IndexOptions {
        IndexOptions {
            dimensions,
            metric: self.metric.usearch_kind(),
            quantization: self.quantization.usearch_kind(),
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            multi: false,
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

    /// usearch's distance kernel (on x86 hosts with AVX-512 the vendored patch's
    /// 512-bit one, with a masked tail; the test checks that it is the one in use)
    /// agrees with the plain reference at 16 widths from 1 to 100, around its 16-
    /// and 32-lane steps, for each metric, zero items included.
    #[test]
    fn usearch_distances_match_the_reference_at_every_width() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let items = 20;
        for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
            for dims in [1, 2, 7, 15, 16, 17, 31, 32, 33, 47, 48, 49, 50, 64, 65, 100] {
                let params = IndexParams {
                    metric,
                    ..IndexParams::default()
                };
                let index = usearch::Index::new(&params.usearch_options(dims)).unwrap();
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    assert_eq!(index.hardware_acceleration(), "avx512f", "{metric:?}");
                }
                index.reserve(items).unwrap();
                let mut rows = Vec::new();
                for key in 0..items as u64 {
                    let row: Vec<f32> = if key == 0 {
                        vec![0.0; dims]
                    } else {
                        (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect()
                    };
                    index.add(key, &row).unwrap();
                    rows.push(row);
                }
                let query: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
                let found = index.exact_search(&query, items).unwrap();
                assert_eq!(found.keys.len(), items, "{metric:?} dims {dims}");
                for (key, distance) in found.keys.iter().zip(&found.distances) {
                    let expected = metric.score(&query, &rows[*key as usize]);
                    let got = metric.score_from_distance(*distance);
                    assert!(
                        (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{metric:?} dims {dims} item {key}: {got} against {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn scores_are_higher_for_closer_items() {
        let q = [1.0, 0.0];
        for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
            assert!(metric.score(&q, &[0.9, 0.1]) > metric.score(&q, &[0.1, 0.9]));
        }
    }
}
