//! Order statistics the benchmarks report.

/// The `p` quantile (0 to 1) of ascending `sorted` by the lower nearest rank,
/// NaN when there is nothing to rank (printed as `null` in JSON).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}
