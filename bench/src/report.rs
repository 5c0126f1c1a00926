//! The load generator's report (`recsys-bench load --report DIR`): the raw
//! numbers as JSON and two PNG plots a person takes in at a glance,
//! throughput and latency percentiles over time, and the latency histogram,
//! one line per load level.
//!
//! Why plots as well as JSON lines: a level's p99 hides whether the tail came
//! in one burst (a compaction, a GC-like pause, a fold) or all along; the
//! per-second series shows which, and the histogram shows the shape (two
//! modes mean two paths) that three percentiles cannot.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::json;

use crate::stats::percentile;

/// The font the plots are labelled with (Debian's fonts-dejavu-core, which
/// scripts/install-deps.sh installs).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Bins of the latency histogram, spaced evenly on a log scale.
const HISTOGRAM_BINS: usize = 40;

/// One load level's answered requests: when each ended (seconds since the
/// level's measurement began) and how long it took (µs).
#[derive(Debug, Clone, Default)]
pub struct LevelSamples {
    /// How the level is named in the legend (`16 in flight`, `2950/s`).
    pub label: String,
    /// The level's measured seconds.
    pub seconds: f64,
    /// (end time in s, latency in µs), any order.
    pub samples: Vec<(f64, f64)>,
    /// When each failed request ended (seconds since the level began).
    pub error_times: Vec<f64>,
}

/// One second of a level.
struct Second {
    start: f64,
    requests: usize,
    errors: usize,
    p50_us: f64,
    p99_us: f64,
}

impl LevelSamples {
    /// Requests, p50 and p99 of every whole second of the level.
    fn per_second(&self) -> Vec<Second> {
        let seconds = self.seconds.ceil().max(1.0) as usize;
        let bucket = |t: f64| (t.max(0.0) as usize).min(seconds - 1);
        let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); seconds];
        for &(t, latency) in &self.samples {
            buckets[bucket(t)].push(latency);
        }
        let mut errors = vec![0usize; seconds];
        for &t in &self.error_times {
            errors[bucket(t)] += 1;
        }
        buckets
            .into_iter()
            .zip(errors)
            .enumerate()
            .map(|(i, (mut latencies, errors))| {
                latencies.sort_by(f64::total_cmp);
                Second {
                    start: i as f64,
                    requests: latencies.len(),
                    errors,
                    p50_us: percentile(&latencies, 0.5),
                    p99_us: percentile(&latencies, 0.99),
                }
            })
            .collect()
    }

    fn sorted_latencies(&self) -> Vec<f64> {
        let mut latencies: Vec<f64> = self.samples.iter().map(|s| s.1).collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }
}

/// Log-spaced bin edges from the fastest to the slowest latency of `levels`.
fn histogram_edges(levels: &[LevelSamples]) -> Vec<f64> {
    let all = levels.iter().flat_map(|l| l.samples.iter().map(|s| s.1));
    let low = all.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let high = all.fold(0.0f64, f64::max).max(low * 1.01);
    let (ln_low, ln_high) = (low.ln(), high.ln());
    (0..=HISTOGRAM_BINS)
        .map(|i| (ln_low + (ln_high - ln_low) * i as f64 / HISTOGRAM_BINS as f64).exp())
        .collect()
}

/// Requests per bin of `edges` (the last bin holds its upper edge).
fn histogram(latencies: &[f64], edges: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len().saturating_sub(1)];
    for &latency in latencies {
        let bin = edges.partition_point(|edge| *edge <= latency);
        let bin = bin.saturating_sub(1).min(counts.len().saturating_sub(1));
        if let Some(count) = counts.get_mut(bin) {
            *count += 1;
        }
    }
    counts
}

