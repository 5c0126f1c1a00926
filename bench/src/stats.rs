//! Order statistics the benchmarks report.

/// The `p` quantile (0 to 1) of ascending `sorted` by the lower nearest rank,
/// NaN when there is nothing to rank (printed as `null` in JSON).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The first field of a `/proc/.../schedstat` file's `text`: nanoseconds the
/// thread has run. The kernel advances it at scheduler ticks and switches, so
/// a difference is exact only over many ticks (whole passes, seconds of load).
pub(crate) fn schedstat_nanos(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}
