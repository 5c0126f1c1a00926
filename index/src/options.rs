//! The manifest's index parameters in usearch's terms, and usearch's distances in
//! ours.
//!
//! Scores on the wire are similarities (higher is better) whatever the metric, so
//! that the gateway can merge shards without knowing the metric; usearch returns
//! distances, and [`score_from_distance`] converts.

use recsys_bundle::{IndexParams, Metric, Quantization};
use usearch::{IndexOptions, MetricKind, ScalarKind};

/// usearch's metric kind for `metric`.
pub(crate) fn metric_kind(metric: Metric) -> MetricKind {
    match metric {
        Metric::Ip => MetricKind::IP,
        Metric::Cos => MetricKind::Cos,
        Metric::L2 => MetricKind::L2sq,
    }
}

/// usearch's scalar kind for `quantization`.
pub(crate) fn scalar_kind(quantization: Quantization) -> ScalarKind {
    match quantization {
        Quantization::F32 => ScalarKind::F32,
        Quantization::F16 => ScalarKind::F16,
        Quantization::I8 => ScalarKind::I8,
    }
}

/// usearch options for an index of `dimensions` with `params`.
pub fn usearch_options(params: &IndexParams, dimensions: usize) -> IndexOptions {
    IndexOptions {
        dimensions,
        metric: metric_kind(params.metric),
        quantization: scalar_kind(params.quantization),
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: params.expansion_search,
        multi: false,
    }
}

/// A usearch distance as a score where higher is better: usearch defines
/// `ip = 1 - a·b` and `cos = 1 - cos(a, b)`, and `l2sq` is the squared distance.
pub(crate) fn score_from_distance(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::Ip | Metric::Cos => 1.0 - distance,
        Metric::L2 => -distance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let index = usearch::Index::new(&usearch_options(&params, dims)).unwrap();
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
                    let got = score_from_distance(metric, *distance);
                    assert!(
                        (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{metric:?} dims {dims} item {key}: {got} against {expected}"
                    );
                }
            }
        }
    }
}