/// Writes `dir/load.json`, `dir/load-over-time.png` and
/// `dir/load-latency-histogram.png` for `levels`; `title` heads both plots
/// and `run` (the command's settings) goes into the JSON as it is.
pub fn write_report(
    dir: &Path,
    title: &str,
    run: serde_json::Value,
    levels: &[LevelSamples],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let edges = histogram_edges(levels);
    let json_levels: Vec<serde_json::Value> = levels
        .iter()
        .map(|level| {
            let latencies = level.sorted_latencies();
            let at = |p: f64| percentile(&latencies, p);
            json!({
                "label": level.label, "seconds": level.seconds,
                "requests": latencies.len(), "errors": level.error_times.len(),
                "qps": latencies.len() as f64 / level.seconds,
                "p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "max_us": at(1.0),
                "per_second": level.per_second().iter().map(|s| json!({
                    "start_s": s.start, "requests": s.requests, "errors": s.errors,
                    "p50_us": s.p50_us, "p99_us": s.p99_us,
                })).collect::<Vec<_>>(),
                "histogram_counts": histogram(&latencies, &edges),
            })
        })
        .collect();
    let report = json!({
        "title": title, "run": run, "histogram_edges_us": edges, "levels": json_levels,
    });
    let json_path = dir.join("load.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    register_font()?;
    plot_over_time(&dir.join("load-over-time.png"), title, levels)?;
    plot_histogram(
        &dir.join("load-latency-histogram.png"),
        title,
        levels,
        &edges,
    )?;
    Ok(())
}

/// Registers [`FONT`] as the plots' sans-serif, once per process.
pub(crate) fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!("reading the plots' font {FONT}: {e} (install fonts-dejavu-core: scripts/install-deps.sh)")
            })?;
            // plotters keeps the font for the process: leaked once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a font plotters can read"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The series' labels in a box, the same on every plot.
pub(crate) fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A distinct colour per level.
pub(crate) fn colour(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLOURS[i % COLOURS.len()]
}

/// Two panels over the level's seconds: requests per second, and p50 (solid)
/// and p99 (thin) latency.
fn plot_over_time(path: &Path, title: &str, levels: &[LevelSamples]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(370);
    let seconds: Vec<Vec<Second>> = levels.iter().map(LevelSamples::per_second).collect();
    let t_max = levels.iter().map(|l| l.seconds).fold(1.0f64, f64::max);
    let max_of = |f: fn(&Second) -> usize| {
        seconds
            .iter()
            .flatten()
            .map(|s| f(s) as f64)
            .fold(1.0f64, f64::max)
            * 1.1
    };
    let (rate_max, error_max) = (max_of(|s| s.requests), max_of(|s| s.errors));
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "answers per second (thick, left); refusals or errors per second (thin, right)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)?
        .set_secondary_coord(0f64..t_max, 0f64..error_max);
    chart
        .configure_mesh()
        .x_desc("seconds into the level")
        .y_desc("answers / s")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("refused or failed / s")
        .draw()?;
    for (i, (level, seconds)) in levels.iter().zip(&seconds).enumerate() {
        let style = colour(i).stroke_width(3);
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.start + 0.5, s.requests as f64)),
                style,
            ))?
            .label(level.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if !level.error_times.is_empty() {
            chart.draw_secondary_series(LineSeries::new(
                seconds.iter().map(|s| (s.start + 0.5, s.errors as f64)),
                colour(i).stroke_width(1),
            ))?;
        }
    }
    legend(&mut chart)?;

    let latency_max = seconds
        .iter()
        .flatten()
        .map(|s| s.p99_us / 1000.0)
        .filter(|v| v.is_finite())
        .fold(0.1f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            "latency per second: p50 (thick), p99 (thin)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..latency_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the level")
        .y_desc("ms")
        .draw()?;
    for (i, seconds) in seconds.iter().enumerate() {
        let finite = |v: f64| v.is_finite().then_some(v / 1000.0);
        chart.draw_series(LineSeries::new(
            seconds
                .iter()
                .filter_map(|s| Some((s.start + 0.5, finite(s.p50_us)?))),
            colour(i).stroke_width(3),
        ))?;
        chart.draw_series(LineSeries::new(
            seconds
                .iter()
                .filter_map(|s| Some((s.start + 0.5, finite(s.p99_us)?))),
            colour(i).stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// The share of each level's answers per latency bin, on a log latency axis.
fn plot_histogram(
    path: &Path,
    title: &str,
    levels: &[LevelSamples],
    edges: &[f64],
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let shares: Vec<Vec<f64>> = levels
        .iter()
        .map(|level| {
            let counts = histogram(&level.sorted_latencies(), edges);
            let total = counts.iter().sum::<u64>().max(1) as f64;
            counts.iter().map(|c| *c as f64 / total).collect()
        })
        .collect();
    let share_max = shares.iter().flatten().fold(0.01f64, |a, b| a.max(*b)) * 1.1;
    let (low, high) = (edges[0] / 1000.0, edges[edges.len() - 1] / 1000.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency histogram (share of each level's answers)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((low..high).log_scale(), 0f64..share_max)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("share of answers")
        .draw()?;
    for (i, (level, shares)) in levels.iter().zip(&shares).enumerate() {
        let style = colour(i).stroke_width(2);
        // A step line: each bin's share flat across the bin.
        let steps = edges
            .windows(2)
            .zip(shares)
            .flat_map(|(edge, share)| [(edge[0] / 1000.0, *share), (edge[1] / 1000.0, *share)]);
        chart
            .draw_series(LineSeries::new(steps, style))?
            .label(level.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(label: &str, seconds: f64, rate: usize, latency_us: f64) -> LevelSamples {
        let count = (seconds * rate as f64) as usize;
        LevelSamples {
            label: label.into(),
            seconds,
            samples: (0..count)
                .map(|i| {
                    let t = i as f64 / rate as f64;
                    // A slow tail every 50th answer.
                    let slow = if i % 50 == 0 { 10.0 } else { 1.0 };
                    (t, latency_us * slow * (1.0 + (i % 7) as f64 / 10.0))
                })
                .collect(),
            error_times: vec![0.5, 2.5],
        }
    }

    #[test]
    fn writes_the_numbers_and_two_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let levels = [
            level("1 in flight", 3.0, 500, 900.0),
            level("16 in flight", 3.0, 1500, 4000.0),
        ];
        write_report(dir.path(), "test run", json!({"k": 100}), &levels).unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("load.json")).unwrap()).unwrap();
        let first = &report["levels"][0];
        assert_eq!(first["requests"], 1500);
        assert_eq!(first["qps"], 500.0);
        assert_eq!(first["per_second"].as_array().unwrap().len(), 3);
        assert_eq!(first["per_second"][1]["requests"], 500);
        assert_eq!(first["errors"], 2);
        assert_eq!(first["per_second"][2]["errors"], 1);
        let counts: u64 = first["histogram_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counts, 1500, "every answer in one bin");
        assert_eq!(
            report["histogram_edges_us"].as_array().unwrap().len(),
            HISTOGRAM_BINS + 1
        );
        assert_eq!(report["run"]["k"], 100);
        for png in ["load-over-time.png", "load-latency-histogram.png"] {
            let bytes = std::fs::read(dir.path().join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{png}");
            assert!(bytes.len() > 10_000, "{png}: {} bytes", bytes.len());
        }
    }

    #[test]
    fn histogram_bins_hold_their_edges() {
        let edges = [1.0, 10.0, 100.0, 1000.0];
        assert_eq!(
            histogram(&[1.0, 5.0, 10.0, 999.0, 1000.0], &edges),
            [2, 1, 2]
        );
        assert_eq!(histogram(&[], &edges), [0, 0, 0]);
        let one = LevelSamples {
            label: "x".into(),
            seconds: 2.0,
            samples: vec![(0.1, 5.0), (1.5, 7.0), (9.0, 9.0)],
            error_times: Vec::new(),
        };
        let seconds = one.per_second();
        assert_eq!(seconds.len(), 2);
        assert_eq!(
            seconds[1].requests, 2,
            "a late answer counts in the last second"
        );
    }
}
